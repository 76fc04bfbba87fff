"""Corpus generation speed on this machine: `kws-train synth` calls per second.

Generates N calls with J workers into a temporary directory and extrapolates to 10,000
calls (target: under 30 minutes on 2 cores). The TTS cache (~/.cache/kws-stream/tts)
makes a second corpus much faster than the first; the script reports how many cached
utterances existed before and after, so the number is read with its cache state.

    python benchmarks/bench_synth.py [--n 300] [--jobs 2] [--seed 99]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from kws_train.synth import SynthConfig, generate
from kws_train.synth_tts import CACHE


def cached() -> int:
    return sum(1 for _ in (CACHE / "tts").glob("*/*.npy"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--json")
    args = ap.parse_args()
    before = cached()
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        metas = generate(SynthConfig(out=tmp, n=args.n, seed=args.seed, jobs=args.jobs, fetch=False), progress=False)
        elapsed = time.monotonic() - began
    audio_h = sum(m["seconds"] for m in metas) / 3600
    rate = args.n / elapsed
    result = {"calls": args.n, "jobs": args.jobs, "seconds": elapsed, "calls_per_second": rate,
              "audio_hours": audio_h, "minutes_for_10000": 10000 / rate / 60, "cached_utterances_before": before,
              "cached_utterances_after": cached()}
    print(f"{args.n} calls ({audio_h:.2f} h of audio) in {elapsed:.1f} s with {args.jobs} jobs: {rate:.2f} calls/s, "
          f"10,000 calls in {result['minutes_for_10000']:.1f} min (TTS cache {before} -> {result['cached_utterances_after']} "
          f"utterances)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
