"""Calls over RTP (issue 12), sent by real clients this project did not write: ffmpeg
(μ-law, L16, Opus) and GStreamer (A-law). Loss and reordering come from a small UDP
shaper between sender and receiver; malformed packets and wrap-around from crafted ones."""
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
import zmq

import mdwe
from modelkit import read_until

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_positive.opus"
CLIP = ("-ss", "7.5")  # the last 4.4 s of the demo call: the phrase at 2.5-4.4 s

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def free_udp_pair() -> int:
    """A port P with P and P + 1 free for UDP."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port % 2 == 0 and port < 65000:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free UDP port pair")


def free_tcp() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """kws-stream --rtp as a subprocess; its stdout holds every event (--events all)."""

    def __init__(self, port: int, *extra, argv=lambda *args: [sys.executable, "-m", "kws_stream.cli", *args]):
        self.port = port
        self.p = subprocess.Popen(argv("--rtp", f"127.0.0.1:{port}", "--events", "all", "--status-interval", "0.5",
                                       *map(str, extra)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda e: e.get("state") == "running", 30)

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_for(self, test, timeout=40.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if test(e)]
            if found:
                return found
            assert self.p.poll() is None, self.p.stderr.read()
            time.sleep(0.05)
        raise AssertionError(f"not seen within {timeout} s; events: {self.events[-5:]}")

    def stop(self) -> str:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(15)
        self._reader.join(5)
        return self.p.stderr.read()


def ffmpeg_send(port: int, *codec, source=DEMO, clip=CLIP) -> subprocess.Popen:
    return subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", *clip, "-i", str(source), "-ac", "1", *codec,
                             "-rtpflags", "send_bye", "-f", "rtp", f"rtp://127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


ULAW = ("-ar", "8000", "-c:a", "pcm_mulaw")


def ends(service: Service, n: int = 1, timeout: float = 40.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in service.events if e.get("state") == "stream-end"]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def detections(events: list[dict], stream: str | None = None) -> list[dict]:
    return [e for e in events if e["type"] == "detection" and (stream is None or e["stream"] == stream)]


def file_detections(path: Path) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def ulaw_wav(tmp_path_factory) -> Path:
    """The clip after the same G.711 round trip, as a file."""
    path = tmp_path_factory.mktemp("g711") / "clip-ulaw.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", *CLIP, "-i", str(DEMO), "-ac", "1", *ULAW, str(path)], check=True,
                   timeout=60)
    return path


def test_ffmpeg_calls_equal_the_file_and_end_on_bye(ulaw_wav):
    want = file_detections(ulaw_wav)
    assert len(want) == 1
    port = free_udp_pair()
    svc = Service(port)
    try:
        senders = [ffmpeg_send(port, *ULAW) for _ in range(3)]  # three concurrent calls
        for s in senders:
            assert s.wait(60) == 0, s.stderr.read()
        done = ends(svc, 3)
    finally:
        svc.stop()
    assert len(done) == 3 and {e["reason"] for e in done} == {"bye"}
    streams = {e["stream"] for e in done}
    assert len(streams) == 3 and all(s.startswith("rtp:127.0.0.1:") and "/" in s for s in streams)
    for stream in streams:
        (got,) = detections(svc.events, stream)
        assert (got["start"], got["end"]) == (want[0]["start"], want[0]["end"])
        assert got["score"] == pytest.approx(want[0]["score"], abs=1e-4)
    starts = [e for e in svc.events if e.get("state") == "stream-start"]
    assert len(starts) == 3 and all(e["codec"] == "pcmu" and e["rate"] == 8000 for e in starts)


@pytest.mark.skipif(not mdwe.supported(), reason="this kernel has no PR_SET_MDWE")
def test_a_call_is_found_with_write_execute_memory_denied(ulaw_wav):
    """The RTP unit sets MemoryDenyWriteExecute=yes: nothing on its path may need such memory."""
    want = file_detections(ulaw_wav)
    port = free_udp_pair()
    svc = Service(port, argv=mdwe.kws_argv)
    try:
        assert ffmpeg_send(port, *ULAW).wait(60) == 0
        done = ends(svc, 1)
    finally:
        err = svc.stop()
    assert len(done) == 1 and "Traceback" not in err
    (got,) = detections(svc.events)
    assert got["score"] == pytest.approx(want[0]["score"], abs=1e-4)


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="GStreamer is not installed")
def test_gstreamer_alaw_call_is_found_and_ends_by_timeout(tmp_path):
    wav = tmp_path / "clip.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", *CLIP, "-i", str(DEMO), "-ac", "1", "-ar", "16000", str(wav)],
                   check=True, timeout=60)
    port = free_udp_pair()
    svc = Service(port, "--rtp-timeout", "1")
    try:
        r = subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={wav}", "!", "wavparse", "!", "audioconvert",
                            "!", "audioresample", "!", "audio/x-raw,rate=8000,channels=1", "!", "alawenc", "!",
                            "rtppcmapay", "!", "udpsink", "host=127.0.0.1", f"port={port}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (done,) = ends(svc, 1)
    finally:
        svc.stop()
    assert done["reason"] == "timeout" and done["rtp"]["lost"] == 0
    assert [e for e in svc.events if e.get("state") == "stream-start"][0]["codec"] == "pcma"
    assert len(detections(svc.events)) == 1


class Shaper:
    """Forwards UDP from a sender to the service, dropping and swapping packets."""

    def __init__(self, target: int, drop: float, swap: float, seed: int = 1):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port, self.target = self.sock.getsockname()[1], ("127.0.0.1", target)
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rng, self.drop, self.swap = random.Random(seed), drop, swap
        self.dropped = self.swapped = self.seen = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        held = None
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                if held is not None:
                    self.out.sendto(held, self.target)
                    held = None
                continue
            self.seen += 1
            if self.seen > 5 and self.rng.random() < self.drop:
                self.dropped += 1
                continue
            if held is None and self.seen > 5 and self.rng.random() < self.swap:
                held = data  # sent after the next one
                continue
            self.out.sendto(data, self.target)
            if held is not None:
                self.out.sendto(held, self.target)
                self.swapped += 1
                held = None

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()
        self.out.close()


def test_loss_and_reordering_are_concealed_and_counted():
    port = free_udp_pair()
    svc = Service(port, "--rtp-timeout", "1")
    shaper = Shaper(port, drop=0.03, swap=0.08)
    try:
        s = ffmpeg_send(shaper.port, *ULAW, "-payload_type", "0")
        assert s.wait(60) == 0
        (done,) = ends(svc, 1)
    finally:
        shaper.close()
        svc.stop()
    stats = done["rtp"]
    assert shaper.dropped > 0 and shaper.swapped > 0
    # a swapped packet held past the jitter buffer's 0.1 s (a stalled sender) is counted lost, then late
    assert shaper.dropped <= stats["lost"] <= shaper.dropped + stats["duplicates_or_late"]
    assert stats["reordered"] >= shaper.swapped // 2
    assert done["audio_seconds"] == pytest.approx(4.4, abs=0.15)  # losses concealed: audio time keeps its length
    assert len(detections(svc.events)) == 1


def test_the_stream_limit_refuses_new_senders_and_keeps_the_others():
    port = free_udp_pair()
    svc = Service(port, "--max-streams", "2")
    try:
        senders = [ffmpeg_send(port, *ULAW) for _ in range(3)]
        for s in senders:
            s.wait(60)
        ends(svc, 2)
        time.sleep(1.0)
    finally:
        stderr = svc.stop()
    refused = [e for e in svc.events if e["type"] == "error" and "refused" in e["message"]]
    assert len(refused) == 1 and "--max-streams" in refused[0]["message"]
    done = [e for e in svc.events if e.get("state") == "stream-end"]
    assert len(done) == 2 and all(e["reason"] == "bye" for e in done)
    assert {d["stream"] for d in detections(svc.events)} == {e["stream"] for e in done}
    assert "Traceback" not in stderr


def test_random_datagrams_open_no_streams_and_lock_no_call_out(tmp_path, ulaw_wav):
    """A burst of random datagrams (a quarter of them look like RTP, each with its own SSRC)
    before a real call: no stream, no error event, and the call is watched and found even
    with room for only two streams."""
    want = file_detections(ulaw_wav)
    port = free_udp_pair()
    svc = Service(port, "--max-streams", "2", "--rtp-timeout", "1")
    audio = ulaw_bytes(tmp_path)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rng = random.Random(7)
        for _ in range(3000):
            tx.sendto(bytes(rng.getrandbits(8) for _ in range(172)), ("127.0.0.1", port))
        for i, a in enumerate(range(0, len(audio), 160)):
            tx.sendto(rtp_packet(1000 + i, a, 0x5EED, audio[a:a + 160]), ("127.0.0.1", port))
            time.sleep(0.004)
        (done,) = ends(svc, 1)
        beat = svc.wait_for(lambda e: e.get("state") == "running" and e["rtp"]["ended"] == 1, 10)[-1]
    finally:
        tx.close()
        stderr = svc.stop()
    assert svc.p.returncode == 0 and "Traceback" not in stderr
    assert done["stream"].endswith(f"/{0x5EED}") and done["rtp"]["lost"] == 0
    assert not [e for e in svc.events if e["type"] == "error"]
    assert len([e for e in svc.events if e.get("state") == "stream-start"]) == 1
    (got,) = detections(svc.events)
    assert (got["start"], got["end"]) == (want[0]["start"], want[0]["end"])
    assert beat["rtp"]["malformed"] + beat["rtp"]["ignored_packets"] >= 2900  # each counted, none a call
    assert len(stderr.splitlines()) < 10  # warned once per sender address, not per datagram


def rtp_packet(seq, ts, ssrc, payload, pt=0, version=2):
    return struct.pack("!BBHII", version << 6, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def ulaw_bytes(tmp_path) -> bytes:
    raw = tmp_path / "clip.ulaw"
    subprocess.run(["ffmpeg", "-loglevel", "error", *CLIP, "-i", str(DEMO), "-ac", "1", "-ar", "8000", "-f", "mulaw",
                    str(raw)], check=True, timeout=60)
    return raw.read_bytes()


def test_malformed_packets_wraparound_duplicates_and_unknown_payloads(tmp_path, ulaw_wav):
    want = file_detections(ulaw_wav)
    port = free_udp_pair()
    svc = Service(port, "--rtp-timeout", "1")
    audio = ulaw_bytes(tmp_path)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rng = random.Random(3)
        for junk in (b"", b"\x80", b"\x80\x00\x00", bytes(11), rtp_packet(1, 1, 1, b"x", version=1),
                     bytes(rng.getrandbits(8) for _ in range(200)), b"\xb0" + bytes(20)):
            tx.sendto(junk, ("127.0.0.1", port))
        seq0, ts0, ssrc = 65500, 2**32 - 4000, 0xC0FFEE  # both counters wrap inside the call
        for i, a in enumerate(range(0, len(audio), 160)):
            packet = rtp_packet(seq0 + i, ts0 + a, ssrc, audio[a:a + 160])
            tx.sendto(packet, ("127.0.0.1", port))
            if i % 25 == 0:
                tx.sendto(packet, ("127.0.0.1", port))  # a duplicate
            if i == 10:
                tx.sendto(rtp_packet(5, 5, 0xBAD, b"\x00" * 160, pt=96), ("127.0.0.1", port))  # unconfigured PT
            time.sleep(0.004)
        done = [e for e in ends(svc, 2) if e["stream"].endswith(f"/{ssrc}")][0]
        svc.wait_for(lambda e: e.get("state") == "running" and e["rtp"]["malformed"] >= 6, 10)
    finally:
        tx.close()
        stderr = svc.stop()
    assert svc.p.returncode == 0 and "Traceback" not in stderr
    # the first packet's copy came while the sender was on probation (ignored there), the others in the call
    assert done["rtp"]["duplicates_or_late"] == len(range(0, len(range(0, len(audio), 160)), 25)) - 1
    assert done["rtp"]["lost"] == 0
    (got,) = detections(svc.events, done["stream"])
    assert (got["start"], got["end"]) == (want[0]["start"], want[0]["end"])
    # a sender of an unconfigured payload type opens no stream: one warning line, counted in the heartbeat
    assert not [e for e in svc.events if e["type"] == "error"]
    assert not [e for e in svc.events if e.get("stream", "").endswith(f"/{0xBAD}")]
    assert len([line for line in stderr.splitlines() if "payload type 96 is not configured" in line]) == 1
    assert [e for e in svc.events if e.get("state") == "stopped"][0]["rtp"]["ignored_packets"] >= 2
    assert len([ln for ln in stderr.splitlines() if "malformed" in ln]) == 1  # one line per sender, then counted


def test_a_packet_of_absurd_length_is_undecodable_not_seconds_of_audio(tmp_path):
    """Audio time follows the samples played; a 65,000-byte μ-law packet (8 s) amid 20 ms ones is counted
    as undecodable and its 20 ms concealed, not played as 8 s."""
    port = free_udp_pair()
    svc = Service(port, "--rtp-timeout", "1")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(100):
            payload = bytes(65000) if i == 50 else bytes([0xFF]) * 160
            tx.sendto(rtp_packet(i, 160 * i, 0xAB5, payload), ("127.0.0.1", port))
            time.sleep(0.004)
        (done,) = ends(svc, 1)
    finally:
        tx.close()
        stderr = svc.stop()
    assert svc.p.returncode == 0 and "Traceback" not in stderr
    assert done["rtp"]["undecodable"] == 1 and done["rtp"]["lost"] == 0
    assert done["audio_seconds"] == pytest.approx(2.0, abs=0.001)  # its 20 ms concealed, as a lost packet's


@pytest.mark.parametrize("codec,option", [(("-ar", "16000", "-c:a", "pcm_s16be", "-payload_type", "96"),
                                           ("--rtp-l16", "96/16000")),
                                          (("-ar", "48000", "-c:a", "libopus", "-payload_type", "111"),
                                           ("--rtp-opus", "111"))], ids=["l16", "opus"])
def test_dynamic_payloads(codec, option):
    port = free_udp_pair()
    svc = Service(port, *option)
    try:
        s = ffmpeg_send(port, *codec)
        assert s.wait(60) == 0, s.stderr.read()
        (done,) = ends(svc, 1)
    finally:
        svc.stop()
    assert done["reason"] == "bye" and done["rtp"]["unknown_payload"] == 0
    assert len(detections(svc.events)) == 1


def test_rtp_is_loopback_only_unless_allowed():
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--rtp", f"0.0.0.0:{free_udp_pair()}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--allow-remote" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("taken", [0, 1], ids=["rtp", "rtcp"])
def test_a_taken_port_names_which_of_the_pair(taken):
    port = free_udp_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port + taken))
        r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--rtp", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
    what = f"RTCP (port {port} + 1)" if taken else "RTP"
    assert r.returncode == 2 and r.stderr.strip() == (f"kws-stream: error: cannot listen for {what} on "
                                                      f"127.0.0.1:{port + taken}: Address already in use"), r.stderr


def test_two_instances_one_subscriber():
    ports, pubs = [free_udp_pair(), free_udp_pair()], [free_tcp(), free_tcp()]
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RECONNECT_IVL, 10)  # connects before the bind: retry soon, however loaded the machine
    sub.setsockopt(zmq.SUBSCRIBE, b"kws.detection")
    for p in pubs:
        sub.connect(f"tcp://127.0.0.1:{p}")
    services = [Service(port, "--pub", f"tcp://127.0.0.1:{pub}") for port, pub in zip(ports, pubs)]
    try:
        senders = [ffmpeg_send(port, *ULAW) for port in ports]
        for s in senders:
            assert s.wait(60) == 0
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            if sub.poll(200):
                got.append(json.loads(sub.recv_multipart()[1]))
    finally:
        for svc in services:
            svc.stop()
        sub.close(0)
    assert len(got) == 2 and len({e["stream"] for e in got}) == 2


def test_rtp_from_the_config_file(tmp_path):
    port = free_udp_pair()
    config = tmp_path / "config.toml"
    config.write_text(f'rtp = "127.0.0.1:{port}"\nrtp_timeout = 1.0\nmax_streams = 10\nrtp_l16 = ["96"]\n'
                      'pub = "none"\nevents = "all"\n')
    p = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--config", str(config)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        read_until(p.stderr, lambda line: f"listening for RTP on udp port {port}" in line)
        s = ffmpeg_send(port, *ULAW)
        assert s.wait(60) == 0
        seen = read_until(p.stdout, lambda line: '"stream-end"' in line)  # after 1 s without packets
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert len([line for line in seen if '"detection"' in line]) == 1


def test_sequence_resets_strays_comfort_noise_and_odd_opus_gaps_are_survived():
    """Packets fed straight to the service's handler: a sender that restarts its numbering is
    followed after two packets in a row, a stray far-ahead packet is ignored, comfort-noise
    packets between the audio are not losses, and an Opus gap of any length is concealed."""
    from kws_stream import KwsModel
    from kws_stream.events import NullPublisher
    from kws_stream.rtp import RtpService
    from kws_stream.spotter import SpotterConfig
    svc = RtpService(KwsModel(), SpotterConfig(), NullPublisher(), "127.0.0.1", free_udp_pair(), lambda: True,
                     opus=["111"])
    now = time.monotonic()

    def feed(port, ssrc, seqs, ts_of, pt=0, payload=b"\xff" * 160):
        for seq in seqs:
            svc._handle(rtp_packet(seq, ts_of(seq), ssrc, payload, pt=pt), ("127.0.0.1", port), False, now)
        return svc.streams.get(("127.0.0.1", port, ssrc))  # none yet after a new sender's first packet

    try:
        feed(5, 5, [7, 6], lambda q: q * 160)  # a new sender's first two packets swapped: both played, in order
        s = feed(5, 5, range(8, 20), lambda q: q * 160)
        assert s.stats.reordered == 1 and s.stats.lost == 0 and s.stats.packets == 14
        feed(6, 6, [1, 3], lambda q: q * 160)  # 1, 3, 2: the first two open the call, the third fills the gap
        s = feed(6, 6, [2, *range(4, 12)], lambda q: q * 160)
        assert s.stats.lost == 0 and s.stats.duplicates_or_late == 0 and s.stats.packets == 11
        assert s.stats.reordered == 1 and svc.ignored_packets == 0
        feed(7, 7, [40, 50], lambda q: q * 160)  # too far apart: the first is dropped, the second waits
        assert ("127.0.0.1", 7, 7) not in svc.streams and svc.ignored_packets == 1
        assert feed(7, 7, [51], lambda q: q * 160).stats.packets == 2  # 50 and 51 open it
        for port, first in ((8, [65534, 1]), (9, [1, 65534])):  # close across the wrap, either order
            feed(port, port, first, lambda q: q * 160)
            s = feed(port, port, [65535, 0, *range(2, 10)], lambda q: q * 160)
            assert s.stats.lost == 0 and s.stats.duplicates_or_late == 0 and s.stats.packets == 12
        feed(1, 1, range(30000, 30010), lambda q: q * 160)
        s = feed(1, 1, range(100, 600), lambda q: (q + 40000) * 160)  # numbering restarted
        assert s.stats.duplicates_or_late == 1 and s.spotter.audio_seconds > 9.9
        for i in range(520):
            feed(2, 2, [i], lambda q: q * 160)
            if i == 50:
                feed(2, 2, [20000], lambda q: 0)  # a stray
        s = svc.streams[("127.0.0.1", 2, 2)]
        assert s.stats.lost == 0 and s.stats.duplicates_or_late == 1 and s.spotter.audio_seconds > 10.2
        for i in range(300):
            comfort = i % 10 == 5
            feed(3, 3, [i], lambda q: q * 160, pt=13 if comfort else 0, payload=b"\x40" if comfort else b"\xff" * 160)
        assert svc.streams[("127.0.0.1", 3, 3)].stats.lost == 0
        silence = b"\xf8\xff\xfe"  # an Opus frame of silence
        feed(4, 4, range(3), lambda q: q * 960, pt=111, payload=silence)
        s = feed(4, 4, range(4, 12), lambda q: q * 960 + 1001, pt=111, payload=silence)  # one lost, an odd gap
        assert s.stats.lost == 1 and s.stats.undecodable == 0
    finally:
        svc.receiver.close()


def test_sighup_reloads_the_model_under_every_open_call(tmp_path):
    """A call goes on across a reload: a bad file keeps the running model (one error event),
    a good one scores the call's later windows (its detections carry the new model's name)."""
    from modelkit import burst_signal, save_model
    model = Path(save_model(tmp_path / "m.onnx"))
    wav = tmp_path / "call.wav"
    sf.write(wav, burst_signal(12.0, [2.05, 9.05]), 16000)
    port = free_udp_pair()
    svc = Service(port, "--model", model, "--rtp-timeout", "1")
    try:
        sender = ffmpeg_send(port, *ULAW, source=wav, clip=())
        svc.wait_for(lambda e: e["type"] == "detection", 20)
        model.write_bytes(b"broken")
        svc.p.send_signal(signal.SIGHUP)
        svc.wait_for(lambda e: e["type"] == "error" and "reload kept the running model" in e["message"], 10)
        save_model(model, name="reloaded", version="2")
        svc.p.send_signal(signal.SIGHUP)
        (beat,) = svc.wait_for(lambda e: e.get("state") == "reloaded" and e["model"] == "reloaded", 10)
        assert beat["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest() and beat["gate_margin_db"] == 0
        assert sender.wait(60) == 0
        (done,) = ends(svc, 1)
    finally:
        stderr = svc.stop()
    assert svc.p.returncode == 0 and "Traceback" not in stderr
    found = detections(svc.events, done["stream"])
    assert [d["model"]["name"] for d in found] == ["test-burst", "reloaded"], found
