"""The speech gate: what it costs, and what it saves, on one core, in one run.

Three kinds of audio, each --seconds long:
  - speech: the two demo calls repeated (bench_peer's audio), where nothing can be skipped;
  - calls on a line: each demo call followed by as long a stretch of a quiet line (hiss at
    -70 dBFS), as a monitored line between calls or a party that listens;
  - an idle line: the hiss alone.
For each, the Spotter fed in 10 ms hops and in 2 s blocks with the gate off and on (the same
model, rounds alternated), CPU ms per second of audio, x real time, the on/off ratio and the
share of windows skipped; and the gate's own cost (SpeechGate.push over the mel frames in
1 s chunks).

    python benchmarks/bench_gate.py [--seconds 300] [--margin 12] [--rounds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from bench_peer import demo_audio  # noqa: E402
from kws_stream import KwsModel, Spotter, read_file  # noqa: E402
from kws_stream.frontends import HOP_LENGTH, SAMPLE_RATE  # noqa: E402
from kws_stream.frontends.embedding import shared_nets  # noqa: E402
from kws_stream.frontends.gate import SpeechGate  # noqa: E402
from kws_stream.spotter import SpotterConfig  # noqa: E402

MODELS = HERE.parent / "models"
LINE_RMS = 3e-4  # -70 dBFS


def line(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, LINE_RMS, n)


def calls_on_a_line(seconds: float, rng: np.random.Generator) -> np.ndarray:
    parts, n = [], 0
    want = int(seconds * SAMPLE_RATE)
    while n < want:
        for name in ("demo_positive.opus", "demo_negative.opus"):
            call = read_file(MODELS / name)
            parts += [call, line(call.size, rng)]
            n += 2 * call.size
    return np.concatenate(parts)[:want]


def spotter_cpu(model: KwsModel, audio: np.ndarray, margin: float, step: int) -> tuple[float, float]:
    """CPU seconds of one pass, and the share of windows the gate skipped."""
    sp = Spotter(model, config=SpotterConfig(gate_margin_db=margin))
    began = time.process_time()
    for i in range(0, audio.size, step):
        sp.feed(audio[i:i + step])
    sp.finish()
    return time.process_time() - began, sp.gated / max(sp.windows, 1)


def gate_cpu(audio: np.ndarray, margin: float) -> float:
    mel = shared_nets().mel(audio)
    gate = SpeechGate(margin)
    began = time.process_time()
    for a in range(0, mel.shape[0], 100):
        gate.push(mel[a:a + 100])
    return time.process_time() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--margin", type=float, default=None, help="the gate's margin in dB (default: the model's, "
                                                                "else 12)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", help="ONNX model (default: the packaged model)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    model = KwsModel(args.model)
    margin = args.margin if args.margin is not None else (model.info.gate_margin_db or 12.0)
    rng = np.random.default_rng(0)
    audios = {"speech": demo_audio(args.seconds), "calls on a line": calls_on_a_line(args.seconds, rng),
              "an idle line": line(int(args.seconds * SAMPLE_RATE), rng)}
    print(f"model {model.info.name} {model.info.version}; gate margin {margin:g} dB; {args.seconds:g} s of each; "
          f"CPU ms per second of audio, best of {args.rounds} rounds")
    print(f"{'audio':16s} {'feed':9s} {'gate off':>9s} {'gate on':>9s} {'on/off':>7s} {'x rt off':>9s} "
          f"{'x rt on':>8s} {'skipped':>8s}")
    results = []
    for label, audio in audios.items():
        for feed, step in (("10 ms", HOP_LENGTH), ("2 s", 2 * SAMPLE_RATE)):
            off, on = [], []
            for _ in range(args.rounds):
                off.append(spotter_cpu(model, audio, 0.0, step)[0])
                cpu, skipped = spotter_cpu(model, audio, margin, step)
                on.append(cpu)
            off_ms, on_ms = 1000 * min(off) / args.seconds, 1000 * min(on) / args.seconds
            print(f"{label:16s} {feed:9s} {off_ms:9.3f} {on_ms:9.3f} {on_ms / off_ms:7.2f} {1000 / off_ms:9.0f} "
                  f"{1000 / on_ms:8.0f} {skipped:8.1%}")
            results.append({"audio": label, "feed": feed, "off_ms_per_s": off_ms, "on_ms_per_s": on_ms,
                            "x_realtime_off": 1000 / off_ms, "x_realtime_on": 1000 / on_ms,
                            "skipped_windows": skipped})
    own = 1000 * min(gate_cpu(audios["speech"], margin) for _ in range(args.rounds)) / args.seconds
    print(f"the gate itself (SpeechGate.push, 1 s chunks): {own:.4f} ms per second of audio")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.info.version, "margin_db": margin,
                                               "seconds": args.seconds, "gate_ms_per_s": own,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
