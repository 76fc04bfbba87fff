"""What the device buffer's depth costs and delays: a bare PortAudio stream, nothing else.

Starts a private PulseAudio server with a null sink (its monitor is the input, as in
bench_live.py) and opens a stream of MicSource's 200 ms blocks with a callback that only
notes the time, once per buffer depth, `--rounds` times in turn. For each: the process's
CPU share over the measured seconds, and the gaps between blocks as they reach the
callback. A gap of g blocks means the blocks after it came at least g - 1 blocks late.

    python benchmarks/bench_device_buffer.py [--seconds 30] [--rounds 2] [--buffers 0.6 1.2]
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
from kws_stream.mic import BLOCK_SECONDS, BUFFER_SECONDS, DeviceError, _sounddevice, check_input  # noqa: E402

DEVICE = "pulse"  # ALSA's PulseAudio plugin, as the daemon's `--device pulse`
SETTLE_SECONDS = 3.0  # a PulseAudio monitor takes about 2 s to deliver its first block


def measure(sd, buffer_seconds: float, seconds: float) -> dict:
    arrivals: list[float] = []
    flags: list[str] = []

    def noted(indata, frames, t, status):
        arrivals.append(time.monotonic())
        if status:
            flags.append(str(status))

    stream = sd.InputStream(device=DEVICE, channels=1, samplerate=SAMPLE_RATE, dtype="float32",
                            blocksize=int(SAMPLE_RATE * BLOCK_SECONDS), latency=buffer_seconds, callback=noted)
    with stream:
        time.sleep(SETTLE_SECONDS)
        first, cpu0, t0 = len(arrivals), time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall, last = time.process_time() - cpu0, time.monotonic() - t0, len(arrivals)
    gaps = np.diff(arrivals[first:last]) * 1000
    return {"buffer_s": buffer_seconds, "cpu_percent": round(100 * cpu / wall, 3), "blocks": last - first,
            "gap_mean_ms": round(float(gaps.mean()), 1), "gap_max_ms": round(float(gaps.max()), 1),
            "gaps_over_1_5_blocks": int(np.sum(gaps > 1.5 * BLOCK_SECONDS * 1000)), "status_flags": len(flags)}


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
            check_input(DEVICE)
            sd = _sounddevice()
            for _ in range(args.rounds):
                for b in args.buffers:
                    print(json.dumps(measure(sd, b, args.seconds)), flush=True)
        except DeviceError as e:
            print(f"bench_device_buffer: {e}", file=sys.stderr)
            return 1
        finally:
            pulse.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
