"""A speech gate on the mel frames the front end already computes.

Each band's level is its mean over the last BLOCK frames (100 ms). A band's noise floor
is the lowest of those means at the ends of the last `history_blocks` whole blocks before
the frame's own block. A frame is active when some band stands `margin_db` above its
floor. The decision is causal and frame by frame, so any chunking of the stream gives the
same flags. Only differences of levels count (but where a band reaches the mel spectrum's
0 dB floor), so a quiet line is gated like a loud one: the model finds the phrase 70 dB
below a loud call, and an absolute level would gate real speech.

The first block of a stream has no floor yet and is active.
"""
from __future__ import annotations

import numpy as np

BLOCK = 10  # mel frames (10 ms each) per level block
MEL_DB = 10.0  # a mel value is dB / 10 + 2


class SpeechGate:
    """Per-frame speech activity of mel frames pushed in chunks of any size."""

    def __init__(self, margin_db: float, history_blocks: int = 30, n_bands: int = 32):
        if history_blocks < 1:
            raise ValueError(f"a gate needs history_blocks >= 1, got {history_blocks}")
        self.retune(margin_db)
        self.history_blocks = history_blocks
        self.n_bands = n_bands
        self.reset()

    def retune(self, margin_db: float) -> None:
        """A new margin from the next frame on; the floors' history is kept."""
        if not margin_db > 0:
            raise ValueError(f"a gate needs margin_db > 0, got {margin_db}")
        self.margin_db = margin_db
        self.margin = np.float32(margin_db / MEL_DB)

    def reset(self) -> None:
        self._tail = np.zeros((0, self.n_bands), dtype=np.float64)  # the last BLOCK - 1 frames
        self._frames = 0  # frames pushed since reset
        self._means = np.empty((0, self.n_bands), dtype=np.float32)  # block means, oldest first

    def push(self, mel: np.ndarray) -> np.ndarray:
        """Activity (bool, one per frame) of these (n, n_bands) mel frames."""
        n = mel.shape[0]
        if n == 0:
            return np.ones(0, dtype=bool)
        first, k = self._frames, self._tail.shape[0]  # absolute index of mel[0]; frames of history before it
        x = np.concatenate([self._tail, mel.astype(np.float64)])  # float64 sums of float32: exact in any chunking
        csum = np.concatenate([np.zeros((1, self.n_bands)), np.cumsum(x, axis=0)])
        t = np.arange(n)
        width = np.minimum(first + t + 1, BLOCK)  # a stream's first frames average what there is
        level = ((csum[k + t + 1] - csum[k + t + 1 - width]) / width[:, None]).astype(np.float32)
        # block means: the levels at the block ends in this chunk join the history (blocks j0, j0 + 1, ...)
        j0 = first // BLOCK - self._means.shape[0]
        history = np.concatenate([self._means, level[(BLOCK - 1 - first) % BLOCK::BLOCK]])
        # a frame of block b compares with the lowest mean of blocks b - history_blocks .. b - 1
        blocks = (first + t) // BLOCK
        b = np.arange(blocks[0], blocks[-1] + 1)
        padded = np.concatenate([np.full((self.history_blocks, self.n_bands), np.inf, np.float32), history])
        span = (b - j0)[:, None] + np.arange(self.history_blocks)
        floors = padded[span].min(axis=1)
        floors[b == 0] = -np.inf  # a stream's first block has no floor: active
        active = (level - floors[blocks - b[0]]).max(axis=1) >= self.margin
        self._frames += n
        self._means = history[-self.history_blocks:]
        self._tail = x[-(BLOCK - 1):].copy()
        return active
