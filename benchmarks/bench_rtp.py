"""How many concurrent μ-law calls one `kws-stream --rtp` process watches in real time.

A sender process plays N calls at once as RTP (PCMU, 20 ms packets, paced by the clock,
starts spread over one second); each call is the positive demo call, G.711-encoded by
ffmpeg, then one second of silence. With --listen-seconds S, each call first carries S
seconds of a quiet line (hiss at -70 dBFS): the direction of a call whose speaker listens
before speaking, which the speech gate can skip (--gate-margin sets the service's). The service under test is the real CLI
(`kws-stream --rtp`), publishing on ZeroMQ; this script subscribes. A step passes when:
  - no packet was dropped inside the process (the receiver queue's drops in the heartbeat);
  - every call was detected, and each detection arrived at most 1.5 s after the phrase
    ended (the phrase end is the call's last sample above -34 dBFS: the phrase closes
    the demo call, so this is, if anything, late, and the latency measured short of it
    is not flattered by more than the call's tail).
N grows 25, 50, 100, 150, 200, 300, 400, 500 until a step fails. Reported per step: the
service's CPU (share of one core, and per stream), its RSS (and per stream over the
idle service), the detections' latency (median and max). The sender runs on the same
2 cores and takes its share.

    python benchmarks/bench_rtp.py [--steps 25 50 100 ...] [--listen-seconds S] [--gate-margin DB]
                                   [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_positive.opus"
PACKET = 160  # samples at 8 kHz: 20 ms
LATENCY_LIMIT = 1.5


def ulaw_call(listen_seconds: float = 0.0) -> tuple[bytes, float]:
    """The demo call as μ-law bytes, after listen_seconds of a quiet line and before one
    second of silence, and its phrase's end in seconds."""
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(DEMO), "-ac", "1", "-ar", "8000", "-f", "mulaw",
                          "-"], check=True, capture_output=True, timeout=60).stdout
    from kws_stream.rtp import ULAW
    x = ULAW[np.frombuffer(raw, dtype=np.uint8)]
    loud = np.flatnonzero(np.abs(x) > 10 ** (-34 / 20))
    hiss = np.random.default_rng(0).normal(0.0, 3e-4, int(listen_seconds * 8000))
    line = np.abs(ULAW[None, :] - hiss[:, None]).argmin(axis=1).astype(np.uint8).tobytes()  # nearest μ-law code
    return line + raw + b"\xff" * 8000, listen_seconds + float(loud[-1] + 1) / 8000


def send(port: int, n: int, start: float, call: bytes) -> None:
    """N calls from N sockets (N senders), each packet at its due time."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    offsets = [i / n for i in range(n)]  # starts spread over one second
    packets = len(call) // PACKET
    ssrcs = [0x1000 + i for i in range(n)]
    k = [0] * n
    while True:
        now = time.time()
        sent_any = False
        for i in range(n):
            while k[i] < packets and start + offsets[i] + k[i] * 0.02 <= now:
                a = k[i] * PACKET
                header = struct.pack("!BBHII", 0x80, 0, k[i] & 0xFFFF, a, ssrcs[i])
                socks[i].sendto(header + call[a:a + PACKET], ("127.0.0.1", port))
                k[i] += 1
                sent_any = True
        if all(x >= packets for x in k):
            break
        if not sent_any:
            time.sleep(0.002)
    for i, s in enumerate(socks):  # RTCP BYE, as a well-behaved sender ends its call
        s.sendto(struct.pack("!BBHI", 0x81, 203, 1, ssrcs[i]), ("127.0.0.1", port + 1))
        s.close()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_pair() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port % 2 == 0 and port < 65000:
            return port


def step(n: int, call: bytes, phrase_end: float, gate: list[str]) -> dict:
    port = free_pair()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pub = s.getsockname()[1]
    svc = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--rtp", f"127.0.0.1:{port}", "--pub",
                            f"tcp://127.0.0.1:{pub}", "--quiet", "--status-interval", "1", "--max-streams",
                            str(n + 10), "--rtp-timeout", "3", *gate], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kws.")
    sub.connect(f"tcp://127.0.0.1:{pub}")
    events: list[tuple[float, dict]] = []

    def collect(until: float) -> None:
        while time.time() < until:
            if sub.poll(50):
                events.append((time.time(), json.loads(sub.recv_multipart()[1])))

    collect(time.time() + 3.0)  # the service starts, the subscriber joins
    idle_rss = proc_rss_mb(svc.pid)
    start = time.time() + 1.0
    sender = multiprocessing.get_context("spawn").Process(target=send, args=(port, n, start, call))
    cpu0 = proc_cpu(svc.pid)
    sender.start()
    call_seconds = len(call) / 8000
    collect(start + 1.0 + call_seconds + 2.0)
    cpu = proc_cpu(svc.pid) - cpu0
    wall = time.time() - (start - 1.0)
    rss = proc_rss_mb(svc.pid)
    sender.join(30)
    svc.send_signal(signal.SIGTERM)
    svc.wait(30)
    sub.close(0)
    offsets = {f"/{0x1000 + i}": i / n for i in range(n)}
    latencies, detected = [], set()
    for t, e in events:
        if e["type"] == "detection":
            tail = "/" + e["stream"].rsplit("/", 1)[1]
            detected.add(tail)
            latencies.append(t - (start + offsets[tail] + phrase_end))
    beats = [e for _, e in events if e["type"] == "status" and e.get("state") == "running"]
    drops = max((b["queue_drops"] for b in beats), default=0)
    ends = [e for _, e in events if e.get("state") == "stream-end"]
    lost = sum(e.get("rtp", {}).get("lost", 0) for e in ends)
    gated = sum(e.get("gated", 0) for e in ends) / max(sum(e.get("windows", 0) for e in ends), 1)
    lat = np.array(latencies) if latencies else np.array([np.inf])
    ok = drops == 0 and len(detected) == n and float(lat.max()) <= LATENCY_LIMIT
    return {"streams": n, "ok": ok, "detected": len(detected), "queue_drops": drops, "lost_packets": lost,
            "latency_median_s": round(float(np.median(lat)), 3), "latency_max_s": round(float(lat.max()), 3),
            "cpu_share_of_one_core": round(cpu / wall, 3), "cpu_ms_per_stream_second": round(1000 * cpu / wall / n, 3),
            "rss_mb": round(rss, 1), "rss_mb_idle": round(idle_rss, 1),
            "rss_mb_per_stream": round((rss - idle_rss) / n, 3), "gated_windows": round(gated, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 150, 200, 300, 400, 500])
    ap.add_argument("--listen-seconds", type=float, default=0.0, help="a quiet line before each call's speech")
    ap.add_argument("--gate-margin", type=float, help="the service's speech gate (default: the model's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    call, phrase_end = ulaw_call(args.listen_seconds)
    gate = [] if args.gate_margin is None else ["--gate-margin", str(args.gate_margin)]
    print(f"call {len(call) / 8000:.2f} s, phrase ends at {phrase_end:.2f} s", file=sys.stderr)
    rows = []
    for n in args.steps:
        row = step(n, call, phrase_end, gate)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not row["ok"]:
            break
    best = max((r["streams"] for r in rows if r["ok"]), default=0)
    summary = {"largest_real_time_streams": best, "target": 100, "goal": 500, "steps": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
