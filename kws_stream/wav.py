"""RIFF WAV headers, read by hand: for stdin and named pipes, which libsndfile cannot
seek in, and for files, whose cut data libsndfile reads to the end without complaint.

One walker serves both. It reads the chunks up to the data's first byte and takes PCM of
8 to 32 bits, IEEE float of 32 or 64 bits, and the extensible header ffmpeg writes for
those and for three channels or more.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np


class WavError(Exception):
    """A stream that is not a WAV this reader takes; the message names the reason."""


PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE  # format tags
UNKNOWN_SIZE = 0x7FFFF000  # data sizes from here up are streaming writers' placeholders
HEADER_LIMIT = 1 << 20  # bytes of chunks before the data, at most

Decoder = Callable[[bytes], np.ndarray]  # interleaved sample bytes to float64 at full scale 1


def _int24(b: bytes) -> np.ndarray:
    u = np.frombuffer(b, np.uint8).reshape(-1, 3).astype(np.int32)
    v = u[:, 0] | u[:, 1] << 8 | u[:, 2] << 16
    return (v - ((v & 0x800000) << 1)) / 8388608.0


def scaled(dtype: str, scale: float, offset: float = 0.0) -> Decoder:
    def decode(b: bytes) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # a signalling NaN's cast; the NaN itself is refused after
            return (np.frombuffer(b, dtype).astype(np.float64) - offset) / scale
    return decode


DECODERS = {(PCM, 8): scaled("u1", 128.0, 128.0), (PCM, 16): scaled("<i2", 32768.0), (PCM, 24): _int24,
            (PCM, 32): scaled("<i4", 2147483648.0), (FLOAT, 32): scaled("<f4", 1.0), (FLOAT, 64): scaled("<f8", 1.0)}


@dataclass(frozen=True)
class Header:
    tag: int  # an extensible header's sub-format
    channels: int
    rate: int
    bits: int
    size: int  # of the data chunk, as the header states it

    @property
    def frame(self) -> int:
        return self.bits // 8 * self.channels

    @property
    def placeholder(self) -> bool:
        """A writer that could not seek back to fill in the size: the data runs to the end."""
        return self.size == 0 or self.size >= UNKNOWN_SIZE - self.frame

    def decoder(self) -> Decoder:
        if (decode := DECODERS.get((self.tag, self.bits))) is None:
            kind = {PCM: "PCM", FLOAT: "float", EXTENSIBLE: "extensible (no sub-format)"}.get(self.tag,
                                                                                          f"format-{self.tag}")
            raise WavError(f"WAV of {self.bits}-bit {kind} samples; send 8, 16, 24 or 32-bit PCM or 32 or 64-bit "
                           "float (ffmpeg -c:a pcm_s16le)")
        return decode

    def cut(self, held: int) -> str | None:
        """Why data of `held` bytes is cut short of what the header promises, or None."""
        if self.placeholder or held >= self.size or not self.rate:
            return None
        rate = self.rate * self.frame
        return (f"truncated: the WAV header promises {self.size / rate:.2f} s, the data holds {held / rate:.2f} s "
                f"({self.size - held} bytes short)")


def read_header(read: Callable[[int], bytes]) -> Header:
    """The header of a RIFF WAV read through `read`, up to the data's first byte."""
    riff = read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise WavError("not a PCM WAV stream (the RIFF/WAVE header is cut short or missing)")
    fmt, seen = None, 12
    while len(chunk := read(8)) == 8:
        size = int.from_bytes(chunk[4:], "little")
        if chunk[:4] == b"data":
            if fmt is None:
                raise WavError("not a PCM WAV stream (its data comes before its format)")
            return Header(*fmt, size)
        seen += 8 + size + (size & 1)
        if seen > HEADER_LIMIT:
            raise WavError(f"not a PCM WAV stream (no data in its first {HEADER_LIMIT} bytes)")
        body = read(size + (size & 1))
        if chunk[:4] == b"fmt ":
            fmt = _format(body)
    raise WavError("not a PCM WAV stream (the header is cut short)")


def _format(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise WavError("not a PCM WAV stream (its format chunk is cut short)")
    tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == EXTENSIBLE and len(body) >= 26:
        tag = int.from_bytes(body[24:26], "little")  # the sub-format GUID's first two bytes
    if not channels or not bits or bits % 8 or align != channels * bits // 8:
        raise WavError(f"not a PCM WAV stream (a format of {channels} channel(s) of {bits}-bit samples "
                       f"in frames of {align} bytes)")
    return tag, channels, rate, bits


def file_problem(path: Path) -> str | None:
    """For a RIFF WAV file whose data chunk promises more bytes than the file holds, the
    reason; otherwise None (not a WAV, or one libsndfile judges)."""
    try:
        with open(path, "rb") as f:
            header = read_header(f.read)
            return header.cut(Path(path).stat().st_size - f.tell())
    except (OSError, WavError):
        return None


class Limited:
    """The first `size` bytes of a stream (a WAV's data chunk), counting what was read."""

    def __init__(self, stream: BinaryIO, size: int):
        self._stream, self._left = stream, size
        self.bytes_read = 0

    def read(self, n: int) -> bytes:
        data = self._stream.read(min(n, self._left)) if self._left else b""
        self._left -= len(data)
        self.bytes_read += len(data)
        return data
