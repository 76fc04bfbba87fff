"""The live daemon on a real PortAudio device: a PulseAudio null sink, played into with
paplay and captured from its monitor, with real `kws-stream listen` subscribers."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

import mdwe
from modelkit import burst_signal, save_model
from pulse import Pulse

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "kws-stream.service"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pulse(tmp_path):
    p = Pulse(tmp_path / "rt")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def burst_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "burst.wav"
    sf.write(path, burst_signal(5.0, [1.55]), 16000)
    return path


class Proc:
    """A subprocess whose stdout/stderr lines are read with a deadline."""

    def __init__(self, args, env, argv=lambda *args: [sys.executable, "-m", "kws_stream.cli", *args], **kw):
        self.p = subprocess.Popen(argv(*map(str, args)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        os.set_blocking(self.p.stdout.fileno(), False)
        os.set_blocking(self.p.stderr.fileno(), False)
        self.out, self.err = "", ""

    def _pump(self):
        for name in ("out", "err"):
            pipe = getattr(self.p, "std" + name)
            while True:
                try:
                    chunk = os.read(pipe.fileno(), 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

    def wait_for(self, pattern, stream="err", timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pump()
            m = re.search(pattern, getattr(self, stream))
            if m:
                return m
            if self.p.poll() is not None:
                self._pump()
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in {stream} within {timeout} s; out={self.out[-800:]} err={self.err[-800:]}")

    def events(self):
        self._pump()
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(timeout)
        self._pump()
        return self.p.returncode


def daemon(model, env, endpoint, *extra):
    return Proc(["--device", "pulse", "--model", model, "--pub", endpoint, "--hop-seconds", "0.1",
                 "--status-interval", "1", *extra], env)


def listener(env, endpoint, *extra):
    return Proc(["listen", "--connect", endpoint, *extra], env)


def test_live_detection_reaches_a_listener(pulse, burst_model, burst_wav):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = listener(pulse.env, endpoint, "--topic", "kws.detection", "--count", "1")
    d = daemon(burst_model, pulse.env, endpoint)
    try:
        d.wait_for("capturing from pulse")
        pulse.play(burst_wav)
        sub.p.wait(20)
        (event,) = sub.events()
        assert event["type"] == "detection" and event["stream"] == "device:pulse" and event["score"] >= 0.5
        assert event in d.events()  # the daemon prints what it publishes
    finally:
        d.stop()
        sub.stop()


def test_capture_keeps_only_the_alsa_plugin_it_reads_through(pulse, burst_model):
    """PortAudio's device scan loads every ALSA PCM plugin; the daemon lets ALSA drop them."""
    plugins = sorted(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_*.so"))
    if len(plugins) < 2:
        pytest.skip("no ALSA plugins besides pulse on this machine")
    d = daemon(burst_model, pulse.env, "none")
    try:
        d.wait_for("capturing from pulse")
        maps = Path(f"/proc/{d.p.pid}/maps").read_text()
        loaded = set(re.findall(r"libasound_module_pcm_(\w+)\.so", maps))
        assert loaded == {"pulse"}, loaded
        assert "libavcodec" not in maps  # a52's, the largest
    finally:
        d.stop()


def test_sigterm_exits_cleanly_within_a_second(pulse, burst_model):
    endpoint = f"ipc://{pulse.env['XDG_RUNTIME_DIR']}/kws.sock"
    sub = listener(pulse.env, endpoint, "--topic", "kws.status")
    d = daemon(burst_model, pulse.env, endpoint)
    try:
        d.wait_for("capturing from pulse")
        sub.wait_for('"state": "running"', stream="out")
        began = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - began < 1.0 + 0.5  # + the interpreter's exit on a loaded machine
        last = sub.wait_for('"state": "stopped"[^\\n]*', stream="out", timeout=5)  # sent before close
        assert '"device_state": "closed"' in last.group(0)
        beat = next(e for e in sub.events() if e.get("state") == "stopped")  # the live input's counts so far
        assert beat["windows"] >= beat["gated"] >= 0 and beat["bad_scores"] == 0
        assert "Traceback" not in d.err
    finally:
        d.stop()
        sub.stop()


def test_device_failure_is_survived(pulse, burst_model, burst_wav):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = listener(pulse.env, endpoint)
    d = daemon(burst_model, pulse.env, endpoint)
    try:
        d.wait_for("capturing from pulse")
        pulse.stop()
        sub.wait_for('"type": "error"', stream="out", timeout=15)
        beat = sub.wait_for('"device_state": "failed"[^\\n]*', stream="out", timeout=15)  # heartbeats go on
        assert '"error": ' in beat.group(0)
        time.sleep(4.0)  # reopens at 0.5, 1 and 2 s more, each failing as the one before: said once
        d.wait_for("$", timeout=1), sub.wait_for("$", stream="out", timeout=1)  # (read what has come)
        said = [ln for ln in d.err.splitlines() if ln.startswith("kws-stream: error:")]
        assert 1 <= len(said) <= 2 and len(said) == sub.out.count('"type": "error"'), said  # stalled; cannot open
        pulse.start()
        d.wait_for("capturing from pulse(.|\n)*capturing from pulse", timeout=30)
        pulse.play(burst_wav)
        sub.wait_for('"type": "detection"', stream="out", timeout=20)
        before = sub.out.count('"type": "error"')
        pulse.stop()  # the same failure again after audio came back: news again
        sub.wait_for('"type": "error"(.|\n)*' * (before + 1), stream="out", timeout=15)
        assert d.p.poll() is None and "Traceback" not in d.err
    finally:
        d.stop()
        sub.stop()


def test_sighup_with_a_broken_model_keeps_the_old_one(pulse, burst_model, burst_wav, tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(burst_model, model)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = listener(pulse.env, endpoint)
    d = daemon(model, pulse.env, endpoint)
    try:
        d.wait_for("capturing from pulse")
        sub.wait_for('"state": "running"', stream="out", timeout=10)  # the listener is subscribed
        model.write_bytes(b"broken")
        d.p.send_signal(signal.SIGHUP)
        sub.wait_for("reload kept the running model", stream="out", timeout=10)
        pulse.play(burst_wav)
        sub.wait_for('"type": "detection"', stream="out", timeout=20)
        save_model(model, name="reloaded", version="2")
        d.p.send_signal(signal.SIGHUP)
        sub.wait_for('"state": "reloaded".*"model": "reloaded"', stream="out", timeout=10)
    finally:
        d.stop()
        sub.stop()


def test_sd_notify_ready_watchdog_stopping(pulse, burst_model, tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(15)
        env = dict(pulse.env, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        d = daemon(burst_model, env, "none")
        try:
            seen = set()
            while not {"READY=1", "WATCHDOG=1"} <= seen:
                seen |= set(s.recv(4096).decode().splitlines())
            d.p.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in seen:
                seen |= set(s.recv(4096).decode().splitlines())
            assert d.stop() == 0
        finally:
            d.stop()


@pytest.mark.parametrize("unit_file", [UNIT, UNIT.with_name("kws-stream-rtp.service")], ids=["device", "rtp"])
def test_systemd_unit_verifies_and_is_hardened(tmp_path, unit_file):
    exe = shutil.which("kws-stream", path=str(Path(sys.executable).parent)) or shutil.which("kws-stream")
    assert exe, "the kws-stream console script is not installed (pip install the package)"
    unit = tmp_path / unit_file.name
    unit.write_text(unit_file.read_text().replace("/usr/local/bin/kws-stream", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_file)], capture_output=True,
                       text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert exposure <= 2.5, r.stdout[-2000:]
    text = unit_file.read_text()
    needed = ["Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "RestartPreventExitStatus=2"]
    for line in needed + (["SupplementaryGroups=audio"] if unit_file == UNIT else []):
        assert line in text
    assert "\nMemoryDenyWriteExecute=yes" in text  # the next test runs the live daemon so


@pytest.mark.skipif(not mdwe.supported(), reason="this kernel has no PR_SET_MDWE")
def test_live_capture_works_with_write_execute_memory_denied(pulse, burst_model, burst_wav):
    """The unit's MemoryDenyWriteExecute=yes: capture takes no PortAudio callback (a cffi
    trampoline is such memory), so the daemon captures and detects under the same denial."""
    d = Proc(["--device", "pulse", "--model", burst_model, "--pub", "none", "--hop-seconds", "0.1"], pulse.env,
             argv=mdwe.kws_argv)
    try:
        d.wait_for("capturing from pulse")
        pulse.play(burst_wav)
        d.wait_for('"type": "detection"', stream="out", timeout=20)
        assert d.p.poll() is None and "Traceback" not in d.err
    finally:
        assert d.stop() == 0


def test_capture_delivers_steady_200_ms_blocks_from_a_deep_device_buffer(pulse, burst_wav, monkeypatch):
    """MicSource asks PortAudio for a buffer of three 200 ms blocks (a shallow buffer makes
    ALSA's PulseAudio plugin poll), and blocks still arrive every 200 ms, none lost."""
    from kws_stream.mic import BLOCK_SECONDS, BUFFER_SECONDS, MicSource
    for key, value in pulse.env.items():
        monkeypatch.setenv(key, value)
    player = subprocess.Popen(["paplay", "--device=kws", str(burst_wav)], env=pulse.env)
    source = MicSource("pulse")
    try:
        source.open()
        latency = source._stream.latency
        blocks, arrivals = [], []
        while len(blocks) < 12:
            block = source.read(timeout=1.0)
            if block is not None:
                blocks.append(block)
                arrivals.append(time.monotonic())
    finally:
        source.close()
        player.kill()
        player.wait()
    assert latency >= BUFFER_SECONDS - 0.05
    assert {b.size for b in blocks} == {int(source.rate * BLOCK_SECONDS)} and source.overflows == 0
    span = arrivals[-1] - arrivals[2]  # the first blocks may come together as the device starts
    assert span / 9 == pytest.approx(BLOCK_SECONDS, abs=0.05)
    assert max(b - a for a, b in zip(arrivals[2:], arrivals[3:])) <= BUFFER_SECONDS + 0.2


def test_a_just_opened_device_has_longer_for_its_first_block(monkeypatch):
    """Silence longer than the stall limit right after opening is the device starting, not
    a device gone; once audio has flowed, the same silence (counted from when the device
    last delivered, not from when the worker read it) is a stopped device."""
    import threading

    import numpy as np

    from kws_stream import mic
    monkeypatch.setattr(mic, "FIRST_AUDIO_SECONDS", 2.0)
    monkeypatch.setattr(mic, "STALL_SECONDS", 0.2)
    class OneBlock:  # as if opened: one block, then nothing; only the queue and the clock matter here
        active, blocksize, left = True, 3200, 1

        @property
        def read_available(self):
            return self.blocksize * self.left

        def read(self, frames):
            self.left -= 1
            return np.zeros((frames, 1), dtype=np.float32), False

    source = mic.MicSource("fake")
    source._stream = stream = OneBlock()
    time.sleep(0.5)
    assert source.read(timeout=0.05) is None  # 0.55 s without a block, within the first-block allowance
    source._start_reader(stream, RuntimeError)  # it takes the block at once
    reader = source._reader
    try:
        time.sleep(0.4)  # the device delivers nothing more; the worker reads the block late
        assert source.read(timeout=0.05).size == 3200 and stream.left == 0
        with pytest.raises(mic.DeviceError, match="no audio for 0.2 s"):  # 0.4 s since the device last delivered
            source.read(timeout=0.05)
    finally:
        source._stopping.set()
        reader.join(5)
    assert not reader.is_alive()


def test_a_reader_that_fails_is_reported_at_once_and_an_overflow_is_counted(monkeypatch):
    """Whatever ends the reader thread reaches the daemon's next read with its reason, not
    after the stall limit; PortAudio's input-overflow error (ALSA, on a second xrun) is an
    overflow, counted, and capture goes on."""
    import threading

    import numpy as np

    from kws_stream import mic

    class Failing:
        active, blocksize, samplerate = True, 3200, 16000

        def __init__(self, errors):
            self.errors = list(errors)

        @property
        def read_available(self):
            return self.blocksize

        def read(self, frames):
            if self.errors:
                raise self.errors.pop(0)
            return np.zeros((frames, 1), dtype=np.float32), False

    class PortAudioError(Exception):  # as sounddevice's: (text, code), printed with its code
        def __str__(self):
            return f"{self.args[0]} [PaErrorCode {self.args[1]}]"

    source = mic.MicSource("fake")
    source._stream = stream = Failing([PortAudioError("Input overflowed", mic.PA_INPUT_OVERFLOWED),
                                       PortAudioError("Unanticipated host error", -9999)])
    began = time.monotonic()
    source._start_reader(stream, PortAudioError)
    reader = source._reader
    reader.join(5)
    with pytest.raises(mic.DeviceError, match="fake: capture ended .Unanticipated host error"):
        source.read(timeout=0.05)
    assert time.monotonic() - began < 1.0 and source.overflows == 1 and not reader.is_alive()


def test_close_leaves_a_reader_whose_read_never_returns_behind(monkeypatch, caplog):
    """A PortAudio read that never returns cannot hang the daemon's stop or reopen: close()
    waits READER_STOP_SECONDS, says so, and leaves that reader its stream (closing a stream
    inside a read is not safe). When the read does return, late, the old reader closes its
    own stream and touches nothing of the next stream's: its block, its overflow, its
    error and its clock go nowhere."""
    import threading

    import numpy as np

    from kws_stream import mic
    monkeypatch.setattr(mic, "READER_STOP_SECONDS", 0.3)

    class Stream:
        active, blocksize = True, 3200

        def __init__(self, hang: bool):
            self.hang, self.closed, self.reads = hang, False, 0
            self.release, self.reading = threading.Event(), threading.Event()

        @property
        def read_available(self):
            return self.blocksize if self.hang or self.reads == 0 else 0

        def read(self, frames):
            self.reads += 1
            self.reading.set()
            if self.hang:
                self.release.wait(10)
            return np.ones((frames, 1), dtype=np.float32), True  # a block, and an overflow

        def abort(self):
            self.closed = True

        close = abort

    source = mic.MicSource("fake")
    source._stream = hung = Stream(hang=True)
    source._start_reader(hung, RuntimeError)
    old = source._reader
    assert hung.reading.wait(5)
    began = time.monotonic()
    source.close()
    assert time.monotonic() - began < 0.3 + 0.5 and old.is_alive() and not hung.closed
    assert source._stream is None and "did not stop within 0.3 s" in caplog.text
    source._stream = fresh = Stream(hang=False)  # the daemon opens the device again
    source._start_reader(fresh, RuntimeError)
    assert source.read(timeout=5).size == 3200 and source.overflows == 1  # the new stream's block
    heard = source._last_audio
    hung.release.set()  # the old read returns at last
    old.join(5)
    assert not old.is_alive() and hung.closed and not fresh.closed
    assert source.read(timeout=0.3) is None and source.overflows == 1 and source._last_audio == heard
    assert source._failure is None
    source.close()
    assert fresh.closed and not source._reader


def test_list_devices_shows_the_pulse_input(pulse):
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--list-devices"], env=pulse.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "pulse" in r.stdout, r.stderr


@pytest.mark.parametrize("device, reason", [
    ("no-such-device", "no-such-device: no input device's name matches 'no-such-device'"),
    ("97", "97: no input device has index 97"),
    (" ", "--device: an empty name"),
    ("ALSA", "ALSA: matches several input devices ("),  # pulse and default, both ALSA PCMs
])
def test_a_device_that_matches_nothing_or_several_is_a_usage_error(pulse, burst_model, device, reason):
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--device", device, "--model", burst_model,
                        "--pub", "none", "--events", "all"], env=pulse.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"kws-stream: error: {reason}"), line
    assert r.stdout == ""  # no `started` event for a daemon that never starts


def test_part_of_a_name_opens_the_device_it_names_and_says_which(pulse, burst_model):
    d = daemon(burst_model, pulse.env, "none", "--device", "puls")
    try:
        d.wait_for("capturing from puls at [0-9]+ Hz .the device 'pulse'.")
    finally:
        d.stop()


def test_under_systemd_a_device_missing_at_start_is_waited_for(pulse, burst_model, tmp_path):
    """A sound server that comes up after the service must not leave it dead (exit 2 is not
    restarted): under systemd the daemon starts, says the device failed, and keeps trying."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(15)
        env = dict(pulse.env, NOTIFY_SOCKET=str(path))
        d = Proc(["--device", "no-such-device", "--model", burst_model, "--pub", "none", "--events", "all",
                  "--status-interval", "0.5"], env)
        try:
            seen = set()
            while "READY=1" not in seen:
                seen |= set(s.recv(4096).decode().splitlines())
            d.wait_for('"device_state": "failed"', stream="out", timeout=15)
            assert d.p.poll() is None
            assert d.stop() == 0
        finally:
            d.stop()
    assert "retrying until it appears" in d.err and "Traceback" not in d.err


def test_listing_no_devices_says_so():
    """No sound card and no sound server (this test's environment has no PulseAudio
    server unless a test starts its own): a sentence, not an empty line."""
    env = dict(os.environ, PULSE_SERVER="unix:/nonexistent")
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--list-devices"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = r.stdout.strip()  # here (no card): the sentence; a machine with a card or ALSA device lists it
    assert out == "no audio devices (PortAudio finds none)" or any(api in out for api in ("ALSA", "JACK", "OSS")), out


@pytest.mark.parametrize("systemd", [False, True], ids=["shell", "systemd"])
def test_without_the_audio_backend_live_mode_is_a_usage_error(tmp_path, burst_model, systemd):
    """As without the mic extra: sounddevice cannot be imported. Under systemd too: no
    package installs itself, so this is never waited for."""
    (tmp_path / "sounddevice.py").write_text("raise ImportError('No module named sounddevice')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **({"NOTIFY_SOCKET": str(tmp_path / "n.sock")} if systemd else {}))
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--model", burst_model, "--pub", "none"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "sounddevice" in line and "kws-stream[mic]" in line
