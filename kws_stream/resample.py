"""Band-limited resampling between any two integer rates, streamed chunk by chunk.

A Kaiser-windowed sinc in polyphase form (Smith's bandlimited interpolation): with
`up / down` = to / rate in lowest terms, output n sits at input position n * down / up,
and its value is the input weighed by the filter phase of that position's fraction.
Ratios with up to MAX_PHASES phases (every common audio rate) keep one exact phase each;
others interpolate linearly between MAX_PHASES tabulated phases (a timing error under
1e-6 of an input sample's worth of filter). The cutoff sits just under the lower rate's
Nyquist frequency: from 48 kHz to 16 kHz a tone at 7.3 kHz loses 0.3 dB and one at 7.5 kHz
2 dB; tones from 8.6 kHz up leave less than -85 dB behind, while 8.0-8.6 kHz is the
transition band (8.3 kHz: -69 dB). Chunks of any size give the same samples as one call
over the whole signal, and output n belongs to time n / to: no filter delay.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CUTOFF = 0.48  # of the lower of the two rates: about the -6 dB point
ZERO_CROSSINGS = 32  # of the sinc on each side of a tap's centre
KAISER_BETA = 8.6
MAX_PHASES = 1024  # exact phases up to this many; beyond, interpolated between this many
SMALL_RATIO = 12  # up * down at most this: correlations per input residue
PHASE_LOOP = 8  # outputs per phase in one call from which a loop over phases beats a gather
GATHER = 2048  # outputs gathered at a time


class Resampler:
    """Streaming resampler from `rate` to `to` Hz; a pass-through when they are equal.

    `resampler(x)` takes the next samples (1-D) and returns, as float64, the output they
    complete; `resampler(x, last=True)` also flushes the end of the stream, which then
    takes no more samples until `reset()`.
    """

    def __init__(self, rate: int, to: int):
        if rate <= 0 or to <= 0:
            raise ValueError(f"sample rates must be positive, got {rate} -> {to}")
        self.rate, self.to = rate, to
        g = math.gcd(rate, to)
        self.up, self.down = to // g, rate // g
        self.passthrough = rate == to
        if not self.passthrough:
            self.exact = self.up <= MAX_PHASES
            self._bank = _filter_bank(self.up if self.exact else MAX_PHASES, min(1.0, self.up / self.down))
            self.half = self._bank.shape[1] // 2
        self.reset()

    def reset(self) -> None:
        self._n = 0  # the next output sample
        self._ended = False
        if not self.passthrough:
            self._start = 1 - self.half  # input index of _buf[0]: zeros stand before the signal
            self._buf = np.zeros(self.half - 1)
            self._inputs = 0

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"Resampler expects mono samples of shape (n,), got {x.shape}")
        if self._ended:
            raise ValueError("this stream has ended (last=True); reset() to start another")
        self._ended = last
        if self.passthrough:
            return x
        self._inputs += x.size
        parts = [self._buf, x]
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
        """Outputs _n .. end-1 from buf; then _n = end."""
        count = max(end - self._n, 0)
        if count == 0:
            y = np.empty(0)
        elif not self.exact or count < PHASE_LOOP * self.up:
            y = self._gathered(buf, end)
        elif self.up * self.down <= SMALL_RATIO:
            y = self._by_residue(buf, count)
        else:
            y = self._by_phase(buf, count)
        self._n = end
        return y

    def _gathered(self, buf: np.ndarray, end: int) -> np.ndarray:
        """Each output's own taps and filter phase (interpolated between the two nearest
        tabulated phases when they are not exact): for few outputs per phase. In slices
        of GATHER outputs, so the gathered taps stay a few MB."""
        y = np.empty(max(end - self._n, 0))
        view = sliding_window_view(buf, self._bank.shape[1])
        for a in range(0, y.size, GATHER):
            n = np.arange(self._n + a, min(self._n + a + GATHER, end), dtype=np.int64)
            rows = view[n * self.down // self.up - self.half + 1 - self._start]
            if self.exact:
                h = self._bank[n * self.down % self.up]
            else:
                where = (n * self.down % self.up) * (MAX_PHASES / self.up)
                lower = where.astype(np.int64)
                w = (where - lower)[:, None]
                h = (1 - w) * self._bank[lower] + w * self._bank[lower + 1]
            y[a:a + n.size] = np.einsum("nk,nk->n", rows, h)
        return y

    def _by_phase(self, buf: np.ndarray, count: int) -> np.ndarray:
        """Outputs one `up` apart share a phase and read inputs `down` apart: one strided
        matrix-vector product per phase."""
        y = np.empty(count)
        taps = sliding_window_view(buf, self._bank.shape[1])
        for o in range(self.up):
            n = self._n + o
            first = n * self.down // self.up - self.half + 1 - self._start
            y[o::self.up] = taps[first::self.down][:len(range(o, count, self.up))] @ self._bank[n * self.down % self.up]
        return y

    def _by_residue(self, buf: np.ndarray, count: int) -> np.ndarray:
        """For a small ratio (48 to 16 kHz, 8 to 16 kHz): per phase, a correlation for each
        residue of the input index modulo `down`, faster than a strided product."""
        y = np.zeros(count)
        width = self._bank.shape[1]
        for o in range(self.up):
            n = self._n + o
            first = n * self.down // self.up - self.half + 1 - self._start
            h = self._bank[n * self.down % self.up]
            k = len(range(o, count, self.up))
            out = y[o::self.up]
            for m in range(min(self.down, width)):
                out += np.correlate(buf[first + m::self.down][:k + (width - m - 1) // self.down], h[m::self.down],
                                    "valid")
        return y


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """A whole signal from `rate` to `to` Hz: ceil(len(x) * to / rate) samples."""
    return Resampler(rate, to)(x, last=True)


@lru_cache(maxsize=16)
def _filter_bank(phases: int, ratio: float) -> np.ndarray:
    """(phases + 1, 2 * half) taps: row r weighs the inputs around position i + r / phases,
    where tap j reads input i - half + 1 + j (row `phases` is position i + 1, for
    interpolation). `ratio` is to / rate, at most 1. Each row sums to 1, so a constant
    passes unchanged."""
    cutoff = 2 * CUTOFF * ratio  # in cycles per input sample, times 2
    half = math.ceil(ZERO_CROSSINGS / cutoff)
    d = np.arange(phases + 1)[:, None] / phases + (half - 1 - np.arange(2 * half))[None, :]  # distance to each tap
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (d / half) ** 2, 0.0, None))) / np.i0(KAISER_BETA)
    bank = cutoff * np.sinc(cutoff * d) * window
    bank /= bank.sum(axis=1, keepdims=True)
    bank.flags.writeable = False  # shared by every Resampler of this ratio
    return bank
