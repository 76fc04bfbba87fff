"""Split the packaged speech_embedding network at its time-strided pools, so that a stream
can carry each part's left context instead of recomputing it (kws_stream.frontends.embedding).

Every time operation in the network is unpadded, and three pools stride in time, so the
four parts between them are stacks of convolutions that consume a fixed number of input
rows, each but the last halving the rate at its end (checked here: a pool whose time
kernel is not its stride, or a padded time axis, is refused). Each part is written as its own ONNX file, with its
time context and stride in the file's metadata; weights and operators are unchanged.

The third part is also written up to its frequency-only pool (`oww_embedding_part3a.onnx`):
the rows front end (kws_stream.frontends.embedding.EmbeddingRowsFrontEnd) stops there, and
a model that fine-tunes the network's last five convolutions carries them itself.

The mel network's window and filterbank are written as .npy files (`MEL_WEIGHTS`): the
front end computes the mel spectrogram with numpy from them (checked here: the network's
DFT convolutions are that window times the cosine and minus the sine of each bin).

    python -m kws_train.split_embedding  # rewrites models/oww_embedding_part*.onnx and the mel weights
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import numpy_helper

from kws_stream.frontends import embedding as emb

MODELS = Path(__file__).resolve().parent.parent / "models"
TIME_POOL = "MaxPool"


def _time_cuts(graph: onnx.GraphProto) -> list[tuple[str, int]]:
    """(output, time stride) of the pools that stride in time (NCHW with H = time)."""
    cuts = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == TIME_POOL and attrs["strides"][0] > 1:
            if attrs["kernel_shape"][0] != attrs["strides"][0] or any(attrs.get("pads", [0] * 4)[::2]):
                raise ValueError(f"{node.name}: a time pool whose windows overlap or are padded cannot be streamed")
            cuts.append((node.output[0], attrs["strides"][0]))
    return cuts


def _time_context(graph: onnx.GraphProto) -> int:
    """Input rows a part consumes: the sum of (time kernel - 1) over its unpadded convolutions."""
    rows = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[0] or pads[2] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
                raise ValueError(f"{node.name}: padded in time; a stream cannot carry its context")
            rows += attrs["kernel_shape"][0] - 1
    return rows


def split(source: Path, out_dir: Path) -> list[Path]:
    model = onnx.load(str(source))
    cuts = _time_cuts(model.graph)
    ends = [model.graph.input[0].name, *(name for name, _ in cuts), model.graph.output[0].name]
    strides = [stride for _, stride in cuts] + [1]
    if len(ends) - 1 != len(emb.EMBEDDING_PARTS):
        raise ValueError(f"{source}: {len(ends) - 1} parts, the runtime expects {len(emb.EMBEDDING_PARTS)}")
    paths = []
    for i, (first, last, stride) in enumerate(zip(ends, ends[1:], strides)):
        path = out_dir / emb.EMBEDDING_PARTS[i]
        onnx.utils.extract_model(str(source), str(path), [first], [last])
        part = onnx.load(str(path))
        onnx.helper.set_model_props(part, {"time_context": str(_time_context(part.graph)),
                                           "time_stride": str(stride)})
        part.doc_string = (f"Part {i + 1} of {len(ends) - 1} of {source.name} (Google's speech_embedding, "
                           f"Apache-2.0), cut at its time-strided pools by kws_train.split_embedding; "
                           "weights unchanged.")
        onnx.save(part, str(path))
        paths.append(path)
    paths.append(_rows_part(out_dir / emb.EMBEDDING_PARTS[2], out_dir / emb.ROWS_PART))
    return paths


def _rows_part(part3: Path, path: Path) -> Path:
    """Part 3 up to its one pool that strides in frequency only: the rows of the rows front end."""
    model = onnx.load(str(part3))
    pools = [n for n in model.graph.node if n.op_type == TIME_POOL]
    strides = [onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "strides")) for n in pools]
    cut = [n.output[0] for n, s in zip(pools, strides) if s[0] == 1]
    if len(cut) != 1:
        raise ValueError(f"{part3}: expected one frequency-only pool, found {len(cut)}")
    onnx.utils.extract_model(str(part3), str(path), [model.graph.input[0].name], cut)
    rows = onnx.load(str(path))
    onnx.helper.set_model_props(rows, {"time_context": str(_time_context(rows.graph)), "time_stride": "1"})
    rows.doc_string = (f"{part3.name} up to its frequency-only pool, by kws_train.split_embedding; weights unchanged.")
    onnx.save(rows, str(path))
    return path


def mel_weights(source: Path, out_dir: Path) -> list[Path]:
    """The mel network's analysis window (512,) and filterbank (257, 32), from its DFT
    convolutions and its MatMul, as float32 .npy files."""
    model = onnx.load(str(source))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [weights[n.input[1]][:, 0] for n in model.graph.node if n.op_type == "Conv"]
    (filters,) = [weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMul"]
    if len(convs) != 2 or convs[0].shape != (filters.shape[0], emb.MEL_FRAME):
        raise ValueError(f"{source}: expected two DFT convolutions of {emb.MEL_FRAME} taps before one filterbank")
    window = convs[0][0]  # the DC bin's row: the window itself
    k, n = np.arange(filters.shape[0])[:, None], np.arange(emb.MEL_FRAME)
    basis = 2 * np.pi * k * n / emb.MEL_FRAME
    if not (np.allclose(convs[0], window * np.cos(basis), atol=1e-6)
            and np.allclose(convs[1], -window * np.sin(basis), atol=1e-6)):
        raise ValueError(f"{source}: its convolutions are not a windowed DFT; numpy's FFT would not match them")
    paths = []
    for name, array in zip(emb.MEL_WEIGHTS, (window, filters)):
        paths.append(out_dir / name)
        np.save(paths[-1], np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=MODELS / emb.EMBEDDING_FILE)
    ap.add_argument("--out", type=Path, default=MODELS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [*split(args.source, args.out), *mel_weights(args.source.parent / emb.MEL_FILE, args.out)]:
        print(path)


if __name__ == "__main__":
    main()
