"""RTP in (RFC 3550): many concurrent calls over UDP, each its own stream.

A receiver thread only reads datagrams into a bounded queue (drops are counted), so
capture never waits on scoring. The service's loop parses each packet, finds its stream
by (source address, SSRC), puts it through that stream's jitter buffer (reordering,
duplicates, loss concealed with silence, sequence and timestamp wrap-around), decodes
the payload (PCMU, PCMA, L16, Opus), resamples to 16 kHz and queues the audio on the
stream's Spotter; the windows that fall due in all streams are then scored in one model
call. RTCP (on the port above, or multiplexed) ends a stream on BYE; silence for
--rtp-timeout seconds ends it too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import queue
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .audio import Resampler
from .events import Heartbeat, RtpStats, StreamSummary, error_event, heartbeat_event, stream_end_event, \
    stream_start_event
from .model import KwsModel
from .options import named_twice
from .service import reload_facts, reload_model
from .spotter import Spotter, SpotterConfig, score_together

log = logging.getLogger(__name__)

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
RTCP_TYPES = range(200, 205)  # SR, RR, SDES, BYE, APP (RFC 5761: told apart from RTP by this byte)
RTCP_BYE = 203
QUEUE_PACKETS = 50000  # datagrams waiting for the service loop before the receiver drops
JITTER_PACKETS = 4  # packets held back to reorder; a gap still open after that is concealed
MAX_GAP_SECONDS = 2.0  # a jump in time larger than this is a new talk spurt, not loss to fill
MAX_PACKET_SECONDS = 0.5  # more audio than this in one PCM packet is undecodable (senders send 10-120 ms)
MAX_DROPOUT, MAX_MISORDER = 3000, 100  # RFC 3550 A.1: a sequence number this far off is out of range
DRAIN_BUDGET = (2000, 0.05)  # packets and seconds handled before the loop scores, beats and checks for stop
MAX_WARNED_SENDERS = 1000
# A sender becomes a stream only after two packets close in sequence (within the jitter
# buffer's reach, either order) with a payload type this service decodes (RFC 3550's
# probation, A.1): stray or random datagrams, a quarter of which look like RTP, would
# otherwise each open a stream and fill --max-streams before real calls.
MAX_CANDIDATES = 1000  # senders on probation at once; the longest waiting one makes room
COMFORT_NOISE = 13  # a static payload type that may come first in a call: no warning for it
RECV_BUFFER = 8 * 1024 * 1024


# -- payloads --------------------------------------------------------------------------

def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.float64) / 32768.0


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.float64) / 32768.0


ULAW, ALAW = _ulaw_table(), _alaw_table()


class OpusDecoder:
    """libopus through ctypes (the system library, BSD-licensed), mono at 48 kHz."""
    RATE = 48000
    MAX_FRAME = 5760  # 120 ms at 48 kHz

    def __init__(self):
        name = ctypes.util.find_library("opus")
        if name is None:
            raise RuntimeError("libopus is not installed (apt-get install libopus0)")
        self._lib = ctypes.CDLL(name)
        self._lib.opus_decoder_create.restype = ctypes.c_void_p
        self._lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                                ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int]
        self._lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        err = ctypes.c_int()
        self._dec = self._lib.opus_decoder_create(self.RATE, 1, ctypes.byref(err))
        if err.value != 0 or not self._dec:
            raise RuntimeError(f"opus_decoder_create failed ({err.value})")
        self._out = (ctypes.c_float * self.MAX_FRAME)()

    def decode(self, payload: bytes) -> np.ndarray:
        """One packet's audio."""
        n = self._lib.opus_decode_float(self._dec, payload, len(payload), self._out, self.MAX_FRAME, 0)
        if n < 0:
            raise ValueError(f"Opus packet does not decode (error {n})")
        return np.frombuffer(self._out, dtype=np.float32, count=n).astype(np.float64)

    def conceal(self, samples: int) -> np.ndarray:
        """`samples` of the decoder's loss concealment (in 2.5 ms steps, as libopus asks)."""
        parts, left = [], samples // 120 * 120
        while left > 0:
            n = self._lib.opus_decode_float(self._dec, None, 0, self._out, min(left, self.MAX_FRAME), 0)
            if n <= 0:
                break
            parts.append(np.frombuffer(self._out, dtype=np.float32, count=n).astype(np.float64))
            left -= n
        out = np.concatenate(parts) if parts else np.zeros(0)
        return np.concatenate([out, np.zeros(samples - out.size)]) if out.size < samples else out

    def __del__(self):
        if getattr(self, "_dec", None):
            self._lib.opus_decoder_destroy(self._dec)


