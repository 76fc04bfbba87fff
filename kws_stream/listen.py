"""`kws-stream listen`: subscribe to a kws-stream and print its events as JSON lines.

The smallest useful integration, and the one to start from.
"""
from __future__ import annotations

import json
import signal
import sys
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
    received, failed_handshakes = 0, 0
    (monitor,) = monitors
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    try:
        while not stopping and (count is None or received < count):
            ready = dict(poller.poll(200))
            if monitor in ready:
                event = recv_monitor_message(monitor)["event"]
                # a dropped connection also ends a handshake without detail (a daemon restarting):
                # only a run of them, with no success between, is a refusal
                failed_handshakes = 0 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else failed_handshakes + 1
                if event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) \
                        or failed_handshakes >= HANDSHAKE_FAILURES:
                    print(f"kws-stream listen: error: {endpoint}: {_refusal(event)}", file=sys.stderr)
                    return 1
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


def _refusal(event: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return ("the daemon refused this subscriber's key (its public key must be in the daemon's "
                "--curve-clients directory)")
    return ("the handshake failed: this subscriber and the daemon disagree on CurveZMQ (give --curve-secret and "
            "--curve-server, with the daemon's own public key, exactly when the daemon has --curve-secret)")
