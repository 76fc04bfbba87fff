"""Band-limited resampling between any two integer rates, streamed chunk by chunk.

A Kaiser-windowed sinc in polyphase form (Smith's bandlimited interpolation at a rational
ratio): with `up / down` = to / rate in lowest terms, output n sits at input position
n * down / up and is the input weighed by one of `up` precomputed filter phases. The
cutoff sits just under the lower rate's Nyquist frequency: from 48 kHz to 16 kHz a tone
at 7.3 kHz loses 0.3 dB and one at 7.5 kHz 2 dB, and tones from 8.6 kHz up leave less
than -90 dB behind (tests/test_resample.py). Chunks of any size give the same samples as
one call over the whole signal, and output n belongs to time n / to: no filter delay.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CUTOFF = 0.48  # of the lower of the two rates: about the -6 dB point
ZERO_CROSSINGS = 32  # of the sinc on each side of a tap's centre
KAISER_BETA = 8.6
SMALL_RATIO = 12  # up * down at most this: correlations per input residue instead of strided products


class Resampler:
    """Streaming resampler from `rate` to `to` Hz; a pass-through when they are equal.

    `resampler(x)` takes the next float samples and returns the output they complete;
    `resampler(x, last=True)` also flushes the end of the stream (then `reset()` to reuse).
    """

    def __init__(self, rate: int, to: int):
        if rate <= 0 or to <= 0:
            raise ValueError(f"sample rates must be positive, got {rate} -> {to}")
        self.rate, self.to = rate, to
        g = math.gcd(rate, to)
        self.up, self.down = to // g, rate // g
        self.passthrough = rate == to
        if not self.passthrough:
            self._bank = _filter_bank(self.up, self.down)
            self.half = self._bank.shape[1] // 2
        self.reset()

    def reset(self) -> None:
        self._n = 0  # the next output sample
        if not self.passthrough:
            self._start = 1 - self.half  # input index of _buf[0]: zeros stand before the signal
            self._buf = np.zeros(self.half - 1)
            self._inputs = 0

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return x
        self._inputs += x.size
        parts = [self._buf, np.asarray(x, dtype=np.float64)]
        if last:
            parts.append(np.zeros(self.half + self.down))  # the zeros after the signal
            end = -(-self._inputs * self.up // self.down)  # outputs that start inside the signal
        else:
            ready = self._start + self._buf.size + x.size - self.half  # inputs whose taps have all arrived
            end = max(self._n, -(-ready * self.up // self.down))
        buf = np.concatenate(parts)
        y = self._run(buf, end)
        nxt = self._n * self.down // self.up - self.half + 1  # the first input the next output reads
        self._buf = buf[nxt - self._start:].copy()
        self._start = nxt
        return y

    def _run(self, buf: np.ndarray, end: int) -> np.ndarray:
        """Outputs _n .. end-1 from buf. Outputs one `up` apart share a filter phase and
        read inputs `down` apart: per phase, one strided matrix-vector product, or for a
        small ratio (48 to 16 kHz, 8 to 16 kHz) a correlation per input residue, faster."""
        count = end - self._n
        y = np.empty(max(count, 0))
        if count <= 0:
            return y
        width = self._bank.shape[1]
        taps = None if self.up * self.down <= SMALL_RATIO else sliding_window_view(buf, width)
        for o in range(min(self.up, count)):
            n = self._n + o
            first = n * self.down // self.up - self.half + 1 - self._start
            h = self._bank[n * self.down % self.up]
            k = len(range(o, count, self.up))
            if taps is not None:
                y[o::self.up] = taps[first::self.down][:k] @ h
                continue
            out = y[o::self.up]
            out[:] = 0.0
            for m in range(min(self.down, width)):
                xs = buf[first + m::self.down][:k + (width - m - 1) // self.down]
                out += np.correlate(xs, h[m::self.down], "valid")
        self._n = end
        return y


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """A whole signal from `rate` to `to` Hz: ceil(len(x) * to / rate) samples."""
    return Resampler(rate, to)(x, last=True)


@lru_cache(maxsize=16)
def _filter_bank(up: int, down: int) -> np.ndarray:
    """(up, 2 * half) taps: row r weighs the inputs around position i + r / up, where tap j
    reads input i - half + 1 + j. Each row sums to 1, so a constant passes unchanged."""
    cutoff = 2 * CUTOFF * min(1.0, up / down)  # in cycles per input sample, times 2
    half = math.ceil(ZERO_CROSSINGS / cutoff)
    d = np.arange(up)[:, None] / up + (half - 1 - np.arange(2 * half))[None, :]  # distance to each tap
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (d / half) ** 2, 0.0, None))) / np.i0(KAISER_BETA)
    bank = cutoff * np.sinc(cutoff * d) * window
    bank /= bank.sum(axis=1, keepdims=True)
    bank.flags.writeable = False  # shared by every Resampler of this ratio
    return bank