@dataclass(frozen=True)
class Codec:
    name: str  # pcmu, pcma, l16, opus
    rate: int  # of the RTP timestamp and of the decoded audio


def parse_opus_spec(text: str) -> None:
    """--rtp-opus value: a dynamic payload type 96..127 (Opus always runs its clock at 48 kHz)."""
    if not text.isdigit() or not 96 <= int(text) <= 127:
        raise ValueError(f"must be a dynamic payload type 96..127, got {text!r}")


def payload_types(l16: list[str], opus: list[str]) -> dict[int, Codec]:
    """PT -> codec: PCMU 0 and PCMA 8 (static, 8 kHz); dynamic ones as given, PT or PT/RATE.
    ValueError when one payload type is given twice."""
    types = {0: Codec("pcmu", 8000), 8: Codec("pcma", 8000)}
    if twice := named_twice(l16, opus):
        raise ValueError(twice)
    for name, specs, rate in (("l16", l16, 8000), ("opus", opus, 48000)):
        for spec in specs:
            pt, _, r = spec.partition("/")
            types[int(pt)] = Codec(name, int(r) if r and name == "l16" else rate)
    return types


def parse_payload_spec(text: str) -> None:
    """--rtp-l16 value: a dynamic payload type 96..127, optionally /RATE."""
    pt, _, rate = text.partition("/")
    if not pt.isdigit() or not 96 <= int(pt) <= 127:
        raise ValueError(f"must be a dynamic payload type 96..127 (optionally /RATE), got {text!r}")
    if rate and (not rate.isdigit() or not 4000 <= int(rate) <= 48000):
        raise ValueError(f"rate must be 4000..48000, got {text!r}")


# -- packets ---------------------------------------------------------------------------

class Malformed(ValueError):
    pass


@dataclass(frozen=True)
class Packet:
    pt: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> Packet:
    """An RTP packet's fields; Malformed names what is wrong."""
    if len(data) < HEADER.size:
        raise Malformed(f"{len(data)} bytes, shorter than an RTP header")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise Malformed(f"RTP version {b0 >> 6}, not 2")
    pos = HEADER.size + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < pos + 4:
            raise Malformed("header extension cut short")
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    end = len(data)
    if b0 & 0x20:  # padding: the last byte says how much
        end -= data[-1] if data[-1] else end
    if pos > end:
        raise Malformed("header longer than the packet")
    return Packet(b1 & 0x7F, seq, ts, ssrc, data[pos:end])


def rtcp_byes(data: bytes) -> list[int]:
    """The SSRCs a compound RTCP packet says goodbye for."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        b0, pt, length = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != RTP_VERSION:
            break
        if pt == RTCP_BYE:
            out += [struct.unpack_from("!I", data, pos + 4 + 4 * i)[0] for i in range(b0 & 0x1F)
                    if pos + 8 + 4 * i <= len(data)]
        pos += 4 * (length + 1)
    return out


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and data[1] in RTCP_TYPES


# -- one call ----------------------------------------------------------------------------

@dataclass
class Stream:
    """One sender's audio: jitter buffer, decoder, resampler and Spotter."""
    name: str
    address: tuple[str, int]
    ssrc: int
    spotter: Spotter
    codec: Codec | None = None
    resample: Resampler | None = None
    opus: OpusDecoder | None = None
    stats: RtpStats = field(default_factory=RtpStats)
    held: dict[int, Packet] = field(default_factory=dict)  # extended seq -> packet, not yet played
    next_seq: int | None = None  # extended sequence number expected next
    next_ts: int | None = None  # RTP timestamp expected next (unwrapped)
    last_seq: int | None = None  # the highest extended seq seen, for wrap-around
    last_arrival: float = 0.0
    unknown_pts: set[int] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)  # sequence numbers of packets not played (other PTs)
    probation: int | None = None  # the last out-of-range sequence number: the next one in line resyncs

    def extend(self, seq: int) -> int:
        """Sequence number unwrapped to a growing integer (RFC 3550 A.1, simplified)."""
        if self.last_seq is None:
            self.last_seq = seq
            return seq
        cycle = self.last_seq & ~0xFFFF
        candidates = (cycle - 0x10000 + seq, cycle + seq, cycle + 0x10000 + seq)
        ext = min(candidates, key=lambda c: abs(c - self.last_seq))
        self.last_seq = max(self.last_seq, ext)
        return ext


