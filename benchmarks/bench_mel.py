"""The embedding front end's mel spectrogram: the packaged mel network through onnxruntime
against the numpy FFT the front end now runs, in one run, on one core, on the same audio.

Both take what the front end hands them: about one second of audio when a window is due
every second (the daemon, RTP and `--file`), and a whole signal in one call
(`file_embeddings`, which training's feature caches use). Reports CPU ms per second of
audio, the ratio, and the largest difference between their frames on this audio (the
front end's values are x / 10 + 2 of dB).

    python benchmarks/bench_mel.py [--seconds 120] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from bench_throughput import speech_like  # noqa: E402
from kws_stream.frontends import SAMPLE_RATE  # noqa: E402
from kws_stream.frontends import embedding as emb  # noqa: E402
from kws_stream.onnxfile import open_session  # noqa: E402

CHUNKS = {"1 s chunks (a window due every second)": SAMPLE_RATE, "the whole signal in one call": None}


def network_mel(session):
    def mel(pcm: np.ndarray) -> np.ndarray:
        (out,) = session.run(None, {"input": (pcm * emb.PCM_SCALE).astype(np.float32).reshape(1, -1)})
        return out[0, 0] / 10.0 + 2.0
    return mel


def ms_per_second(mel, audio: np.ndarray, chunk: int | None) -> float:
    """CPU ms per second of audio, each chunk carrying the 352 samples its last frame needs."""
    chunk = chunk or audio.size
    before = time.process_time()
    for i in range(0, audio.size - emb.MEL_FRAME + 1, chunk):
        mel(audio[i:i + chunk + emb.MEL_FRAME - emb.MEL_HOP])
    return 1000 * (time.process_time() - before) / (audio.size / SAMPLE_RATE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=3, help="each path measured this many times, alternately; best kept")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    audio = speech_like(args.seconds)
    network = network_mel(open_session(resources.files("kws_stream.models").joinpath(emb.MEL_FILE).read_bytes()))
    paths = {"mel network (onnxruntime)": network, "numpy FFT (the front end)": emb.shared_nets().mel}
    whole = {name: mel(audio) for name, mel in paths.items()}
    result = {"seconds": args.seconds, "max_abs_difference": float(np.abs(np.subtract(*whole.values())).max()),
              "ms_per_second": {}}
    for label, chunk in CHUNKS.items():
        best = {name: float("inf") for name in paths}
        for _ in range(args.rounds):
            for name, mel in paths.items():
                best[name] = min(best[name], ms_per_second(mel, audio, chunk))
        result["ms_per_second"][label] = best
        network_ms, numpy_ms = best.values()
        print(f"{label}: network {network_ms:.3f} ms, numpy {numpy_ms:.3f} ms of CPU per second of audio: "
              f"{network_ms / numpy_ms:.2f}x")
    print(f"largest difference between their frames: {result['max_abs_difference']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
