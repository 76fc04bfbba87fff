"""The live path in real time: CPU share, time per 10 ms hop, and memory.

Starts a private PulseAudio server with a null sink and plays audio into it without pause:
speech-like audio (--audio speech, the default), a quiet line (--audio line: hiss at -70
dBFS, what a monitored line carries between calls) or the demo calls each followed by as much
line (--audio calls). Then, one after the other:
  1. the daemon itself, `kws-stream --device pulse --pub none`, as its own process: its
     share of one CPU core in steady state, from --warm-up seconds to the end (target
     <= 0.5%), the CPU its start-up and warm-up took, and its RSS (target <= 100 MB);
  2. the same path in this process (MicSource, Resampler, Spotter), the audio fed in 10 ms
     hops: processing time per hop, p50 and p99 (target p99 <= 1 ms), and this process's
     CPU share and RSS (which include the benchmark's own imports).

    python benchmarks/bench_live.py [--seconds 60] [--audio speech|line|calls] [--gate-margin DB]
                                    [--model M.onnx] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_gate import calls_on_a_line, line  # noqa: E402
from bench_throughput import speech_like  # noqa: E402
from pulse import Pulse  # noqa: E402

from kws_stream import KwsModel, Spotter  # noqa: E402
from kws_stream.spotter import SpotterConfig  # noqa: E402
from kws_stream.audio import Resampler  # noqa: E402
from kws_stream.frontends import HOP_LENGTH  # noqa: E402
from kws_stream.mic import DeviceError, MicSource  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    """CPU time of every thread of this process (PortAudio's too), user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warm-up", type=float, default=5.0, help="seconds of audio before CPU is counted")
    ap.add_argument("--model", help="ONNX model (default: the packaged model)")
    ap.add_argument("--audio", choices=("speech", "line", "calls"), default="speech", help="what is played")
    ap.add_argument("--gate-margin", type=float, help="the speech gate's margin (default: the model's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.seconds <= args.warm_up:
        ap.error(f"--seconds ({args.seconds:g}) must be longer than --warm-up ({args.warm_up:g})")
    with tempfile.TemporaryDirectory() as tmp:
        pulse = Pulse(Path(tmp) / "rt")
        pulse.start()
        os.environ.update(pulse.env)
        wav = Path(tmp) / "speech.wav"
        seconds, rng = 2 * args.seconds + 30, np.random.default_rng(0)
        audio = {"speech": lambda: speech_like(seconds), "line": lambda: line(int(seconds * 16000), rng),
                 "calls": lambda: calls_on_a_line(seconds, rng)}[args.audio]()
        sf.write(wav, audio, 16000)
        player = subprocess.Popen(["paplay", "--device=kws", str(wav)], env=pulse.env)
        try:
            daemon = measure_daemon(args, pulse.env)
            result = measure(args)
        finally:
            player.kill()
            player.wait()
            pulse.stop()
    result = {"daemon": daemon, **result}
    print(f"the daemon, {daemon['seconds']:.1f} s after {args.warm_up:g} s: CPU {daemon['cpu_percent_of_one_core']:.3f}% "
          f"of one core (start-up and warm-up took {daemon['start_cpu_seconds']:.2f} s of CPU); "
          f"RSS {daemon['rss_mb']:.1f} MB")
    print(f"in this process, {result['audio_seconds']:.1f} s of live audio: "
          f"CPU {result['cpu_percent_of_one_core']:.3f}% of one core "
          f"after {args.warm_up:g} s (the warm-up took {result['warm_up_cpu_seconds']:.2f} s of CPU); "
          f"per 10 ms hop p50 {result['hop_us_p50']:.1f} us, p99 {result['hop_us_p99']:.1f} us, "
          f"max {result['hop_us_max']:.0f} us; RSS {result['rss_first_mb']:.1f} MB early, {result['rss_mb']:.1f} MB at the end; overflows {result['overflows']}, "
          f"queue drops {result['queue_drops']}; windows gated {result['gated_share']:.1%} ({args.audio})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure_daemon(args, env: dict) -> dict:
    """kws-stream --device pulse as a user runs it: CPU and RSS read from /proc, from
    --warm-up seconds after it logs that capture started."""
    cmd = [sys.executable, "-m", "kws_stream.cli", "--device", "pulse", "--pub", "none"]
    if args.model:
        cmd += ["--model", args.model]
    if args.gate_margin is not None:
        cmd += ["--gate-margin", str(args.gate_margin)]
    daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    capturing, lines = threading.Event(), []

    def drain() -> None:  # read stderr to the end, so the pipe never fills; note when capture starts
        for line in daemon.stderr:
            lines.append(line)
            if "capturing from" in line:
                capturing.set()
    threading.Thread(target=drain, daemon=True).start()
    try:
        if not capturing.wait(timeout=30):
            raise SystemExit(f"bench_live: the daemon did not start capturing: {''.join(lines)[-500:]}")
        time.sleep(args.warm_up)  # counted from the first block asked for, as in this process
        cpu0, began = proc_cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.seconds - args.warm_up)
        cpu1, wall = proc_cpu_seconds(daemon.pid), time.monotonic() - began
        rss = rss_mb(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
    return {"seconds": wall, "cpu_percent_of_one_core": 100 * (cpu1 - cpu0) / wall, "start_cpu_seconds": cpu0,
            "rss_mb": rss}


def measure(args) -> dict:
    model = KwsModel(args.model)
    spotter = Spotter(model, stream="device:pulse", config=SpotterConfig(gate_margin_db=args.gate_margin))
    source = MicSource("pulse")
    source.open()
    resample = Resampler(source.rate)
    times = np.zeros(int(args.seconds * 100 * 1.2) + 1000, dtype=np.int64)  # preallocated: no growth of our own
    n_times = 0
    rss_first = None
    start = cpu_seconds()
    began = time.monotonic()
    cpu0 = counted = None
    try:
        while time.monotonic() - began < args.seconds:
            try:
                block = source.read(timeout=0.5)
            except DeviceError as e:
                raise SystemExit(f"bench_live: {e}")
            if block is None:
                continue
            if cpu0 is None and time.monotonic() - began >= args.warm_up:
                cpu0, counted = cpu_seconds(), time.monotonic()
            if rss_first is None and time.monotonic() - began > min(60.0, args.seconds / 4):
                rss_first = rss_mb()
            x = resample(block.astype(np.float64))
            for i in range(0, x.size, HOP_LENGTH):
                t = time.perf_counter_ns()
                spotter.feed(x[i:i + HOP_LENGTH])
                if n_times < times.size:
                    times[n_times] = time.perf_counter_ns() - t
                    n_times += 1
    finally:
        source.close()
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - counted
    us = times[:n_times] / 1000
    return {"audio_seconds": spotter.audio_seconds, "wall_seconds": wall, "warm_up_cpu_seconds": cpu0 - start,
            "cpu_percent_of_one_core": 100 * cpu / wall, "hops": int(us.size),
            "hop_us_p50": float(np.percentile(us, 50)), "hop_us_p99": float(np.percentile(us, 99)),
            "hop_us_max": float(us.max()), "rss_mb": rss_mb(), "rss_first_mb": rss_first, "overflows": source.overflows,
            "queue_drops": source.queue_drops, "model": model.info.name, "audio": args.audio,
            "gated_share": spotter.gated / max(spotter.windows, 1)}


if __name__ == "__main__":
    sys.exit(main())
