"""Pseudo-speakers: a synthetic voice's pitch and vocal-tract length moved independently.

The WORLD vocoder (pyworld, MIT) splits speech into F0, spectral envelope and
aperiodicity. Scaling F0 moves the pitch; warping the envelope's frequency axis by a
factor moves the formants as a longer or shorter vocal tract would. Resynthesis keeps
the frame times, so word bounds stay where they were.
"""
from __future__ import annotations

import warnings

import numpy as np

from kws_stream.frontends import SAMPLE_RATE

FRAME_MS = 5.0


def _world():
    with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import pyworld
    return pyworld


def warp_envelope(sp: np.ndarray, factor: float) -> np.ndarray:
    """Envelope with formants moved by `factor` (> 1: higher, a shorter vocal tract)."""
    bins = np.arange(sp.shape[1], dtype=np.float64)
    source = np.clip(bins / factor, 0, sp.shape[1] - 1)
    lo = np.floor(source).astype(np.int64)
    hi = np.minimum(lo + 1, sp.shape[1] - 1)
    w = source - lo
    return sp[:, lo] * (1 - w) + sp[:, hi] * w


def convert(x: np.ndarray, pitch: float, formant: float) -> np.ndarray:
    """x (float64, 16 kHz) with F0 times `pitch` and formants times `formant`, same length."""
    pw = _world()
    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.dio(x, SAMPLE_RATE, frame_period=FRAME_MS)
    f0 = pw.stonemask(x, f0, t, SAMPLE_RATE)
    sp = pw.cheaptrick(x, f0, t, SAMPLE_RATE)
    ap = pw.d4c(x, f0, t, SAMPLE_RATE)
    y = pw.synthesize(f0 * pitch, np.ascontiguousarray(warp_envelope(sp, formant)), ap, SAMPLE_RATE,
                      frame_period=FRAME_MS)
    y = np.pad(y, (0, max(0, x.size - y.size)))[:x.size]
    peak = np.abs(y).max()
    return y * (np.abs(x).max() / peak) if peak > 0 else y


def pick(rng: np.random.Generator) -> tuple[float, float]:
    """A pseudo-speaker: pitch 0.75-1.35 and formants 0.88-1.14, drawn independently."""
    return float(np.exp(rng.uniform(np.log(0.75), np.log(1.35)))), float(rng.uniform(0.88, 1.14))
