"""`--plot DIR`: one picture per replayed file, what a person looks at when a call was or
was not flagged. Needs matplotlib (the `plot` extra); the daemon never imports it.

The figure is 1000 x 400 pixels: the waveform's envelope on top, the window scores below
(each drawn at its window's end, when the daemon decides), the threshold as a dashed red
line and every detection as an orange band over the window it scored. Both strips share
the time axis, which spans the whole file and the last windows, which run past its end.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .audio import STDIN

if TYPE_CHECKING:
    from .replay import FileResult

SIZE = (10.0, 4.0)  # inches, at DPI: 1000 x 400 pixels
DPI = 100
LEFT, WIDTH = 0.07, 0.9  # both strips' horizontal place, as fractions of the figure
WAVE_BOX = (LEFT, 0.70, WIDTH, 0.22)
SCORE_BOX = (LEFT, 0.12, WIDTH, 0.52)
SCORE_COLOR, THRESHOLD_COLOR, DETECTION_COLOR, WAVE_COLOR = "#1f5fbf", "#e00000", "#ff9900", "#777777"
ENVELOPE_STEP = 800  # samples per envelope column: 50 ms (10 h of audio: 720,000 columns)


class PlotError(Exception):
    """matplotlib is missing."""


def require() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotError("--plot needs matplotlib: pip install 'kws-stream[plot]'")


class Envelope:
    """A waveform's min and max per ENVELOPE_STEP samples, gathered block by block while the
    file is scanned, so the picture never reads the audio a second time."""

    def __init__(self):
        self._pending = np.zeros(0)
        self._low: list[np.ndarray] = []
        self._high: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        pending = np.concatenate([self._pending, block])
        n = pending.size // ENVELOPE_STEP * ENVELOPE_STEP
        if n:
            bins = pending[:n].reshape(-1, ENVELOPE_STEP)
            self._low.append(bins.min(axis=1))
            self._high.append(bins.max(axis=1))
        self._pending = pending[n:]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = list(self._low), list(self._high)
        if self._pending.size:
            low.append(self._pending.min(keepdims=True))
            high.append(self._pending.max(keepdims=True))
        return (np.concatenate(low), np.concatenate(high)) if low else (np.zeros(0), np.zeros(0))


def plot_file(result: FileResult, threshold: float, out: Path, rate: int) -> Path:
    """Draw one replayed file's scores (needs keep_scores) into `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ends = result.window_ends / rate
    duration = max(result.audio_seconds, float(ends.max(initial=0.0)), 1e-3)  # the last windows run past the end
    fig = plt.figure(figsize=SIZE, dpi=DPI)
    wave_ax, score_ax = fig.add_axes(WAVE_BOX), fig.add_axes(SCORE_BOX)
    low, high = result.envelope if result.envelope is not None else (np.zeros(0), np.zeros(0))
    if low.size:
        t = (np.arange(low.size) + 0.5) * ENVELOPE_STEP / rate
        wave_ax.fill_between(t, low, high, color=WAVE_COLOR, linewidth=0)
    wave_ax.set_xlim(0, duration)
    wave_ax.set_ylim(-1, 1)
    wave_ax.set_xticks([])
    wave_ax.set_yticks([])
    wave_ax.set_title(result.path if result.path != STDIN else "stdin", fontsize=9)
    for det in result.detections:
        score_ax.axvspan(det.start, det.end, color=DETECTION_COLOR, alpha=0.35, linewidth=0)
    score_ax.plot(ends, result.window_probs, color=SCORE_COLOR, linewidth=1.5, marker="o", markersize=2.5)
    score_ax.axhline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.2)
    score_ax.set_xlim(0, duration)
    score_ax.set_ylim(-0.02, 1.02)
    score_ax.set_xlabel("seconds of audio", fontsize=8)
    score_ax.set_ylabel("score", fontsize=8)
    score_ax.tick_params(labelsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
