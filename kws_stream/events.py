"""Events: their format, and their way out over ZeroMQ.

This module owns the wire format. Every event is built here, from a typed record the
core returns (a Detection, a stream's summary, a heartbeat, a replay's totals), and goes
out as multipart [topic, json] on a PUB socket. Topics are `kws.detection`, `kws.status`
and `kws.error`; every payload carries `"schema": 1`, `"type"` and `"time"` (UTC, when
the event was built). Publishing never blocks the audio path: the socket has a bounded
high-water mark, sends are non-blocking, and what cannot be queued is counted.

The endpoint policy lives here too: which endpoints are well formed, and that only
loopback and ipc are bound unless remote subscribers are asked for.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import time
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

import zmq

if TYPE_CHECKING:
    from .spotter import Detection

log = logging.getLogger(__name__)

EVENT_SCHEMA = 1

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
TOPIC_PREFIX = "kws."
TOPICS = tuple(TOPIC_PREFIX + kind for kind in ("detection", "status", "error"))  # one per event type
SEND_HWM = 10000  # messages queued per subscriber before ZeroMQ drops for that subscriber
JOIN_SECONDS = 0.3  # how long a new publisher waits for already-connecting subscribers
LINGER_MS = 1000  # how long close() may take to deliver what is still queued (at least)
DRAIN_POLL_SECONDS = 0.002  # how often a draining publish() retries


class PublishError(Exception):
    """The endpoint cannot be bound (bad address, port in use, no permission)."""


# -- the records events are built from ------------------------------------------------

@dataclass(frozen=True)
class StreamSummary:
    """A stream that ended: a replayed file."""
    stream: str
    audio_seconds: float
    windows: int
    detections: int
    max_score: float
    gated: int = 0  # of the windows, those the speech gate left unscored
    bad_scores: int = 0  # of the windows, those the model gave no probability (counted as 0)


@dataclass
class RtpStats:
    """What an RTP stream's packets were like; counted as they arrive."""
    packets: int = 0
    lost: int = 0  # never arrived (concealed with silence)
    reordered: int = 0  # arrived after a later one, put back in order
    duplicates_or_late: int = 0  # a copy, or too late to be played
    unknown_payload: int = 0  # a payload type that is not configured
    undecodable: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """The live daemon's state, every --status-interval seconds and on changes."""
    state: str  # running, capturing, reloaded, stopped
    stream: str
    device_state: str  # open, failed, closed; listening for RTP
    audio_seconds: float
    detections: int
    overflows: int
    queue_drops: int
    dropped: int
    model: str
    model_version: str
    error: str | None = None  # while the device is failing: why
    rtp: dict | None = None  # the RTP source's counters: streams, ended, packets, malformed, refused,
    # refused_packets, ignored_packets
    windows: int | None = None  # the live input's windows so far (not for RTP: see each call's stream-end)
    gated: int | None = None  # of them, those the speech gate left unscored
    bad_scores: int | None = None  # and those the model gave no probability (counted as 0)
    model_sha256: str | None = None  # with state reloaded: the model now running,
    gate_margin_db: float | None = None  # and the speech gate's margin in force


@dataclass(frozen=True)
class ReplayTotals:
    """A whole replay, after its last file (or a stop)."""
    files: int
    audio_seconds: float
    detections: int
    failed: int
    dropped: int
    sent: int
    drain_exhausted: bool
    interrupted: bool


# -- the events ----------------------------------------------------------------------

def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(kind: str, **fields) -> dict:
    return {"schema": EVENT_SCHEMA, "type": kind, **fields, "time": utc_now()}


def detection_event(d: Detection) -> dict:
    return {"schema": EVENT_SCHEMA, "type": "detection", "stream": d.stream, "label": d.label,
            "score": round(d.score, 6), "threshold": round(d.threshold, 6), "start": round(d.start, 3),
            "end": round(d.end, 3), "time": utc_now(), "seq": d.seq,
            "model": {"name": d.model, "version": d.model_version}}


def started_event(model: str, model_version: str, model_sha256: str, endpoint: str,
                  gate_margin_db: float = 0.0) -> dict:
    return _event("status", state="started", model=model, model_version=model_version, model_sha256=model_sha256,
                  endpoint=endpoint, gate_margin_db=gate_margin_db)


def stream_start_event(stream: str, codec: str, rate: int, payload_type: int) -> dict:
    return _event("status", state="stream-start", stream=stream, codec=codec, rate=rate, payload_type=payload_type)


def stream_end_event(s: StreamSummary, reason: str | None = None, rtp: RtpStats | None = None) -> dict:
    extra = {} if reason is None else {"reason": reason}
    if rtp is not None:
        extra["rtp"] = asdict(rtp)
    return _event("status", state="stream-end", stream=s.stream, audio_seconds=round(s.audio_seconds, 3),
                  windows=s.windows, gated=s.gated, bad_scores=s.bad_scores, detections=s.detections,
                  max_score=round(s.max_score, 6), **extra)


HEARTBEAT_OPTIONAL = {f.name for f in dataclass_fields(Heartbeat) if f.default is None}  # left out while None


def heartbeat_event(h: Heartbeat) -> dict:
    fields = {k: v for k, v in asdict(h).items() if k not in HEARTBEAT_OPTIONAL or v is not None}
    fields["audio_seconds"] = round(h.audio_seconds, 3)
    return _event("status", **fields)


def finished_event(t: ReplayTotals) -> dict:
    fields = asdict(t)
    fields["audio_seconds"] = round(t.audio_seconds, 3)
    return _event("status", state="finished", **fields)


def error_event(stream: str, message: str) -> dict:
    return _event("error", stream=stream, message=message)


# -- publishing ----------------------------------------------------------------------

