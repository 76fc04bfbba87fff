"""End to end: `kws-stream --file` as a subprocess, real audio files, real ZeroMQ subscribers."""
import csv
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from kws_stream.resample import resample
from modelkit import burst_signal, read_until

RATE = 16000
FORMATS = [  # (extension, soundfile format, subtype, sample rate, channels)
    ("wav", "WAV", "PCM_16", 16000, 1),
    ("flac", "FLAC", "PCM_16", 44100, 2),
    ("ogg", "OGG", "VORBIS", 48000, 1),
    ("opus", "OGG", "OPUS", 48000, 2),
    ("opus", "OGG", "OPUS", 8000, 1),
    ("mp3", "MP3", "MPEG_LAYER_III", 22050, 1),
    ("wav", "WAV", "FLOAT", 8000, 2),
]


def kws(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "kws_stream.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def write(path, x, rate=RATE, channels=1, fmt=None, subtype=None):
    if rate != RATE:
        x = resample(x, RATE, rate)
    if channels == 2:
        x = np.stack([x, 0.8 * x], axis=1)
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    return str(path)


def events(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ext, fmt, subtype, rate, channels", FORMATS)
def test_detects_in_every_format(tmp_path, burst_model, ext, fmt, subtype, rate, channels):
    x = burst_signal(12.0, [3.05, 8.05])
    path = write(tmp_path / f"call.{ext}", x, rate, channels, fmt, subtype)
    out = tmp_path / "out.csv"
    r = kws("--file", path, "--model", burst_model, "--pub", "none", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    found = events(r.stdout)
    assert [e["seq"] for e in found] == [1, 2]
    assert [round(e["start"]) for e in found] == [2, 7]
    assert all(e["stream"] == path and e["threshold"] == 0.5 for e in found)
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["id"] == "call" and rows[0]["label"] == "1" and float(rows[0]["score"]) > 0.9


def test_valid_edge_inputs_get_a_score(tmp_path, burst_model):
    rng = np.random.default_rng(1)
    files = {
        "short": write(tmp_path / "short.wav", burst_signal(1.2, [])),
        "silence": write(tmp_path / "silence.flac", np.zeros(5 * RATE)),
        "clipped": write(tmp_path / "clipped.wav", np.clip(rng.normal(0, 2.0, 4 * RATE), -1, 1)),
        "tiny": write(tmp_path / "tiny.wav", rng.normal(0, 0.1, 100)),
    }
    out = tmp_path / "scores.csv"
    r = kws("--file", *files.values(), "--model", burst_model, "--pub", "none", "--csv", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == set(files)
    for row in rows.values():
        assert 0.0 <= float(row["score"]) <= 1.0 and row["label"] in "01"


def test_jobs_give_identical_results(tmp_path, burst_model):
    paths = [write(tmp_path / f"c{i}.wav", burst_signal(6.0 + i, [1.05 + i % 3], seed=i)) for i in range(5)]
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    r1 = kws("--file", *paths, "--model", burst_model, "--pub", "none", "--csv", str(one))
    r2 = kws("--file", *paths, "--model", burst_model, "--pub", "none", "--csv", str(two), "--jobs", "2")
    assert r1.returncode == r2.returncode == 0, r2.stderr
    assert one.read_text() == two.read_text()
    strip = [{k: v for k, v in e.items() if k != "time"} for e in events(r1.stdout)]
    assert strip == [{k: v for k, v in e.items() if k != "time"} for e in events(r2.stdout)]
    assert len(strip) >= 5


def subscribe(ctx, endpoint):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RECONNECT_IVL, 10)  # connects before the bind: retry soon, however loaded the machine
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 20000)
    sub.connect(endpoint)  # before the daemon binds: the slow-joiner case
    return sub


def receive_until_finished(sub):
    got = []
    while True:
        topic, payload = sub.recv_multipart()
        event = json.loads(payload)
        assert topic.decode() == "kws." + event["type"] and event["schema"] == 1
        got.append(event)
        if event["type"] == "status" and event["state"] == "finished":
            return got


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_subscriber_connected_before_replay_gets_every_event(tmp_path, burst_model, transport):
    endpoint = f"tcp://127.0.0.1:{free_port()}" if transport == "tcp" else f"ipc://{tmp_path}/kws.sock"
    path = write(tmp_path / "call.wav", burst_signal(30.0, [1.05, 5.05, 9.05, 13.05, 17.05, 21.05, 25.05]))
    ctx = zmq.Context()
    sub = subscribe(ctx, endpoint)
    try:
        r = kws("--file", path, "--model", burst_model, "--pub", endpoint)
        assert r.returncode == 0, r.stderr
        printed = events(r.stdout)
        assert len(printed) == 7
        got = receive_until_finished(sub)
    finally:
        sub.close(linger=0)
        ctx.term()
    assert got[0]["type"] == "status" and got[0]["state"] == "started"
    assert [e for e in got if e["type"] == "detection"] == printed
    end = [e for e in got if e["type"] == "status" and e["state"] == "stream-end"]
    assert end[0]["detections"] == 7 and end[0]["audio_seconds"] == pytest.approx(30.0)
    assert got[-1]["dropped"] == 0


def test_torch_is_never_imported(tmp_path, burst_model):
    path = write(tmp_path / "call.wav", burst_signal(4.0, [1.05]))
    code = ("import sys, kws_stream.cli as c; rc = c.main(['--file', %r, '--model', %r, '--pub', 'none', '--quiet']);"
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)" % (path, burst_model))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_usage_errors_exit_2(tmp_path, burst_model):
    assert kws("--file", "a.wav", "--device", "pulse").returncode == 2
    r = kws("--file", "x.wav", "--hop-seconds", "0")
    assert r.returncode == 2 and "hop-seconds" in r.stderr
    r = kws("--file", "x.wav", "--model", str(tmp_path / "nope.onnx"))
    assert r.returncode == 2 and "nope.onnx" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_realtime_paces_replay(tmp_path, burst_model):
    path = write(tmp_path / "call.wav", burst_signal(1.5, []))
    began = time.monotonic()
    r = kws("--file", path, "--model", burst_model, "--pub", "none", "--realtime")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - began >= 1.4


def test_sigterm_mid_csv_run_keeps_finished_files(tmp_path, burst_model):
    paths = [write(tmp_path / f"c{i}.wav", burst_signal(1.0 if i == 0 else 30.0, [])) for i in range(3)]
    out = tmp_path / "scores.csv"
    p = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--file", *paths, "--model", burst_model,
                          "--pub", "none", "--csv", str(out), "--realtime", "--events", "all"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until(p.stdout, lambda line: '"stream-end"' in line)  # the 1 s file is done, the second is playing
    p.send_signal(15)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + 15, err
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["c0"]
    assert "interrupted after 1 finished files" in err and "Traceback" not in err
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".scores.csv")]  # no temporary left behind


def test_publishing_beyond_loopback_must_be_asked_for(tmp_path, burst_model):
    path = write(tmp_path / "c.wav", burst_signal(3.0, []))
    r = kws("--file", path, "--model", burst_model, "--pub", f"tcp://0.0.0.0:{free_port()}")
    assert r.returncode == 2 and "--allow-remote" in r.stderr
    r = kws("--file", path, "--model", burst_model, "--pub", f"tcp://0.0.0.0:{free_port()}", "--allow-remote")
    assert r.returncode == 0, r.stderr


def test_main_job_with_the_packaged_model_and_demo_calls():
    """README's first command: the shipped model finds the phrase in the positive demo only."""
    from pathlib import Path
    models = Path(__file__).resolve().parent.parent / "models"
    r = kws("--file", models / "demo_positive.opus", models / "demo_negative.opus", "--pub", "none")
    assert r.returncode == 0, r.stderr
    found = events(r.stdout)
    assert len(found) == 1 and found[0]["stream"].endswith("demo_positive.opus")
    assert found[0]["model"] == {"name": "kws-ne-slyshu", "version": "7.1.1"}
