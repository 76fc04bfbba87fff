"""What a fault trial broke (issue 15), each reproduced with the real CLI, real signals,
real sockets and real files."""
import csv
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from modelkit import burst_signal, burst_weights, pulsed_tone_wav, read_until, save_model, small_queue_subscriber

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo_positive.opus"
CLI = [sys.executable, "-m", "kws_stream.cli"]


def kws(*args, **kw):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strict_json(line):
    def refuse(name):
        raise ValueError(f"non-finite number {name} in JSON")
    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """An hour of audio with a tone burst every 10 s: several seconds of work per file with
    the packaged model even on a fast machine (20 minutes once finished inside the test's
    settling time on CI)."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, np.tile(burst_signal(10.0, [4.05]), 360).astype(np.float32), 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize("percent", [5, 30, 50, 75, 95])
def test_truncated_ogg_opus_is_a_failed_file(tmp_path, percent):
    data = DEMO.read_bytes()
    cut = tmp_path / f"cut{percent}.opus"
    cut.write_bytes(data[:len(data) * percent // 100])
    r = kws("--file", DEMO, cut, "--pub", "none", "--csv", tmp_path / "s.csv")
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"cut{percent}.opus: truncated" in errors[0], r.stderr
    assert f"the file ends at byte {len(data) * percent // 100}, inside the Ogg page" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert [row["id"] for row in csv.DictReader((tmp_path / "s.csv").open())] == ["demo_positive"]


@pytest.mark.parametrize("gain", [1e-30, 1e-10, 1.0, 1e5, 1e15, 1e30])
def test_any_finite_level_gives_finite_scores(tmp_path, gain):
    x, rate = sf.read(DEMO)
    path = tmp_path / "level.wav"
    sf.write(path, x * gain, rate, subtype="DOUBLE")
    r = kws("--file", path, "--pub", "none", "--csv", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        assert np.isfinite(strict_json(line)["score"])
    (row,) = csv.DictReader((tmp_path / "s.csv").open())
    assert 0.0 <= float(row["score"]) <= 1.0


def test_sighup_does_not_end_a_replay(tmp_path, burst_model):
    path = tmp_path / "c.wav"
    sf.write(path, burst_signal(3.0, [1.05]), 16000)
    p = subprocess.Popen([*CLI, "--file", str(path), "--model", burst_model, "--pub", "none", "--realtime",
                          "--events", "all", "--csv", str(tmp_path / "s.csv")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    read_until(p.stdout, lambda line: '"started"' in line)  # SIGHUP is ignored from before this on
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert (tmp_path / "s.csv").exists() and len([x for x in out.splitlines() if '"detection"' in x]) == 1


def wait_for_workers(p, count: int = 2, settle: float = 2.0) -> list[str]:
    """Wait until the replay's worker processes run, then a little longer."""
    deadline = time.monotonic() + 60
    while len(children := children_of(p.pid)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    return children


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_multi_process_replay_stops_within_a_second(tmp_path, long_wav, sig):
    small = tmp_path / "small.wav"
    sf.write(small, burst_signal(2.0, []), 16000)
    out = tmp_path / "s.csv"
    p = subprocess.Popen([*CLI, "--file", str(small), str(long_wav), str(long_wav), "--jobs", "2",
                          "--pub", "none", "--events", "all", "--csv", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    read_until(p.stdout, lambda line: '"stream-end"' in line)  # the small file is done, both workers are in long files
    sent = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert time.monotonic() - sent < 1.0 + 0.5, time.monotonic() - sent  # + process exit
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [row["id"] for row in csv.DictReader(out.open())] == ["small"]


def children_of(pid: int) -> list[str]:
    """Process ids whose parent is pid, from /proc (no procps needed)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(stat_file.parent.name)
    return found


def test_workers_die_with_a_killed_parent(long_wav):
    p = subprocess.Popen([*CLI, "--file", str(long_wav), str(long_wav), "--jobs", "2", "--pub", "none", "--quiet"],
                         stderr=subprocess.DEVNULL)
    children = wait_for_workers(p, settle=1.0)
    assert children and p.poll() is None
    p.kill()
    p.wait()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.05)
    alive = [c for c in children if Path(f"/proc/{c}").exists() and
             Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive


def test_closed_stdout_is_quiet_mode_and_the_csv_is_written(tmp_path):
    files = [str(DEMO)] * 4
    out = tmp_path / "s.csv"
    r = subprocess.run(" ".join([*CLI, "--file", *files, "--pub", "none", "--csv", str(out), "|", "head", "-1"]),
                       shell=True, capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert len(r.stdout.splitlines()) == 1
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    assert len(list(csv.DictReader(out.open()))) == 4


def test_keys_refuse_to_overwrite_and_never_follow_symlinks(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert kws("keys", "--out", shared).returncode == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # a directory it did not make keeps its mode
    secret = (shared / "server.key_secret").read_text()
    r = kws("keys", "--out", shared)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.splitlines()) == 1
    assert (shared / "server.key_secret").read_text() == secret
    assert kws("keys", "--out", shared, "--force").returncode == 0
    assert (shared / "server.key_secret").read_text() != secret
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "server.key_secret").symlink_to(victim)
    r = kws("keys", "--out", trap)
    assert r.returncode == 2 and victim.read_text() == "precious\n"
    assert kws("keys", "--out", trap, "--force").returncode == 0
    assert victim.read_text() == "precious\n" and not (trap / "server.key_secret").is_symlink()
    fresh = tmp_path / "new" / "keys"
    assert kws("keys", "--out", fresh).returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


@pytest.mark.parametrize("writable", ["dir", "file"])
def test_writable_client_keys_are_refused(tmp_path, burst_model, writable):
    kws("keys", "--out", tmp_path / "k", "--name", "server")
    kws("keys", "--out", tmp_path / "k", "--name", "alice")
    clients = tmp_path / "clients"
    clients.mkdir(mode=0o755)
    (clients / "alice.key").write_bytes((tmp_path / "k" / "alice.key").read_bytes())
    target = clients if writable == "dir" else clients / "alice.key"
    target.chmod(0o777 if writable == "dir" else 0o666)
    path = tmp_path / "c.wav"
    sf.write(path, burst_signal(2.0, []), 16000)
    r = kws("--file", path, "--model", burst_model, "--pub", f"tcp://127.0.0.1:{free_port()}",
            "--curve-secret", tmp_path / "k" / "server.key_secret", "--curve-clients", clients)
    assert r.returncode == 2 and "writable by group or others" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_second_instance_cannot_take_an_ipc_endpoint(tmp_path, burst_model):
    path = tmp_path / "c.wav"
    sf.write(path, burst_signal(6.0, []), 16000)
    sock = tmp_path / "kws.ipc"
    first = subprocess.Popen([*CLI, "--file", str(path), "--model", burst_model, "--pub", f"ipc://{sock}",
                              "--realtime", "--quiet"], stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: os.umask(0))
    deadline = time.monotonic() + 20
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0  # owner-only even with umask 000
    r = kws("--file", path, "--model", burst_model, "--pub", f"ipc://{sock}")
    assert r.returncode == 2 and "in use" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert first.poll() is None and sock.exists()
    first.wait(30)
    assert first.returncode == 0 and not sock.exists()  # removed on exit


def test_a_slow_subscriber_gets_every_event_of_a_replay(tmp_path, burst_model):
    """A subscriber slower than the replay, with a small queue, still gets every message,
    and can check its count against `sent` in the finished status."""
    path = tmp_path / "c.wav"
    pulsed_tone_wav(path, 20)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    sub = small_queue_subscriber(ctx, endpoint, 20, b"kws.")
    p = subprocess.Popen([*CLI, "--file", str(path), "--model", burst_model, "--pub", endpoint, "--quiet",
                          "--hop-seconds", "0.05", "--refractory", "0", "--threshold", "0.0", "--drain-seconds", "30"],
                         stderr=subprocess.PIPE, text=True)
    got = []
    try:
        while True:
            if not sub.poll(20000):
                break
            got.append(json.loads(sub.recv_multipart()[1]))
            time.sleep(0.002)  # slower than the replay publishes
            if got[-1].get("state") == "finished":
                break
    finally:
        sub.close(linger=0)
        ctx.term()
    p.wait(60)
    assert p.returncode == 0, p.stderr.read()
    finished = got[-1]
    assert finished["state"] == "finished" and not finished["drain_exhausted"]
    assert finished["sent"] == len(got) - 1 and finished["detections"] > 300
    seqs = [e["seq"] for e in got if e["type"] == "detection"]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_model_with_other_weights_is_refused(tmp_path):
    import onnx
    from onnx import numpy_helper
    good = save_model(tmp_path / "good.onnx", *burst_weights())
    model = onnx.load(good)
    w = model.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).normal(size=numpy_helper.to_array(w).shape)
                                       .astype(np.float32), w.name))
    onnx.save(model, str(tmp_path / "tampered.onnx"))  # metadata intact, weights replaced
    r = kws("--file", DEMO, "--model", tmp_path / "tampered.onnx", "--pub", "none")
    assert r.returncode == 2 and "checksum" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = kws("--file", DEMO, "--model", good, "--pub", "none", "--model-sha256", "0" * 64)
    assert r.returncode == 2 and "pinned" in r.stderr


def test_started_event_names_the_model_checksum(tmp_path, burst_model):
    import hashlib
    path = tmp_path / "c.wav"
    sf.write(path, burst_signal(2.0, []), 16000)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RECONNECT_IVL, 10)  # connects before the bind: retry soon, however loaded the machine
    sub.setsockopt(zmq.SUBSCRIBE, b"kws.status")
    sub.connect(endpoint)
    digest = hashlib.sha256(Path(burst_model).read_bytes()).hexdigest()
    r = kws("--file", path, "--model", burst_model, "--pub", endpoint, "--model-sha256", digest)
    assert r.returncode == 0, r.stderr
    assert sub.poll(5000)
    started = json.loads(sub.recv_multipart()[1])
    sub.close(linger=0)
    ctx.term()
    assert started["state"] == "started" and started["model_sha256"] == digest


def test_a_complete_ogg_file_with_trailing_bytes_is_whole(tmp_path):
    tagged = tmp_path / "tagged.opus"
    tagged.write_bytes(DEMO.read_bytes() + b"TAG" + bytes(125))  # an ID3v1-style tag after the last page
    r = kws("--file", tagged, "--pub", "none")
    assert r.returncode == 0, r.stderr


def test_a_model_pin_holds_in_worker_processes(tmp_path, burst_model):
    """Workers load the very file the parent checked: a model swapped after start is refused."""
    import shutil
    model = tmp_path / "m.onnx"
    shutil.copy(burst_model, model)
    from kws_stream.model import KwsModel, ModelError
    digest = KwsModel(model).sha256
    other = save_model(tmp_path / "other.onnx", *burst_weights(), threshold=0.3)
    shutil.copy(other, model)
    with pytest.raises(ModelError, match="pinned"):
        KwsModel(model, expect_sha256=digest)
