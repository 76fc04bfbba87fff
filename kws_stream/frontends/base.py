"""What every front end shares: the audio it takes, the 10 ms hop, the 2.5 s window, and
the contract a front end meets.

These constants are the seed's (SEED.md). Everything that needs the sample rate or the
hop imports it from here, never from a particular front end.
"""
from __future__ import annotations

from typing import ClassVar, Iterator, Protocol

import numpy as np

SAMPLE_RATE = 16000  # Hz, mono
HOP_MS = 10.0
HOP_LENGTH = int(SAMPLE_RATE * HOP_MS / 1000)  # 160 samples: audio arrives and is framed in these hops
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
SEGMENT_SECONDS = 2.5  # the rolling window a model scores
WINDOW_HOPS = int(round(SEGMENT_SECONDS * FRAMES_PER_SECOND))  # 250 hops in a window


class FrontEnd(Protocol):
    """Audio to model features, in two views that give the same numbers.

    Streaming: `accept(audio)` takes samples up to the next due window and returns how
    many it took; while `ready()`, `take(out)` writes one window's features and returns
    the window's start in hops of `hop_length` samples; `finish()` ends the stream.
    `windows()` below drives this loop; nothing else should. `store(audio)` is accept's
    fast path for audio that completes no window, which a caller tries first (Spotter).

    Batch (training, evaluation): `file_frames(signal)` gives a whole signal's frames,
    (frame_dim, n) at `frame_rate` per second; `features(frames, start, out, rng)` turns
    the `window_frames` frames from `start` into one window's features, masking some of
    them when a random generator is given (training augmentation).
    """

    name: ClassVar[str]  # written into a model's metadata; the registry key
    sample_rate: ClassVar[int]
    hop_length: ClassVar[int]  # samples per unit of a window's start
    window_frames: ClassVar[int]  # batch frames per window
    window_samples: ClassVar[int]  # audio samples one window hears
    feature_size: ClassVar[int]
    feature_shape: ClassVar[tuple[int, ...]]  # how a model may view the flat features
    frame_rate: ClassVar[float]  # batch frames per second
    tail: ClassVar[int]  # frames a window may run past the last start (end-of-stream padding)
    reach: ClassVar[int]  # frames past start + window_frames that a window still hears
    gates: ClassVar[bool]  # whether it takes a speech gate (gate.SpeechGate)
    skipped: bool  # the window take() last gave was left out by a speech gate (its features not written)

    def __init__(self, hop_frames: int = ...) -> None:
        """A window every hop_frames hops."""

    @staticmethod
    def load() -> None:
        """Load and check what the front end needs once; RuntimeError names a damaged file."""

    def reset(self) -> None: ...

    def accept(self, audio: np.ndarray) -> int: ...

    def store(self, audio: np.ndarray) -> bool:
        """The usual 10 ms hop, at a few attribute reads and one copy: keep all of audio and
        return True only when no window can be ready after it; else (also when the held
        audio would fill the buffer, or after finish()) take nothing and return False."""

    def ready(self) -> bool: ...

    def take(self, out: np.ndarray) -> int: ...

    def finish(self) -> None: ...

    @classmethod
    def file_frames(cls, signal: np.ndarray) -> np.ndarray: ...

    @classmethod
    def features(cls, frames: np.ndarray, start: int, out: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray: ...

    @staticmethod
    def band_hz() -> np.ndarray | None:
        """Each feature band's centre frequency in Hz when a window's features are frames
        of spectral bands (feature_shape (frames, bands)) that training may warp; else None."""

    @classmethod
    def start_limit(cls, n_frames: int) -> int:
        """Windows of a stream whose file_frames has n_frames start before this frame."""

    @classmethod
    def window_frame(cls, k: int, hop_frames: int) -> int:
        """The batch frame that window k starts at when a window is due every hop_frames hops."""


def windows(fe: FrontEnd, audio: np.ndarray | None, out: np.ndarray) -> Iterator[int]:
    """Feed `audio` to a streaming front end (None: the stream has ended) and yield the
    start of every window it completes, its features just written into `out`."""
    if audio is None:
        fe.finish()
    else:
        pos = 0
        while pos < audio.size:
            pos += fe.accept(audio[pos:])
            while fe.ready():
                yield fe.take(out)
    while fe.ready():
        yield fe.take(out)
