"""`kws-stream listen`: subscribe to a kws-stream and print its events as JSON lines.

The smallest useful integration, and the one to start from.
"""
from __future__ import annotations

import json
import signal
import sys

import zmq

from .events import DEFAULT_ENDPOINT


def subscriber(ctx: zmq.Context, endpoint: str, topics: list[str], configure=None) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    if configure is not None:
        configure(sock)  # e.g. CURVE client keys, before connecting
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    return sock


def listen(endpoint: str = DEFAULT_ENDPOINT, topics: list[str] | None = None, configure=None, out=sys.stdout,
           count: int | None = None) -> int:
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    ctx = zmq.Context()
    sock = subscriber(ctx, endpoint, topics or [], configure)
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
