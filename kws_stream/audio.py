"""Audio files in: any format libsndfile reads, any rate, any channel count.

Files are read in blocks, averaged to mono in float64 (as the seed does) and resampled
to 16 kHz with a streaming soxr resampler, so a 10-hour recording needs bounded memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from . import ogg
from .frontends import SAMPLE_RATE

BLOCK_SECONDS = 2.0  # decoded per read: bounds memory, and a decode error loses at most this much


class AudioError(Exception):
    """A file that cannot be turned into audio; the message names the reason."""


class Resampler:
    """Streaming resampler to SAMPLE_RATE; a pass-through when the rate already matches."""

    def __init__(self, rate: int):
        if rate <= 0:
            raise AudioError(f"invalid sample rate {rate}")
        self.rate = rate
        self._stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float64",
                                                                            quality="HQ")

    def __call__(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono, last=last)


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) block into float64 mono."""
    if block.ndim == 1:
        return block.astype(np.float64, copy=False)
    return block.mean(axis=1, dtype=np.float64)


def check_finite(x: np.ndarray, at_seconds: float) -> None:
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise AudioError(f"NaN or Inf sample at {at_seconds + bad / SAMPLE_RATE:.2f} s")


def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise AudioError("no such file")
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError("permission denied")
    if path.stat().st_size == 0:
        raise AudioError("empty file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        cut = ogg.problem(path) if ogg.is_ogg(path) else None
        raise AudioError(cut or f"not readable audio ({_reason(e)})") from e


def _reason(e: Exception) -> str:
    text = getattr(e, "error_string", None) or str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def iter_file(path: str | Path, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Yield a file's audio as float64 mono 16 kHz blocks. Raises AudioError."""
    path = Path(path)
    with _open(path) as f:
        container_problem = ogg.problem(path) if ogg.is_ogg(path) else None
        resample = Resampler(f.samplerate)
        block = max(1, int(block_seconds * f.samplerate))
        out_seconds, frames_read = 0.0, 0
        try:
            while True:
                data = f.read(block, dtype="float64", always_2d=True)
                frames_read += len(data)
                last = len(data) < block
                y = resample(to_mono(data), last=last)
                if y.size:
                    check_finite(y, out_seconds)
                    np.clip(y, -1.0, 1.0, out=y)  # float files may hold any finite level
                    out_seconds += y.size / SAMPLE_RATE
                    yield y
                if last:
                    break
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"decoding failed after {out_seconds:.2f} s ({_reason(e)})") from e
        if out_seconds == 0.0:
            raise AudioError("no audio samples")
        if container_problem is not None:  # what was read has been scored; the file still failed
            raise AudioError(f"{container_problem} ({out_seconds:.2f} s read)")
        # A header that promises more than the data holds (e.g. a cut MP3) means a truncated file.
        if 0 < f.frames < 2**62 and frames_read < f.frames * 0.99:
            raise AudioError(f"truncated: the header promises {f.frames / f.samplerate:.2f} s, "
                             f"the data holds {frames_read / f.samplerate:.2f} s")


def read_file(path: str | Path) -> np.ndarray:
    """A whole file as float64 mono 16 kHz (for training and tests, not for the daemon)."""
    return np.concatenate(list(iter_file(path)))
