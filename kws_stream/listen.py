"""`kws-stream listen`: subscribe to a kws-stream and print its events as JSON lines.

The smallest useful integration, and the one to start from.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import Callable, TextIO

import zmq
from zmq.utils.monitor import recv_monitor_message

from .events import DEFAULT_ENDPOINT, TOPIC_PREFIX


def full_topic(topic: str) -> str:
    """`detection` and `kws.detection` name the same topic."""
    return topic if not topic or topic.startswith(TOPIC_PREFIX) else TOPIC_PREFIX + topic


Configure = Callable[[zmq.Socket], None]  # sets socket options before connecting, e.g. CURVE client keys


def subscriber(ctx: zmq.Context, endpoint: str, topics: list[str], configure: Configure | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    if configure is not None:
        configure(sock)  # e.g. CURVE client keys, before connecting
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, full_topic(topic).encode())
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise ValueError(f"cannot connect to {endpoint}: {e.strerror}") from e
    return sock


def listen(endpoint: str = DEFAULT_ENDPOINT, topics: list[str] | None = None, configure: Configure | None = None,
           out: TextIO = sys.stdout, count: int | None = None) -> int:
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    ctx = zmq.Context()
    monitors = []  # the handshake's outcome, watched from before connecting: a refusal is said once

    def prepare(sock: zmq.Socket) -> None:
        if configure is not None:
            configure(sock)
        monitors.append(sock.get_monitor_socket(HANDSHAKE))

    try:
        sock = subscriber(ctx, endpoint, topics or [], prepare)
    except ValueError as e:
        print(f"kws-stream listen: error: {e}", file=sys.stderr)
        for m in monitors:
            m.close(linger=0)
        ctx.term()
        return 2
    received, failed_handshakes, connected = 0, 0, False
    (monitor,) = monitors
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    waiting_since = time.monotonic()
    try:
        while not stopping and (count is None or received < count):
            ready = dict(poller.poll(200))
            if monitor in ready:
                event = recv_monitor_message(monitor)["event"]
                connected = connected or event == zmq.EVENT_HANDSHAKE_SUCCEEDED
                # a dropped connection also ends a handshake without detail (a daemon restarting):
                # only a run of them, with no success between, is a refusal
                failed_handshakes = 0 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else failed_handshakes + 1
                if event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) \
                        or failed_handshakes >= HANDSHAKE_FAILURES:
                    print(f"kws-stream listen: error: {endpoint}: {_refusal(event, configure is not None)}",
                          file=sys.stderr)
                    return 1
            if not connected and waiting_since is not None and time.monotonic() - waiting_since > WAIT_NOTICE_SECONDS:
                print(f"kws-stream listen: waiting for a publisher at {endpoint} (none has answered yet)",
                      file=sys.stderr)
                waiting_since = None  # said once
            if sock not in ready:
                continue
            topic, payload = sock.recv_multipart()
            try:
                event = json.loads(payload)
            except ValueError:
                print(f"kws-stream listen: ignored a message on {topic!r} that is not JSON", file=sys.stderr)
                continue
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
            out.flush()
            received += 1
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    return 0


HANDSHAKE = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
             | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
HANDSHAKE_FAILURES = 10  # in a row: a wrong server key fails every reconnect, about 10 a second


WAIT_NOTICE_SECONDS = 5.0  # without a publisher this long, say so once on stderr (stdout stays events)


def _refusal(event: int, curve: bool) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return ("the daemon refused this subscriber's key (its public key must be in the daemon's "
                "--curve-clients directory)")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return ("the handshake failed: this subscriber and the daemon disagree on CurveZMQ (give --curve-secret and "
                "--curve-server, with the daemon's own public key, exactly when the daemon has --curve-secret)")
    # the peer hung up on every handshake: a wrong server key does that, and so does anything but a publisher
    if curve:
        return ("every handshake was dropped: --curve-server is not that daemon's public key, or no kws-stream "
                "publisher listens there")
    return ("every handshake was dropped: no kws-stream publisher listens there (or one that wants CurveZMQ keys: "
            "--curve-secret and --curve-server)")