class RtpReceiver:
    """A thread reading datagrams from the RTP port and the RTCP port above it into a
    bounded queue; it never blocks on the consumer."""

    def __init__(self, host: str, port: int):
        self.sockets = []
        for p in (port, port + 1):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            try:
                s.bind((host, p))
            except OSError as e:
                for other in self.sockets + [s]:
                    other.close()
                what = "RTP" if p == port else f"RTCP (port {port} + 1)"
                raise OSError(f"cannot listen for {what} on {host}:{p}: {e.strerror}") from None
            s.settimeout(0.2)
            self.sockets.append(s)
        self.port = self.sockets[0].getsockname()[1]
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_PACKETS)
        self.dropped = 0
        self._received = [0, 0]  # per receiving thread, so no count is lost between threads
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(s, i), daemon=True, name=f"rtp-recv-{i}")
                         for i, s in enumerate(self.sockets)]

    @property
    def received(self) -> int:
        return sum(self._received)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, sock: socket.socket, index: int) -> None:
        rtcp_port = index == 1
        while not self._stop.is_set():
            try:
                data, address = sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self._received[index] += 1
            try:
                self.queue.put_nowait((data, address[:2], rtcp_port, time.monotonic()))
            except queue.Full:
                self.dropped += 1

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:
                t.join(timeout=1.0)
        for s in self.sockets:
            s.close()


# -- the service -------------------------------------------------------------------------

