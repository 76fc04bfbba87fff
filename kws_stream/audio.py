"""Audio files in: any format libsndfile reads, any rate from 1 to 768 kHz, any channel count; and stdin.

Files are read in blocks, averaged to mono in float64 (as the seed does) and resampled
to 16 kHz with a streaming resampler (resample.py), so a 10-hour recording needs bounded
memory. soundfile (libsndfile) is imported when a file is first opened: the live daemon
never loads it.
Stdin (`-`) carries a WAV stream or raw mono PCM, read as it arrives.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from . import ogg, resample, wav
from .frontends import SAMPLE_RATE

BLOCK_SECONDS = 2.0  # decoded per read: bounds memory
SALVAGE_SECONDS = 0.01  # a block that fails to decode is read again in pieces this long, up to the error


class AudioError(Exception):
    """A file that cannot be turned into audio; the message names the reason."""


RATES = (1000, 768000)  # input sample rates taken, in Hz: beyond them a header is more likely wrong than audio


class Resampler(resample.Resampler):
    """Streaming resampler to SAMPLE_RATE; a pass-through when the rate already matches."""

    def __init__(self, rate: int):
        if not RATES[0] <= rate <= RATES[1]:
            raise AudioError(f"unsupported sample rate {rate} Hz (kws-stream takes {RATES[0]} to {RATES[1]} Hz)")
        super().__init__(rate, SAMPLE_RATE)


LEVEL_LIMIT = 1e30  # absurd finite levels are held here before resampling, which could overflow them


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) block into float64 mono; NaN and Inf
    stay, and finite levels too large to sum are averaged without overflowing."""
    if block.ndim == 1:
        return block.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):
        mono = block.mean(axis=1, dtype=np.float64)
    if not np.isfinite(mono).all():
        mono = np.where(np.isfinite(block).all(axis=1), (block / block.shape[1]).sum(axis=1), mono)
    return mono


def soundfile():
    """The soundfile module (libsndfile), imported on first use; AudioError if it is not usable."""
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise AudioError(f"cannot decode audio files: soundfile is not usable ({e})") from None
    return soundfile


