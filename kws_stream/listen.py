"""`kws-stream listen`: subscribe to a kws-stream and print its events as JSON lines.

The smallest useful integration, and the one to start from.
"""
from __future__ import annotations

import json
import signal
import sys
from typing import Callable, TextIO

import zmq

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
    try:
        sock = subscriber(ctx, endpoint, topics or [], configure)
    except ValueError as e:
        print(f"kws-stream listen: error: {e}", file=sys.stderr)
        ctx.term()
        return 2
    received = 0
    try:
        while not stopping and (count is None or received < count):
            if not sock.poll(200):
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
        sock.close(linger=0)
        ctx.term()
    return 0
