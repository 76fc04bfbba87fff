"""Peak RSS of `kws-stream --file` on a 10-hour recording, and its growth from hour 1 to hour 10.

Writes a 10-hour 16 kHz WAV of speech-like audio (about 1.2 GB, in a temporary
directory), replays it through the CLI as a subprocess, and samples the process's
resident set from /proc every 50 ms. Replay runs at a steady rate, so the share of
the run's time locates the audio hour. Targets (issue 2): peak RSS <= 120 MB and no
growth between hour 1 and hour 10.

    python benchmarks/bench_memory.py [--hours 10] [--model M.onnx] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import speech_like  # noqa: E402

SAMPLE_RATE = 16000


def status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def write_long_wav(path: Path, hours: float) -> None:
    block = speech_like(600.0)  # ten distinct minutes, repeated with a varying gain
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for i in range(int(hours * 6)):
            f.write(block * (0.5 + 0.5 * ((i * 7) % 10) / 10))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--model", help="ONNX model (default: the packaged model)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        write_long_wav(wav, args.hours)
        cmd = [sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--pub", "none", "--quiet"]
        if args.model:
            cmd += ["--model", args.model]
        began = time.monotonic()
        proc = subprocess.Popen(cmd)
        samples, peak = [], 0
        while proc.poll() is None:
            rss = status_kb(proc.pid, "VmRSS")
            hwm = status_kb(proc.pid, "VmHWM")
            if rss is not None:
                samples.append((time.monotonic() - began, rss))
                peak = max(peak, hwm or rss)
            time.sleep(0.05)
        elapsed = time.monotonic() - began
    if proc.returncode != 0:
        print(f"kws-stream exited with {proc.returncode}", file=sys.stderr)
        return 1

    def rss_at(fraction: float) -> float:
        """Median RSS (MB) over the 2% of the run around `fraction` of its length."""
        near = sorted(r for t, r in samples if abs(t / elapsed - fraction) <= 0.01)
        return near[len(near) // 2] / 1024 if near else float("nan")

    hour1, last = rss_at(1 / args.hours), rss_at(0.98)
    result = {"hours": args.hours, "seconds": elapsed, "x_realtime": args.hours * 3600 / elapsed,
              "peak_rss_mb": peak / 1024, "rss_hour_1_mb": hour1, "rss_end_mb": last, "growth_mb": last - hour1,
              "samples": len(samples)}
    print(f"{args.hours:g} h of audio in {elapsed:.1f} s ({result['x_realtime']:.0f}x real time, wall clock)")
    print(f"peak RSS {result['peak_rss_mb']:.1f} MB; RSS at hour 1 {hour1:.1f} MB, at the end {last:.1f} MB, "
          f"growth {result['growth_mb']:+.2f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
