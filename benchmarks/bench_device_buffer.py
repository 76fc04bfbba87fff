"""What the device buffer's depth costs and delays: a bare PortAudio stream, nothing else.

Starts a private PulseAudio server with a null sink (its monitor is the input, as in
bench_live.py) and opens a stream of MicSource's 200 ms blocks with a callback that only
notes the time, once per buffer depth, `--rounds` times in turn. For each: the process's
CPU share over the measured seconds, and the gaps between blocks as they reach the
callback. A gap above one block means a block came late by that much.

    python benchmarks/bench_device_buffer.py [--seconds 30] [--rounds 2] [--buffers 0.6 1.2 1.6]
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
sys.path.insert(0, str(HERE.parent / "tests"))
from pulse import Pulse  # noqa: E402

from kws_stream.frontends import SAMPLE_RATE  # noqa: E402
from kws_stream.mic import BLOCK_SECONDS, BUFFER_SECONDS  # noqa: E402

SETTLE_SECONDS = 3.0  # a PulseAudio monitor takes about 2 s to deliver its first block


def measure(sd, device: int, buffer_seconds: float, seconds: float) -> dict:
    arrivals: list[float] = []
    stream = sd.InputStream(device=device, channels=1, samplerate=SAMPLE_RATE, dtype="float32",
                            blocksize=int(SAMPLE_RATE * BLOCK_SECONDS), latency=buffer_seconds,
                            callback=lambda indata, frames, t, status: arrivals.append(time.monotonic()))
    with stream:
        time.sleep(SETTLE_SECONDS)
        first, cpu0, t0 = len(arrivals), time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    gaps = np.diff(arrivals[first:]) * 1000
    return {"buffer_s": buffer_seconds, "cpu_percent": round(100 * cpu / wall, 3), "blocks": len(gaps) + 1,
            "gap_mean_ms": round(float(gaps.mean()), 1), "gap_max_ms": round(float(gaps.max()), 1),
            "late_blocks": int(np.sum(gaps > 1.5 * BLOCK_SECONDS * 1000))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--buffers", type=float, nargs="+", default=[BUFFER_SECONDS, 2 * BUFFER_SECONDS])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pulse = Pulse(Path(tmp) / "rt")
        pulse.start()
        try:
            os.environ.update(pulse.env)
            import sounddevice as sd
            device = next(i for i, d in enumerate(sd.query_devices()) if d["name"] == "pulse")
            for _ in range(args.rounds):
                for b in args.buffers:
                    print(json.dumps(measure(sd, device, b, args.seconds)), flush=True)
        finally:
            pulse.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
