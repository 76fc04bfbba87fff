"""Throughput on one core, side by side in one run.

  (1) the seed's procedure (SEED.md): per-frame FFT loop, per-window features and model call;
  (2) kws-stream's Spotter fed in 10 ms hops, and in 2 s blocks as a file replay decodes them;
  (3) `kws-stream --file` as a subprocess, on a 16 kHz WAV and on a 48 kHz opus file.

(2) and (3) score the same audio with the same ONNX model (the packaged one unless
--model is given); (1) uses the seed's own DNN shape (random weights, the seed's cost).
Results are real-time factors (audio seconds per CPU second) and ratios against (1).
Targets (issue 2): (2) >= 1000x, (3) >= 5000x, both >= 10x (1).

    python benchmarks/bench_throughput.py [--seconds 600] [--model M.onnx] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kws_stream import KwsModel, Spotter  # noqa: E402
from kws_stream.frontends import HOP_LENGTH, SAMPLE_RATE  # noqa: E402
from kws_stream.resample import resample  # noqa: E402
from modelkit import save_seed_dnn  # noqa: E402
from seed_reference import seed_predict  # noqa: E402


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a syllable-rate envelope and a wandering pitch: exercises every band."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.3 * t)
    voiced = np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE)
    return (0.1 * env * (voiced + 0.3 * rng.standard_normal(n))).astype(np.float64)


def cpu_seconds(fn) -> float:
    before = time.process_time()
    fn()
    return time.process_time() - before


def child_cpu_seconds(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="audio length for (2) and (3)")
    ap.add_argument("--seed-seconds", type=float, default=60.0, help="audio length for the slow seed procedure")
    ap.add_argument("--model", help="ONNX model (default: the packaged model)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children too
    model = KwsModel(args.model)
    audio = speech_like(args.seconds)
    rows = []

    # (1) the seed's procedure, on a shorter excerpt (it is slow); window by window.
    excerpt = audio[:int(args.seed_seconds * SAMPLE_RATE)]
    seed_model = KwsModel(save_seed_dnn(Path(tempfile.mkdtemp()) / "seed_dnn.onnx"))  # the seed's DNN shape
    cpu = cpu_seconds(lambda: seed_predict(excerpt, lambda f: seed_model.score(f)[0]))
    rows.append(("seed procedure (per-frame loop)", args.seed_seconds, cpu))

    # (2) the streaming path in 10 ms hops.
    def stream():
        sp = Spotter(model)
        for i in range(0, audio.size, HOP_LENGTH):
            sp.feed(audio[i:i + HOP_LENGTH])
        sp.finish()
    rows.append(("kws-stream, 10 ms hops", args.seconds, cpu_seconds(stream)))

    # (2b) 2 s blocks, as a file replay decodes them.
    def blocks():
        sp = Spotter(model)
        for i in range(0, audio.size, 2 * SAMPLE_RATE):
            sp.feed(audio[i:i + 2 * SAMPLE_RATE])
        sp.finish()
    rows.append(("kws-stream, 2 s blocks", args.seconds, cpu_seconds(blocks)))

    # (3) the CLI on files, process start-up included.
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
        opus = Path(tmp) / "long.opus"
        sf.write(opus, resample(audio, SAMPLE_RATE, 48000), 48000, format="OGG", subtype="OPUS")
        base = [sys.executable, "-m", "kws_stream.cli", "--pub", "none", "--quiet"]
        if args.model:
            base += ["--model", args.model]
        startup = child_cpu_seconds(base + ["--file", str(_tiny(tmp))])
        for label, path in (("kws-stream --file, 16 kHz wav", wav), ("kws-stream --file, 48 kHz opus", opus)):
            rows.append((label, args.seconds, child_cpu_seconds(base + ["--file", str(path)])))
        rows.append(("  (process start-up alone, 0.5 s file)", 0.5, startup))

    seed_rtf = rows[0][1] / rows[0][2]
    print(f"model: {model.info.name} {model.info.version} ({model.path})")
    print(f"{'path':42s} {'audio s':>8s} {'cpu s':>8s} {'x real time':>12s} {'x seed':>8s}")
    results = []
    for label, seconds, cpu in rows:
        rtf = seconds / cpu
        print(f"{label:42s} {seconds:8.1f} {cpu:8.3f} {rtf:12.0f} {rtf / seed_rtf:8.1f}")
        results.append({"path": label.strip(), "audio_seconds": seconds, "cpu_seconds": cpu, "x_realtime": rtf,
                        "x_seed": rtf / seed_rtf})
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.info.name, "results": results}, indent=2))
    return 0


def _tiny(tmp: str) -> Path:
    path = Path(tmp) / "tiny.wav"
    sf.write(path, speech_like(0.5), SAMPLE_RATE)
    return path


if __name__ == "__main__":
    sys.exit(main())