class RtpService:
    """Watch every call that arrives as RTP until stopped."""

    def __init__(self, model: KwsModel, config: SpotterConfig, publisher, host: str, port: int,
                 stop: Callable[[], bool], timeout: float = 5.0, max_streams: int = 200,
                 l16: list[str] = (), opus: list[str] = (), status_interval: float = 10.0, notifier=None,
                 model_path: str | None = None, model_sha256: str | None = None):
        self.model, self.config, self.publisher, self.stop = model, config, publisher, stop
        self.model_path, self.model_sha256 = model_path, model_sha256  # read again on SIGHUP (a pin holds)
        self._reload = False
        self.receiver = RtpReceiver(host, port)
        self.timeout, self.max_streams, self.status_interval = timeout, max_streams, status_interval
        self.types = payload_types(list(l16), list(opus))
        if opus:
            OpusDecoder()  # fails now, with one line, if libopus is missing
        self.streams: dict[tuple[str, int, int], Stream] = {}
        self.notifier = notifier
        self.malformed = 0
        self.refused = 0  # senders turned away by --max-streams
        self.refused_packets = 0
        self.ended = 0
        self.audio_ended = 0.0  # audio seconds of the streams that have ended
        self.detections = 0
        self._refused: dict[tuple, float] = {}  # sender -> last packet: refused for the rest of its call
        self._ended: dict[tuple, float] = {}  # sender -> when its stream ended: stragglers are not a new call
        self._candidates: dict[tuple, tuple[Packet, float]] = {}  # sender on probation -> its first packet
        self.ignored_packets = 0  # from senders that never became a stream
        self._malformed_from: set = set()
        self._unknown_from: set = set()

    def request_reload(self, signum=None, frame=None) -> None:
        self._reload = True

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self.request_reload)
        self.receiver.start()
        log.info("listening for RTP on udp port %d (RTCP on %d)", self.receiver.port, self.receiver.port + 1)
        if self.notifier is not None:
            self.notifier.send(f"READY=1\nSTATUS=listening for RTP on port {self.receiver.port}")
        next_status = time.monotonic() + self.status_interval
        try:
            while not self.stop():
                self._drain(wait=0.02)
                self._score()
                now = time.monotonic()
                self._end_idle(now)
                if now >= next_status:
                    self.heartbeat()
                    next_status = now + self.status_interval
                if self._reload:  # every open call goes on with the new model from its next window
                    self._reload = False
                    model = reload_model(self.model, self.model_path, self.model_sha256,
                                         [s.spotter for s in self.streams.values()], self.publisher,
                                         f"rtp:{self.receiver.port}", self.config)
                    if model is not None:
                        self.model = model
                        self.heartbeat("reloaded")
                if self.notifier is not None:
                    self.notifier.watchdog()
        finally:
            if self.notifier is not None:
                self.notifier.send("STOPPING=1")
            self.receiver.close()
            self._drain(wait=0.0)
            for key in list(self.streams):
                self._end(key, "stop")
            self._score()
            self.heartbeat("stopped")
        return 0

    # -- packets in ---------------------------------------------------------------

    def _drain(self, wait: float) -> None:
        """Handle the packets waiting, the first one waited for up to `wait` seconds."""
        q = self.receiver.queue
        try:
            item = q.get(timeout=wait) if wait > 0 else q.get_nowait()
        except queue.Empty:
            return
        budget, deadline = DRAIN_BUDGET[0], time.monotonic() + DRAIN_BUDGET[1]
        while True:
            try:
                self._handle(*item)
            except Exception as e:  # a packet must never end the service: log it once, count it
                self.malformed += 1
                if len(self._malformed_from) < MAX_WARNED_SENDERS and item[1] not in self._malformed_from:
                    self._malformed_from.add(item[1])
                    log.error("rtp: %s:%d: packet not handled (%s: %s); more are counted in the heartbeat", *item[1],
                              type(e).__name__, e)
            budget -= 1
            if budget <= 0 or time.monotonic() > deadline:
                return  # the rest waits: score, beat and look at the stop flag first
            try:
                item = q.get_nowait()
            except queue.Empty:
                return

    def _handle(self, data: bytes, address: tuple[str, int], rtcp_port: bool, arrival: float) -> None:
        if rtcp_port or is_rtcp(data):
            for ssrc in rtcp_byes(data):
                for key in [k for k in self.streams if k[0] == address[0] and k[2] == ssrc]:
                    self._end(key, "bye")
            return
        try:
            packet = parse_rtp(data)
        except Malformed as e:
            self.malformed += 1
            if len(self._malformed_from) < MAX_WARNED_SENDERS and address not in self._malformed_from:
                self._malformed_from.add(address)
                log.warning("rtp: %s:%d: malformed packet (%s); more are counted in the heartbeat", *address, e)
            return
        key = (address[0], address[1], packet.ssrc)
        stream = self.streams.get(key)
        if stream is None:
            if key in self._ended:  # a packet after the BYE, or a straggler of a call that timed out
                return
            if key in self._refused:
                self._refused[key] = arrival
                self.refused_packets += 1
                return
            first = self._on_probation(key, address, packet, arrival)
            if first is None:
                return
            stream = self._open(key, arrival)
            if stream is None:
                self.refused_packets += 1  # the first one, held on probation
                return
            stream.stats.packets += 1
            self._buffer(stream, first)
        stream.last_arrival = arrival
        stream.stats.packets += 1
        self._buffer(stream, packet)

    def _on_probation(self, key: tuple, address: tuple[str, int], packet: Packet, arrival: float) -> Packet | None:
        """A new sender's packet: its first packet once this one lands within JITTER_PACKETS
        of it in sequence, either way, with a payload type the service decodes (the sender is
        then a stream, and the jitter buffer puts the two in order), else None."""
        if packet.pt not in self.types:
            self.ignored_packets += 1
            if packet.pt != COMFORT_NOISE and len(self._unknown_from) < MAX_WARNED_SENDERS \
                    and address not in self._unknown_from:
                self._unknown_from.add(address)
                hint = f" (if it carries audio: --rtp-l16 {packet.pt} or --rtp-opus {packet.pt})" \
                    if 96 <= packet.pt <= 127 else ""
                log.warning("rtp: %s:%d: payload type %d is not configured%s; its packets are counted in the "
                            "heartbeat (ignored_packets) and start no call", *address, packet.pt, hint)
            return None
        earlier = self._candidates.pop(key, None)
        if earlier is not None and 0 < min((packet.seq - earlier[0].seq) & 0xFFFF,
                                           (earlier[0].seq - packet.seq) & 0xFFFF) <= JITTER_PACKETS:
            return earlier[0]  # 1, 3, 2 at a call's start: 1 and 3 open it, 2 fills the gap
        if earlier is not None:
            self.ignored_packets += 1  # the one before, far out of sequence: this one waits instead
        if len(self._candidates) >= MAX_CANDIDATES:
            del self._candidates[next(iter(self._candidates))]  # the longest waiting: dicts keep arrival order
            self.ignored_packets += 1
        self._candidates[key] = (packet, arrival)
        return None

    def _open(self, key: tuple[str, int, int], arrival: float) -> Stream | None:
        name = f"rtp:{key[0]}:{key[1]}/{key[2]}"
        if len(self.streams) >= self.max_streams:
            self.refused += 1
            self.refused_packets += 1
            self._refused[key] = arrival
            message = f"refused: {self.max_streams} streams already (--max-streams); this call is not watched"
            log.error("%s: %s", name, message)
            self.publisher.publish(error_event(name, message))
            return None
        stream = Stream(name, key[:2], key[2], Spotter(self.model, stream=name, config=self.config))
        self.streams[key] = stream
        return stream

    def _buffer(self, s: Stream, p: Packet) -> None:
        codec = self.types.get(p.pt)
        if codec is None or (s.codec is not None and codec != s.codec):
            s.stats.unknown_payload += 1
            s.skipped.add(s.extend(p.seq))  # e.g. comfort noise or DTMF between the audio: not a loss
            if codec is None and p.pt not in s.unknown_pts:  # between the audio: DTMF, comfort noise, ...
                s.unknown_pts.add(p.pt)
                hint = f" (audio on it would need --rtp-l16 {p.pt} or --rtp-opus {p.pt})" if 96 <= p.pt <= 127 else ""
                log.info("%s: payload type %d is not configured%s; its packets are counted (unknown_payload) and "
                         "skipped", s.name, p.pt, hint)
            return
        if s.codec is None:
            s.codec, s.resample = codec, Resampler(codec.rate)
            s.opus = OpusDecoder() if codec.name == "opus" else None
            self.publisher.publish(stream_start_event(s.name, codec.name, codec.rate, p.pt))
        ext = s.extend(p.seq)
        if s.next_seq is not None and not s.next_seq - MAX_MISORDER <= ext <= s.next_seq + MAX_DROPOUT:
            if s.probation is not None and p.seq == (s.probation + 1) & 0xFFFF:
                self._resync(s)  # two in a row: the sender restarted its numbering
                ext = s.extend(p.seq)
            else:
                s.probation = p.seq
                s.stats.duplicates_or_late += 1
                return
        s.probation = None
        if s.next_seq is not None and ext < s.next_seq or ext in s.held:
            s.stats.duplicates_or_late += 1
            return
        if s.held and ext < max(s.held):
            s.stats.reordered += 1
        s.held[ext] = p
        while len(s.held) > JITTER_PACKETS:
            self._play(s, min(s.held))

    def _resync(self, s: Stream) -> None:
        """Play what is held and forget the sequence state; audio time goes on."""
        self._play_held(s)
        s.last_seq = s.next_seq = s.next_ts = s.probation = None
        s.skipped.clear()

    def _play(self, s: Stream, ext: int) -> None:
        """Decode the held packet `ext` and everything missing before it (as silence)."""
        p = s.held.pop(ext)
        if s.next_seq is not None and ext > s.next_seq:
            s.stats.lost += sum(1 for q in range(s.next_seq, ext) if q not in s.skipped)
            gap = (p.timestamp - s.next_ts) & 0xFFFFFFFF  # timestamps wrap at 2^32
            if 0 < gap <= MAX_GAP_SECONDS * s.codec.rate:
                self._queue_audio(s, s.opus.conceal(gap) if s.opus else np.zeros(gap))
        s.skipped = {q for q in s.skipped if q > ext}
        try:
            audio = self._decode(s, p.payload)
        except ValueError as e:  # as if it never came: the next packet's gap conceals it, not counted as lost
            s.stats.undecodable += 1
            log.debug("%s: %s", s.name, e)
            s.skipped.add(ext)
            s.next_seq, s.next_ts = ext, p.timestamp
            return
        self._queue_audio(s, audio)
        s.next_seq = ext + 1
        s.next_ts = (p.timestamp + audio.size) & 0xFFFFFFFF  # decoded samples are timestamp units for all four

    def _decode(self, s: Stream, payload: bytes) -> np.ndarray:
        name = s.codec.name
        width = {"pcmu": 1, "pcma": 1, "l16": 2}.get(name)
        if width is not None and len(payload) // width > MAX_PACKET_SECONDS * s.codec.rate:
            raise ValueError(f"{len(payload) // width} samples in one packet, more than {MAX_PACKET_SECONDS:g} s")
        if name == "pcmu":
            return ULAW[np.frombuffer(payload, dtype=np.uint8)]
        if name == "pcma":
            return ALAW[np.frombuffer(payload, dtype=np.uint8)]
        if name == "l16":
            return np.frombuffer(payload[:len(payload) // 2 * 2], dtype=">i2").astype(np.float64) / 32768.0
        return s.opus.decode(payload)

    def _queue_audio(self, s: Stream, audio: np.ndarray) -> None:
        if audio.size:
            s.spotter.queue(s.resample(audio))

    # -- streams out --------------------------------------------------------------

    def _play_held(self, s: Stream) -> None:
        for ext in sorted(s.held):
            self._play(s, ext)

    def _score(self, spotters=None) -> None:
        """Score the windows waiting in these spotters (default: every stream's) in one call."""
        for _, found in score_together(spotters if spotters is not None else
                                       (s.spotter for s in self.streams.values())):
            for det in found:
                self.detections += 1
                self.publisher.publish(det.event())

    def _end_idle(self, now: float) -> None:
        for memo in (self._refused, self._ended):
            for key in [k for k, t in memo.items() if now - t > self.timeout]:
                del memo[key]
        for key in [k for k, (_, t) in self._candidates.items() if now - t > self.timeout]:
            del self._candidates[key]  # a lone packet: never a call
            self.ignored_packets += 1
        for key, s in list(self.streams.items()):
            if now - s.last_arrival > self.timeout:
                self._end(key, "timeout")
            elif s.held and now - s.last_arrival > 0.1:  # a pause: play what is held
                self._play_held(s)

    def _end(self, key: tuple[str, int, int], reason: str) -> None:
        s = self.streams.pop(key)
        self._ended[key] = time.monotonic()
        self._play_held(s)
        if s.resample is not None:
            tail = s.resample(np.zeros(0), last=True)
            if tail.size:
                s.spotter.queue(tail)
        s.spotter.queue(None)
        self._score([s.spotter])
        sp = s.spotter
        summary = StreamSummary(s.name, sp.audio_seconds, sp.windows, sp.detections,
                                sp.max_score if sp.windows else 0.0, sp.gated, sp.bad_scores)
        self.publisher.publish(stream_end_event(summary, reason=reason, rtp=s.stats))
        self.ended += 1
        self.audio_ended += sp.audio_seconds

    def heartbeat(self, state: str = "running") -> None:
        r = self.receiver
        self.publisher.publish(heartbeat_event(Heartbeat(
            state, f"rtp:{r.port}", "listening",
            self.audio_ended + sum(s.spotter.audio_seconds for s in self.streams.values()),
            self.detections, 0, r.dropped, self.publisher.dropped, self.model.info.name, self.model.info.version,
            rtp={"streams": len(self.streams), "ended": self.ended, "packets": r.received, "malformed": self.malformed,
                 "refused": self.refused, "refused_packets": self.refused_packets,
                 "ignored_packets": self.ignored_packets}, **reload_facts(self.model, self.config, state))))
