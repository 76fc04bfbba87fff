"""Subscriber faults never touch the publisher."""
import json
import socket
import subprocess
import sys
import time

import soundfile as sf
import zmq

from modelkit import burst_signal, pulsed_tone_wav, small_queue_subscriber


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sub_socket(ctx, endpoint):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RECONNECT_IVL, 10)  # connects before the bind: retry soon, however loaded the machine
    s.setsockopt(zmq.SUBSCRIBE, b"kws.")
    s.connect(endpoint)
    return s


def test_subscriber_killed_and_restarted_mid_stream(tmp_path, burst_model):
    wav = tmp_path / "long.wav"
    sf.write(wav, burst_signal(16.0, [1.05 + 3 * k for k in range(5)]), 16000)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    first = sub_socket(ctx, endpoint)
    daemon = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--model", burst_model,
                               "--pub", endpoint, "--realtime", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        assert first.poll(15000), "no first event"
        seen = []
        while not any(e["type"] == "detection" for e in seen):
            assert first.poll(15000)
            seen.append(json.loads(first.recv_multipart()[1]))
        first.close(linger=0)  # the subscriber dies mid-stream
        time.sleep(1.0)
        second = sub_socket(ctx, endpoint)  # and comes back
        later = []
        while not later or later[-1].get("state") != "finished":
            assert second.poll(20000), "nothing after reconnecting"
            later.append(json.loads(second.recv_multipart()[1]))
        second.close(linger=0)
        assert daemon.wait(20) == 0, daemon.stderr.read()
    finally:
        daemon.kill()
        ctx.term()
    detections = [e for e in later if e["type"] == "detection"]
    assert detections and min(e["seq"] for e in detections) > 1
    assert later[-1]["detections"] == 5 and later[-1]["dropped"] == 0


def test_a_stalled_subscriber_never_blocks_detection(tmp_path, burst_model):
    """A subscriber that never reads: tens of thousands of events still go out at full
    speed, and the publisher's memory stays bounded by the high-water mark."""
    wav = tmp_path / "tones.wav"
    pulsed_tone_wav(wav, 300)  # 30,000 windows, each one a detection: beyond the HWM
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    stalled = small_queue_subscriber(ctx, endpoint, 10)
    try:
        began = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--model", burst_model,
                              "--pub", endpoint, "--quiet", "--hop-seconds", "0.01", "--refractory", "0",
                              "--threshold", "0.0"], stderr=subprocess.PIPE, text=True)
        peak_kb = 0
        while p.poll() is None and time.monotonic() - began < 300:
            try:
                status = open(f"/proc/{p.pid}/status").read()
                peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
            except (FileNotFoundError, IndexError, ProcessLookupError):
                pass
            time.sleep(0.05)
        p.wait(10)
        elapsed = time.monotonic() - began
    finally:
        stalled.close(linger=0)
        ctx.term()
    assert p.returncode == 0, p.stderr.read()
    assert peak_kb / 1024 < 150 and elapsed < 240, (peak_kb / 1024, elapsed)