def _open(path: Path):
    """An open soundfile.SoundFile, or AudioError naming why not."""
    sf = soundfile()
    try:
        info = path.stat()
    except OSError as e:
        raise AudioError("no such file" if e.errno == errno.ENOENT else f"cannot open ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError("is a directory with no audio files in it")
    if not os.access(path, os.R_OK):
        raise AudioError("permission denied")
    if info.st_size == 0:
        raise AudioError("empty file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        cut = ogg.problem(path) if ogg.is_ogg(path) else None
        raise AudioError(cut or f"not readable audio ({_reason(e)})") from e


def _reason(e: Exception) -> str:
    text = getattr(e, "error_string", None) or str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


class _Output:
    """Decoded mono blocks as a source yields them: resampled to 16 kHz and clipped to full
    scale (float files and streams may hold any finite level). A NaN or Inf sample ends the
    stream: the audio before it is yielded, then AudioError names where it was."""

    def __init__(self, rate: int):
        self.resample = Resampler(rate)
        self.frames = 0  # input frames taken
        self.seconds = 0.0  # output yielded

    def __call__(self, mono: np.ndarray, last: bool) -> Iterator[np.ndarray]:
        finite = np.isfinite(mono)
        cut = None if finite.all() else int(np.argmin(finite))
        taken = mono if cut is None else mono[:cut]
        y = self.resample(np.clip(taken, -LEVEL_LIMIT, LEVEL_LIMIT), last=last or cut is not None)
        self.frames += taken.size
        if y.size:
            np.clip(y, -1.0, 1.0, out=y)
            self.seconds += y.size / SAMPLE_RATE
            yield y
        if cut is not None:
            raise AudioError(f"NaN or Inf sample at {self.frames / self.resample.rate:.2f} s")


def iter_file(path: str | Path, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Yield a file's audio as float64 mono 16 kHz blocks. Raises AudioError."""
    sf = soundfile()
    path = Path(path)
    with _open(path) as f:
        container_problem = ogg.problem(path) if ogg.is_ogg(path) else wav.file_problem(path)
        out = _Output(f.samplerate)
        block = max(1, int(block_seconds * f.samplerate))
        frames_read = 0
        try:
            while True:
                data = f.read(block, dtype="float64", always_2d=True)
                frames_read += len(data)
                last = len(data) < block
                yield from out(to_mono(data), last)
                if last:
                    break
        except (sf.LibsndfileError, RuntimeError) as e:
            for data in _salvage(path, f, frames_read, block):  # the failed block up to the error
                yield from out(to_mono(data), False)
            yield from out(np.zeros(0), True)
            raise AudioError(f"decoding failed after {out.seconds:.2f} s ({_reason(e)})") from e
        if out.seconds == 0.0:
            raise AudioError("no audio samples")
        if container_problem is not None:  # what was read has been scored; the file still failed
            raise AudioError(f"{container_problem} ({out.seconds:.2f} s read)")
        # A header that promises more than the data holds (e.g. a cut MP3) means a truncated file.
        # Compressed formats' frame counts may be estimates, so they get 1% (WAV: wav.file_problem, exact).
        if 0 < f.frames < 2**62 and frames_read < f.frames * 0.99:
            raise AudioError(f"truncated: the header promises {f.frames / f.samplerate:.2f} s, "
                             f"the data holds {frames_read / f.samplerate:.2f} s")


def _salvage(path: Path, f, at: int, frames: int) -> Iterator[np.ndarray]:
    """After the block of `frames` frames from `at` failed to decode: its frames up to the
    error, read again in small pieces, from the open file or, when its decoder cannot seek
    back, from the file opened anew; nothing when neither can."""
    sf = soundfile()
    errors = (sf.LibsndfileError, RuntimeError, ValueError)
    try:
        f.seek(at)
    except errors:
        try:
            with sf.SoundFile(str(path)) as fresh:
                fresh.seek(at)
                yield from _pieces(fresh, frames, errors)
        except errors:
            pass
        return
    yield from _pieces(f, frames, errors)


def _pieces(f, frames: int, errors: tuple) -> Iterator[np.ndarray]:
    piece = max(1, int(SALVAGE_SECONDS * f.samplerate))
    while frames > 0:
        try:
            data = f.read(min(piece, frames), dtype="float64", always_2d=True)
        except errors:
            return
        if not len(data):
            return
        frames -= len(data)
        yield data


STDIN = "-"
RAW_DECODERS = {"s16le": (2, wav.scaled("<i2", 32768.0)), "s32le": (4, wav.scaled("<i4", 2147483648.0)),
                "f32le": (4, wav.scaled("<f4", 1.0))}
READ_LIMIT = 1 << 20  # bytes read from a stream at a time at most, whatever a header says


@dataclass(frozen=True)
class StdinFormat:
    format: str = "auto"  # auto, wav, or a RAW_DECODERS key
    rate: int = SAMPLE_RATE  # of raw PCM


def iter_input(path: str, stdin: StdinFormat = StdinFormat(), block_seconds: float = BLOCK_SECONDS
               ) -> Iterator[np.ndarray]:
    """A file's blocks; stdin's for the path `-`; a named pipe's or a character device's
    (`--file <(ffmpeg ... -f wav -)`) read as stdin is."""
    if path == STDIN:
        if sys.stdin is None:
            raise AudioError("stdin is closed")
        return iter_stdin(sys.stdin.buffer, stdin, block_seconds)
    if is_stream(path):
        return _iter_pipe(path, stdin, block_seconds)
    return iter_file(path, block_seconds)


def is_stream(path: str) -> bool:
    """A named pipe or a character device (`<(ffmpeg ...)`, /dev/stdin): no size, no seeking."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # iter_file names what is wrong
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _iter_pipe(path: str, fmt: StdinFormat, block_seconds: float) -> Iterator[np.ndarray]:
    try:
        stream = open(path, "rb")
    except OSError as e:
        raise AudioError(f"cannot open ({e.strerror or e})") from None
    with stream:
        yield from iter_stdin(stream, fmt, block_seconds, pipe=path)


# What other audio looks like at the start of a stream: stdin takes only WAV and raw PCM.
# Four bytes or more each, so raw PCM matches one by chance about once in 2**32 streams (an
# MP3 without an ID3 tag starts with a 2-byte frame sync, too short to tell from PCM).
CONTAINERS = ((0, b"OggS", "Ogg"), (0, b"fLaC", "FLAC"), (0, b"ID3\x03", "MP3"), (0, b"ID3\x04", "MP3"),
              (0, b"FORM", "AIFF"), (0, b".snd", "Sun AU"), (0, b"caff", "CAF"), (0, b"RF64", "RF64"),
              (0, b"\x1aE\xdf\xa3", "Matroska or WebM"), (4, b"ftyp", "MP4"), (0, b"#!AMR", "AMR"))
HEAD_BYTES = 12


def container_of(head: bytes) -> str | None:
    """The kind of non-WAV audio file these first bytes begin, if any; "text" for text."""
    for at, magic, name in CONTAINERS:
        if head[at:at + len(magic)] == magic:
            return name
    if len(head) >= 4 and _printable(head):
        return "text"  # raw PCM reads as printable text this long about once in 10^5 loud streams, never when quiet
    return None


def _printable(head: bytes) -> bool:
    """Whether these bytes are printable UTF-8 text (Russian too), bar a cut last character."""
    for cut in range(4):
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return bool(text) and all(c.isprintable() or c in "\t\n\r" for c in text)
    return False


def iter_stdin(stream: BinaryIO, fmt: StdinFormat, block_seconds: float = 0.1, pipe: str | None = None
               ) -> Iterator[np.ndarray]:
    """Float64 mono 16 kHz blocks of a WAV stream or raw mono PCM, as they arrive (a pipe
    is read `block_seconds` at a time). With format auto, a stream that starts like
    another kind of audio file, or like text, is refused. `pipe`: the named pipe read
    instead of stdin. Raises AudioError, whose message the caller puts after the name."""
    try:
        head = stream.read(HEAD_BYTES)
    except OSError as e:
        raise AudioError(f"cannot read ({e.strerror or e})") from None
    kind = fmt.format if fmt.format != "auto" else ("wav" if head[:4] == b"RIFF" else "s16le")
    if fmt.format == "auto" and kind != "wav" and (other := container_of(head)) is not None:
        if other == "text":
            raise AudioError("holds text, not audio (raw PCM that only looks so: --format s16le)")
        instead = "give the file's path instead, or " if pipe is None else ""
        raise AudioError(f"holds {other} audio; a stream must be WAV or raw PCM: {instead}decode it to WAV "
                         "first (ffmpeg -i IN -f wav -)")
    if kind == "wav":
        yield from _wav_blocks(head, stream, block_seconds)
        return
    if head[:4] == b"RIFF":
        raise AudioError(f"holds a WAV header but --format is {kind}; use --format wav or auto")
    sample_bytes, decode = RAW_DECODERS[kind]
    yield from _pcm_blocks(head, stream, sample_bytes, decode, fmt.rate, 1, block_seconds)


def _wav_blocks(head: bytes, stream: BinaryIO, block_seconds: float) -> Iterator[np.ndarray]:
    source = _Prefixed(head, stream)
    try:
        header = wav.read_header(source.read)
        decode = header.decoder()
    except wav.WavError as e:
        raise AudioError(str(e)) from None
    data = source if header.placeholder else wav.Limited(source, header.size)
    yield from _pcm_blocks(b"", data, header.bits // 8, decode, header.rate, header.channels, block_seconds)
    if not header.placeholder and (cut := header.cut(data.bytes_read)):
        raise AudioError(cut)


def _pcm_blocks(head: bytes, stream, sample_bytes: int, decode: wav.Decoder, rate: int, channels: int,
                block_seconds: float) -> Iterator[np.ndarray]:
    out = _Output(rate)
    frame = sample_bytes * channels
    want = max(1, min(int(block_seconds * rate), READ_LIMIT // frame)) * frame
    pending, done = head, False
    while not done:
        try:
            data = stream.read(want - len(pending)) if len(pending) < want else b""
        except OSError as e:
            raise AudioError(f"cannot read after {out.seconds:.2f} s ({e.strerror or e})") from None
        done = not data
        pending += data
        whole = len(pending) // frame * frame
        if not whole and not done:
            continue
        x = decode(pending[:whole]).reshape(-1, channels)
        pending = pending[whole:]
        yield from out(to_mono(x), done)
    if out.seconds == 0.0:
        raise AudioError("no audio samples")
    if pending:
        raise AudioError(f"truncated: {len(pending)} bytes after the last whole sample ({out.seconds:.2f} s read)")


class _Prefixed:
    """A stream with bytes already read put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n < 0:
            out, self._head = self._head + self._stream.read(), b""
            return out
        out, self._head = self._head[:n], self._head[n:]
        return out + (self._stream.read(n - len(out)) if len(out) < n else b"")


def read_file(path: str | Path) -> np.ndarray:
    """A whole file as float64 mono 16 kHz (for training and tests, not for the daemon)."""
    return np.concatenate(list(iter_file(path)))
