"""CPU cost of models and their front ends, side by side in one run, on one core.

For each model: the front end alone (CPU ms per second of audio, with a window due every
second), fed as each source feeds it: 10 ms hops (a microphone), 20 ms packets (RTP) and
2 s blocks (`--file`); and the model alone (CPU ms per scored window, batch 1), at its
own threshold as the daemon runs it and, for a cascade, also with every window in full.
Issue 11's target for the front end is at most 2.5 ms per second of audio in every mode.
The default set is the packaged model, the seed's DNN shape (random weights, same cost)
and any --model given.

    python benchmarks/bench_models.py [--seconds 120] [--model M.onnx ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_throughput import speech_like  # noqa: E402
from kws_stream import KwsModel  # noqa: E402
from kws_stream.frontends import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE  # noqa: E402
from modelkit import save_seed_dnn  # noqa: E402


CHUNKS = {"10 ms hops": HOP_LENGTH, "20 ms packets": 2 * HOP_LENGTH, "2 s blocks": 2 * SAMPLE_RATE}


def front_end_ms_per_second(model: KwsModel, audio: np.ndarray, chunk: int = HOP_LENGTH) -> tuple[float, np.ndarray]:
    fe = model.front_end(FRAMES_PER_SECOND)
    out = np.empty(model.feature_size, dtype=np.float32)
    windows = []
    before = time.process_time()
    for i in range(0, audio.size, chunk):
        hop, taken = audio[i:i + chunk], 0
        while taken < hop.size:
            taken += fe.accept(hop[taken:])
            while fe.ready():
                fe.take(out)
                windows.append(out.copy())
    cpu = time.process_time() - before
    return 1000 * cpu / (audio.size / fe.sample_rate), np.stack(windows)


def model_ms_per_window(model: KwsModel, windows: np.ndarray, threshold: float | None) -> float:
    before = time.process_time()
    for w in windows:
        model.score(w[None, :], threshold)
    return 1000 * (time.process_time() - before) / len(windows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="audio streamed through each front end")
    ap.add_argument("--model", action="append", default=[], help="more ONNX models to measure")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    audio = speech_like(args.seconds)
    paths = [None, save_seed_dnn(Path(tempfile.mkdtemp()) / "seed_dnn.onnx")] + args.model
    rows = []
    for path in paths:
        model = KwsModel(path)
        per_mode = {mode: front_end_ms_per_second(model, audio, chunk) for mode, chunk in CHUNKS.items()}
        fe_ms, windows = per_mode["10 ms hops"]
        m_ms = model_ms_per_window(model, windows, model.info.threshold)
        full_ms = model_ms_per_window(model, windows, None) if model.info.cascade else m_ms
        label = "packaged default" if path is None else ("seed DNN shape" if path == paths[1] else Path(path).name)
        rows.append({"model": label, "name": model.info.name, "front_end": model.info.front_end,
                     "front_end_ms_per_audio_s": {mode: ms for mode, (ms, _) in per_mode.items()},
                     "model_ms_per_window": m_ms, "model_ms_per_window_in_full": full_ms,
                     "total_ms_per_audio_s": fe_ms + m_ms, "x_realtime": 1000 / (fe_ms + m_ms)})
    modes = "".join(f"{'fe ms/s, ' + mode:>24s}" for mode in CHUNKS)
    print(f"{'model':22s} {'front end':18s}{modes} {'model ms/win':>12s} {'in full':>8s} {'x real time (hops)':>19s}")
    for r in rows:
        fe = "".join(f"{r['front_end_ms_per_audio_s'][mode]:24.2f}" for mode in CHUNKS)
        print(f"{r['model']:22s} {r['front_end']:18s}{fe} {r['model_ms_per_window']:12.3f} "
              f"{r['model_ms_per_window_in_full']:8.3f} {r['x_realtime']:19.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
