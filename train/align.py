"""Where a phrase lies inside a sentence: subsequence dynamic time warping.

The query is the phrase as the same voice says it alone; the reference is the sentence.
Both become the seed front end's log-mel frames (10 ms), mean- and variance-normalised
per utterance. Every path step advances one query frame and zero, one or two sentence
frames, so all paths have the query's length, their costs compare directly, and the
phrase inside the sentence may be arbitrarily faster or up to twice as slow as alone
(the caller rejects matches whose length is off by more than 0.5-1.6 times).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kws_stream.frontends import HOP_LENGTH
from kws_stream.frontends.seed import log_mel


@dataclass(frozen=True)
class Match:
    start: int  # samples
    end: int
    cost: float  # mean cosine distance along the path: 0 identical, about 1 unrelated


def _frames(x: np.ndarray) -> np.ndarray:
    m = log_mel(np.asarray(x, dtype=np.float64)).T  # (frames, mels)
    m = (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-6)
    return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-9)


def locate(phrase: np.ndarray, sentence: np.ndarray) -> Match:
    """The span of `sentence` (samples) that best matches `phrase`."""
    q, r = _frames(phrase), _frames(sentence)
    cost = 1.0 - q @ r.T  # (n_query, n_ref)
    n, m = cost.shape
    inf = np.inf
    acc = cost[0].copy()  # a path may start at any sentence frame
    origin = np.arange(m)  # where the path through each cell started
    for i in range(1, n):
        prev = np.full((3, m), inf)
        prev[0] = acc  # stay on the same sentence frame
        prev[1, 1:] = acc[:-1]  # one frame on
        prev[2, 2:] = acc[:-2]  # two frames on
        step = prev.argmin(axis=0)
        cols = np.arange(m) - step
        acc = prev[step, np.arange(m)] + cost[i]
        origin = np.where(np.isfinite(acc), origin[np.clip(cols, 0, m - 1)], 0)
    end = int(acc.argmin())
    return Match(start=int(origin[end]) * HOP_LENGTH, end=(end + 1) * HOP_LENGTH, cost=float(acc[end] / n))
