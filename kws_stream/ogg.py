"""Ogg page structure, to tell a whole Ogg file from a cut one.

libsndfile decodes a truncated Ogg Opus or Vorbis file without complaint and reports the
length of what is there, so completeness is read from the container itself: every page
must be whole, and every logical stream must end with a page that carries the
end-of-stream flag (RFC 3533, section 6).
"""
from __future__ import annotations

import struct
from pathlib import Path

CAPTURE = b"OggS"
HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
FLAG_EOS = 0x04


def is_ogg(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == CAPTURE


def problem(path: str | Path) -> str | None:
    """None for a complete Ogg file, else why it is not (a cut page, a missing
    end-of-stream page, or bytes that are not an Ogg page)."""
    open_streams: set[int] = set()
    ended: set[int] = set()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        pos = f.seek(0)
        while pos < size:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                if ended and not open_streams - ended and head[:4] != CAPTURE[:len(head[:4])]:
                    return None  # a few bytes after the last stream ended
                return f"truncated: the file ends at byte {size}, inside the Ogg page that starts at byte {pos}"
            capture, version, flags, _, serial, _, _, n_segments = HEADER.unpack(head)
            if capture != CAPTURE or version != 0:
                if ended and not open_streams - ended:  # bytes after the last stream ended (a tag)
                    return None
                return f"corrupt: no Ogg page at byte {pos}"
            table = f.read(n_segments)
            body = sum(table)
            end = pos + HEADER.size + n_segments + body
            if len(table) < n_segments or end > size:
                return f"truncated: the file ends at byte {size}, inside the Ogg page that starts at byte {pos}"
            (ended if flags & FLAG_EOS else open_streams).add(serial)
            pos = f.seek(end)
    unfinished = open_streams - ended
    if unfinished or not ended:
        return "truncated: the Ogg stream ends without its end-of-stream page"
    return None