def check_endpoint_syntax(endpoint: str) -> None:
    """tcp://HOST:PORT with PORT 1..65535 (or * for any), ipc://PATH, or none."""
    if endpoint == "none" or endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    if not endpoint.startswith("tcp://"):
        raise PublishError(f"{endpoint}: must be tcp://HOST:PORT, ipc://PATH or none")
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not host or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
        raise PublishError(f"{endpoint}: must have a port 1..65535 or *")


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Bind only to loopback or ipc unless remote subscribers are asked for explicitly."""
    if not endpoint.startswith("tcp://") or allow_remote:
        return
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if not is_loopback(host):
        raise PublishError(f"{endpoint} is not a loopback address; add --allow-remote to publish on it")


def open_publisher(endpoint: str, allow_remote: bool = False, curve=None, drain_seconds: float = 0.0):
    """The publisher for an endpoint: 'none' publishes nothing."""
    if endpoint == "none":
        return NullPublisher()
    check_endpoint(endpoint, allow_remote)
    if curve is None:
        return Publisher(endpoint, drain_seconds=drain_seconds)
    return Publisher(endpoint, configure=curve.configure, context=curve.context, drain_seconds=drain_seconds)


class Publisher:
    """A bound XPUB socket. An XPUB sees subscriptions arrive, which lets a replay wait
    until subscribers that were already connecting have joined (the slow-joiner problem)."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, hwm: int = SEND_HWM, join_seconds: float = JOIN_SECONDS,
                 context: zmq.Context | None = None, configure: Callable[[zmq.Socket], None] | None = None,
                 drain_seconds: float = 0.0):
        self.endpoint = endpoint
        self.dropped = 0
        self.sent = 0
        self.subscriptions = 0
        # drain_seconds > 0 (file replay): a full subscriber queue makes publish() wait, up to
        # this much in all, instead of ZeroMQ dropping for that subscriber unseen; once spent,
        # slow subscribers lose messages again, and `drain_exhausted` says so.
        self._drain_left = drain_seconds
        self.drain_exhausted = False
        self._linger_ms = max(LINGER_MS, int(drain_seconds * 1000))
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, self._linger_ms)
        if drain_seconds > 0:
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber's subscription
        if configure is not None:
            configure(self._sock)  # e.g. CURVE server keys, set before bind
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        self._ipc_path = path if path and path != "*" and not path.startswith("@") else None  # a file we own
        try:
            if self._ipc_path:
                claim_ipc_path(self._ipc_path)
            old_umask = os.umask(0o077) if self._ipc_path else None  # the socket file: owner-only
            try:
                self._sock.bind(endpoint)
            finally:
                if old_umask is not None:
                    os.umask(old_umask)
        except zmq.ZMQError as e:
            self._sock.close(linger=0)
            raise PublishError(f"cannot bind {endpoint}: {zmq.strerror(e.errno)}") from e  # (pyzmq repeats the address)
        except PublishError:
            self._sock.close(linger=0)
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        self._wait_for_joiners(join_seconds)

    def _wait_for_joiners(self, seconds: float) -> None:
        """Give subscribers that connect-before-bind (or are reconnecting) time to
        subscribe: wait until no new subscription has arrived for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                if self._read_subscriptions():
                    deadline = max(deadline, time.monotonic() + seconds / 3)

    def _read_subscriptions(self) -> int:
        n = 0
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                n += 1
            elif msg[:1] == b"\x00":
                self.subscriptions -= 1

    def publish(self, event: dict) -> bool:
        """Send one event without blocking; False (and counted) if it had to be dropped."""
        self._read_subscriptions()
        topic = (TOPIC_PREFIX + event["type"]).encode()
        payload = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        while True:
            try:
                self._sock.send_multipart([topic, payload], flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                if not self._wait_for_drain():
                    self.dropped += 1
                    return False
        self.sent += 1
        return True

    def _wait_for_drain(self) -> bool:
        """A subscriber's queue is full: wait a moment if the drain budget allows (True:
        try again). When it is spent, go back to dropping for slow subscribers only."""
        if self._drain_left <= 0:
            return False
        began = time.monotonic()
        time.sleep(DRAIN_POLL_SECONDS)
        self._read_subscriptions()
        self._drain_left -= time.monotonic() - began
        if self._drain_left <= 0:
            self.drain_exhausted = True
            self._sock.setsockopt(zmq.XPUB_NODROP, 0)
            log.warning("a subscriber is too slow; it will miss events (compare its count with 'sent' in the "
                        "finished status)")
        return True

    def close(self) -> None:
        """Close the socket, giving queued messages up to LINGER_MS to leave; remove an
        ipc socket file."""
        if not self._sock.closed:
            self._sock.close(linger=self._linger_ms)
            if self._ipc_path:
                with contextlib.suppress(OSError):
                    os.unlink(self._ipc_path)


def claim_ipc_path(path: str) -> None:
    """Make sure an ipc:// path is free: a socket another process still listens on is
    an error, as a taken TCP port is; a stale socket left by a dead process is removed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise PublishError(f"cannot bind ipc://{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listens: a stale socket file
        try:
            os.unlink(path)
        except OSError as e:
            raise PublishError(f"cannot bind ipc://{path}: stale socket cannot be removed ({e.strerror})") from e
        return
    except OSError as e:  # e.g. another user's owner-only socket: never remove it
        raise PublishError(f"cannot bind ipc://{path}: {e.strerror}") from e
    finally:
        probe.close()
    raise PublishError(f"cannot bind ipc://{path}: Address already in use by another process")


class NullPublisher:
    """`--pub none`: the same interface, publishing nothing."""

    endpoint = "none"
    dropped = sent = subscriptions = 0
    drain_exhausted = False

    def publish(self, event: dict) -> bool:
        return True

    def close(self) -> None:
        pass
