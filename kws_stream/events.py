"""Events over ZeroMQ: multipart [topic, json] on a PUB socket.

Topics are `kws.detection`, `kws.status` and `kws.error`; every payload carries
`"schema": 1` and `"type"`. Publishing never blocks the audio path: the socket has a
bounded high-water mark, sends are non-blocking, and what cannot be queued is counted.
"""
from __future__ import annotations

import json
import logging
import time

import zmq

from .spotter import EVENT_SCHEMA, utc_now

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
TOPIC_PREFIX = "kws."
SEND_HWM = 10000  # messages queued per subscriber before ZeroMQ drops for that subscriber
JOIN_SECONDS = 0.3  # how long a new publisher waits for already-connecting subscribers
LINGER_MS = 1000  # how long close() may take to deliver what is still queued


class PublishError(Exception):
    """The endpoint cannot be bound (bad address, port in use, no permission)."""


def status_event(state: str, **fields) -> dict:
    return {"schema": EVENT_SCHEMA, "type": "status", "state": state, "time": utc_now(), **fields}


def error_event(stream: str, message: str) -> dict:
    return {"schema": EVENT_SCHEMA, "type": "error", "stream": stream, "message": message, "time": utc_now()}


class Publisher:
    """A bound XPUB socket. An XPUB sees subscriptions arrive, which lets a replay wait
    until subscribers that were already connecting have joined (the slow-joiner problem)."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, hwm: int = SEND_HWM, join_seconds: float = JOIN_SECONDS,
                 context: zmq.Context | None = None, configure=None):
        self.endpoint = endpoint
        self.dropped = 0
        self.sent = 0
        self.subscriptions = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, LINGER_MS)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber's subscription
        if configure is not None:
            configure(self._sock)  # e.g. CURVE server keys, set before bind
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(linger=0)
            raise PublishError(f"cannot bind {endpoint}: {e.strerror}") from e
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
        try:
            self._sock.send_multipart([topic, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket, giving queued messages up to LINGER_MS to leave."""
        if not self._sock.closed:
            self._sock.close(linger=LINGER_MS)


class NullPublisher:
    """`--pub none`: the same interface, publishing nothing."""

    endpoint = "none"
    dropped = sent = subscriptions = 0

    def publish(self, event: dict) -> bool:
        return True

    def close(self) -> None:
        pass
