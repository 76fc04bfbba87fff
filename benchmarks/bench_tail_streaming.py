"""What streaming the model's member tails would save, measured before building it.

6.x's default model (oww-embedding-rows-v1; 6.2.0 is `git show
5cf41fa~1:models/kws-default.onnx`) runs three copies of the embedding network's last five
convolutions over each window's 52 rows, although a window at hop 1 s shares 27 of
them with the one before. This times, on one core with onnxruntime: the shipped model per
window; three tails of the same shapes (random weights; time is what is measured) over a
window's 52 rows; and over the rows one 1 s hop adds (25, plus the convolutions' 4 rows of
context; after the pool 13 plus 2). The difference is what a model format with the tails
streamed per row, outside the per-window graph, would save.

    python benchmarks/bench_tail_streaming.py --model M.onnx [--runs 400]
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

ROWS_FEATURES = 52 * 192  # a window of oww-embedding-rows-v1


def session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def ms_per_run(s: ort.InferenceSession, feeds: dict, runs: int) -> float:
    for _ in range(20):
        s.run(None, feeds)
    began = time.process_time()
    for _ in range(runs):
        s.run(None, feeds)
    return (time.process_time() - began) / runs * 1e3


class Convolutions(nn.Module):
    """Three members' frequency and time convolutions and their 2 x 2 pool, as exported."""

    def __init__(self):
        super().__init__()
        def member():
            return nn.Sequential(nn.Conv2d(96, 96, (1, 3), padding=(0, 1)), nn.LeakyReLU(0.2), nn.Conv2d(96, 96, (3, 1)),
                                 nn.LeakyReLU(0.2), nn.Conv2d(96, 96, (1, 3), padding=(0, 1)), nn.LeakyReLU(0.2),
                                 nn.Conv2d(96, 96, (3, 1)), nn.LeakyReLU(0.2), nn.MaxPool2d(2))
        self.members = nn.ModuleList(member() for _ in range(3))

    def forward(self, x):
        return torch.cat([m(x) for m in self.members], 1)


def exported(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    torch.onnx.export(module.eval(), torch.zeros(shape), out, input_names=["x"], dynamic_axes={"x": {2: "t"}},
                      dynamo=False)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model on oww-embedding-rows-v1 with three tails (6.x)")
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feed = lambda *shape: {"x": rng.random(shape, dtype=np.float32)}  # noqa: E731
    model = session(open(args.model, "rb").read())
    if model.get_inputs()[0].shape[-1] != ROWS_FEATURES:
        ap.error(f"--model {args.model}: not a model on 52 rows of 192 values (6.x's default; see the docstring)")
    convs = session(exported(Convolutions(), (1, 96, 52, 2)))
    last = session(exported(nn.Conv2d(288, 288, (3, 1), groups=3, bias=False), (1, 288, 24, 1)))
    whole = ms_per_run(model, {"features": rng.random((1, ROWS_FEATURES), dtype=np.float32)}, args.runs)
    window = ms_per_run(convs, feed(1, 96, 52, 2), args.runs) + ms_per_run(last, feed(1, 288, 24, 1), args.runs)
    hop = ms_per_run(convs, feed(1, 96, 29, 2), args.runs) + ms_per_run(last, feed(1, 288, 15, 1), args.runs)
    streamed = whole - window + hop
    print(f"the model per window: {whole:.3f} ms, of which the three tails over its 52 rows {window:.3f} ms and "
          f"the rest (heads, norms, reshapes) {whole - window:.3f} ms; the tails over one hop's new rows "
          f"{hop:.3f} ms; streamed, the model would cost {streamed:.3f} ms per window ({streamed / whole:.2f} of today)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
