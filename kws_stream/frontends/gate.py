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
        if not margin_db > 0 or history_blocks < 1:
            raise ValueError(f"a gate needs margin_db > 0 and history_blocks >= 1, got {margin_db}, {history_blocks}")
        self.margin = np.float32(margin_db / MEL_DB)
        self.history_blocks = history_blocks
        self.n_bands = n_bands
        self.reset()

    def reset(self) -> None:
        self._tail = np.zeros((0, self.n_bands), dtype=np.float64)  # the last BLOCK - 1 frames
        self._frames = 0  # frames pushed since reset
        self._means = np.empty((0, self.n_bands), dtype=np.float32)  # block means, oldest first

    def push(self, mel: np.ndarray) -> np.ndarray:
        """Activity (bool, one per frame) of these (n, n_bands) mel frames."""
        n = mel.shape[0]
        active = np.ones(n, dtype=bool)
        if n == 0:
            return active
        x = np.concatenate([self._tail, mel.astype(np.float64)])  # float64 sums: exact for any chunking
        csum = np.concatenate([np.zeros((1, self.n_bands)), np.cumsum(x, axis=0)])
        first = self._frames  # absolute index of mel[0]
        k = self._tail.shape[0]  # frames of history before mel[0]
        t = np.arange(n)
        width = np.minimum(first + t + 1, BLOCK)  # a stream's first frames average what there is
        level = ((csum[k + t + 1] - csum[k + t + 1 - width]) / width[:, None]).astype(np.float32)
        a = 0
        while a < n:
            block = (first + a) // BLOCK
            b = min(n, (block + 1) * BLOCK - first)  # this chunk's frames in that block
            if self._means.shape[0]:
                floor = self._means.min(axis=0)
                active[a:b] = ((level[a:b] - floor).max(axis=1) >= self.margin)
            if (first + b) % BLOCK == 0:  # the block is whole: its mean joins the floors' history
                self._means = np.concatenate([self._means[-(self.history_blocks - 1):] if self.history_blocks > 1
                                              else self._means[:0], level[b - 1:b]])
            a = b
        self._frames += n
        self._tail = x[-(BLOCK - 1):].copy() if BLOCK > 1 else x[:0]
        return active
