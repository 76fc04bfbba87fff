"""Split the packaged speech_embedding network at its time-strided pools, so that a stream
can carry each part's left context instead of recomputing it (kws_stream.frontends.embedding).

Every time operation in the network is unpadded, and only four pools stride in time, so
each part between them is a stack of convolutions that consumes a fixed number of input
rows and halves the rate at its end. Each part is written as its own ONNX file, with its
time context and stride in the file's metadata; weights and operators are unchanged.

    python -m kws_train.split_embedding            # rewrites models/oww_embedding_part*.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import onnx.utils

from kws_stream.frontends import embedding as emb

MODELS = Path(__file__).resolve().parent.parent / "models"
TIME_POOL = "MaxPool"


def _time_cuts(graph: onnx.GraphProto) -> list[str]:
    """Outputs of the pools that stride in time (strides[0] > 1, NCHW with H = time)."""
    cuts = []
    for node in graph.node:
        if node.op_type == TIME_POOL:
            strides = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "strides")
            if strides[0] > 1:
                cuts.append(node.output[0])
    return cuts


def _time_context(graph: onnx.GraphProto) -> int:
    """Input rows a part consumes: the sum of (time kernel - 1) over its unpadded convolutions."""
    rows = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[0] or pads[2]:
                raise ValueError(f"{node.name}: padded in time; a stream cannot carry its context")
            rows += attrs["kernel_shape"][0] - 1
    return rows


def split(source: Path, out_dir: Path) -> list[Path]:
    model = onnx.load(str(source))
    ends = [model.graph.input[0].name, *_time_cuts(model.graph), model.graph.output[0].name]
    paths = []
    for i, (first, last) in enumerate(zip(ends, ends[1:])):
        path = out_dir / emb.EMBEDDING_PARTS[i]
        onnx.utils.extract_model(str(source), str(path), [first], [last])
        part = onnx.load(str(path))
        stride = 2 if last in ends[1:-1] else 1
        onnx.helper.set_model_props(part, {"time_context": str(_time_context(part.graph)),
                                           "time_stride": str(stride)})
        part.doc_string = (f"Part {i + 1} of {len(ends) - 1} of {source.name} (Google's speech_embedding, "
                           f"Apache-2.0), cut at its time-strided pools by kws_train.split_embedding; "
                           "weights unchanged.")
        onnx.save(part, str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=MODELS / emb.EMBEDDING_FILE)
    ap.add_argument("--out", type=Path, default=MODELS)
    args = ap.parse_args(argv)
    for path in split(args.source, args.out):
        print(path)


if __name__ == "__main__":
    main()
