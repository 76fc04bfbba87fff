"""One audio stream in, detections out: front end, model and detector together.

Audio time is a sample counter: window times, hops and the refractory period all
come from it, so a replayed file and a live microphone behave the same.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .events import detection_event
from .frontends import windows
from .model import KwsModel

log = logging.getLogger(__name__)

SCORE_SLACK = 1e-6  # a model value this far outside [0, 1] is rounding, clipped; beyond, a broken model's

OnWindow = Callable[[float, float, float], None]  # (start s, end s, probability) of every window (0: gated)


@dataclass(frozen=True)
class SpotterConfig:
    hop_seconds: float = 1.0  # scoring hop; one frame hop (0.01 s) at the finest
    threshold: float | None = None  # None: the model's own threshold
    refractory_seconds: float = 2.5  # no new detection for windows ending this soon after one
    max_batch: int = 64  # windows scored in one model call when audio arrives in big chunks
    gate_margin_db: float | None = None  # speech gate (frontends/gate.py); None: the model's own, 0: none
    cascade: bool = True  # a cascade model: the whole ensemble only where the threshold can be reached

    def cascade_threshold(self, model: KwsModel, threshold: float) -> float | None:
        """What KwsModel.score needs to cascade (None: score every window in full)."""
        return threshold if self.cascade and model.info.cascade else None

    def threshold_for(self, model: KwsModel) -> float:
        """The threshold in force: the one given, else the model's own."""
        return model.info.threshold if self.threshold is None else self.threshold

    def gate_for(self, model: KwsModel) -> float:
        """The speech gate's margin in force (0: every window is scored, as on a front end
        without a gate)."""
        if not model.front_end_class.gates:
            return 0.0
        return model.info.gate_margin_db if self.gate_margin_db is None else self.gate_margin_db


@dataclass(frozen=True)
class Detection:
    stream: str
    label: str
    score: float
    threshold: float
    start: float  # seconds of audio time from the start of the stream
    end: float
    seq: int  # 1, 2, ... per stream
    model: str
    model_version: str

    def event(self) -> dict:
        """The detection as the JSON-ready event kws-stream publishes (see events.py)."""
        return detection_event(self)


class Detector:
    """Threshold plus a refractory period in samples: one phrase, one event."""

    def __init__(self, threshold: float, refractory_samples: int):
        self.threshold = threshold
        self.refractory_samples = refractory_samples
        self.reset()

    def reset(self) -> None:
        self._last_end = None

    def __call__(self, score: float, end_sample: int) -> bool:
        if score < self.threshold:
            return False
        if self._last_end is not None and end_sample - self._last_end < self.refractory_samples:
            return False
        self._last_end = end_sample
        return True


class Spotter:
    """Feed 16 kHz mono audio in chunks of any size; get Detections back.

    `on_window(start_s, end_s, prob)` is called for every window, in order; prob is 0 for
    one the speech gate skipped.
    """

    def __init__(self, model: KwsModel, stream: str = "stream", config: SpotterConfig = SpotterConfig(),
                 on_window: OnWindow | None = None):
        self.model, self.stream, self.config, self.on_window = model, stream, config, on_window
        fe_cls = model.front_end_class
        self.sample_rate = fe_cls.sample_rate
        hop_frames = max(1, round(config.hop_seconds * self.sample_rate / fe_cls.hop_length))
        self.front_end = model.front_end(hop_frames, config.gate_for(model))
        self.detector = Detector(config.threshold_for(model), round(config.refractory_seconds * self.sample_rate))
        self._window = np.empty(model.feature_size, dtype=np.float32)
        self._batch = np.empty((config.max_batch, model.feature_size), dtype=np.float32)
        self._starts = np.empty(config.max_batch, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self.front_end.reset()
        self.detector.reset()
        self._waiting: list[tuple[int, np.ndarray | None]] = []  # queued windows: (start, features or None if gated)
        self.windows = 0
        self.gated = 0  # windows the speech gate left unscored (counted in windows, score 0)
        self.detections = 0
        self.bad_scores = 0  # model outputs outside [0, 1] or not finite, counted as 0
        self._warned = False
        self.max_score = -math.inf

    def replace_model(self, model: KwsModel) -> None:
        """Score with another model of the same front end from the next window on,
        keeping the stream's audio, time and detector state. A speech gate may change its
        margin, but not be turned on or off (the front end keeps its state either way)."""
        if model.front_end_class is not self.model.front_end_class:
            raise ValueError("replace_model needs a model with the same front end")
        gate = getattr(self.front_end, "gate", None)
        margin = self.config.gate_for(model)
        if bool(margin) != (gate is not None):
            raise ValueError(f"{model.path}: the speech gate would be turned {'on' if margin else 'off'}; "
                             "restart to switch")
        if gate is not None:
            gate.retune(margin)
        self.model = model
        self._warned = False  # a new model warns anew
        self.detector.threshold = self.config.threshold_for(model)

    @property
    def audio_seconds(self) -> float:
        return self.front_end.samples_in / self.sample_rate

    def feed(self, audio: np.ndarray) -> list[Detection]:
        """Take the next samples (a float numpy array, mono, 16 kHz); return the detections they complete."""
        audio = _checked(audio)
        if self.front_end.store(audio):  # the usual 10 ms hop completes no window
            return []
        return self._windows(audio)

    def queue(self, audio: np.ndarray | None) -> int:
        """Like feed (None: like finish), but keep the windows the audio completes unscored,
        for `score_together` to score many streams' windows in one model call. Returns how
        many windows wait."""
        fe = self.front_end
        if audio is not None:
            audio = _checked(audio)
            if fe.store(audio):
                return len(self._waiting)
        for start in windows(fe, audio, self._window):
            self._waiting.append((start, None if fe.skipped else self._window.copy()))
        return len(self._waiting)

    def deliver(self, probs: np.ndarray) -> list[Detection]:
        """Apply the probabilities of the waiting windows that the gate let through, in
        order; return the detections."""
        found: list[Detection] = []
        scored = sum(features is not None for _, features in self._waiting)
        if len(probs) != scored:
            raise ValueError(f"deliver got {len(probs)} probabilities for {scored} scored windows")
        probs = iter(np.asarray(probs, dtype=np.float64))
        for start, features in self._waiting:
            if features is None:
                self._gated(start)
            else:
                self._apply([start], np.array([next(probs)]), found)
        self._waiting.clear()
        return found

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator[Detection]:
        """Every detection of a whole stream: feed each chunk, then finish() at its end.
        The way to use a Spotter on a file, so the last windows are never forgotten."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.finish()

    def finish(self) -> list[Detection]:
        """End of stream: score the windows that run past its end, padded as the seed does."""
        return self._windows(None)

    def _windows(self, audio: np.ndarray | None) -> list[Detection]:
        """Score the windows `audio` completes (None: the end of the stream), in batches."""
        found: list[Detection] = []
        n = 0
        fe = self.front_end
        for start in windows(fe, audio, self._window):
            if fe.skipped:  # score what waits first: windows stay in order
                if n:
                    self._score(n, found)
                    n = 0
                self._gated(start)
                continue
            self._starts[n] = start
            self._batch[n] = self._window
            n += 1
            if n == self.config.max_batch:
                self._score(n, found)
                n = 0
        if n:
            self._score(n, found)
        return found

    def _score(self, n: int, found: list[Detection]) -> None:
        probs = self.model.score(self._batch[:n], self.config.cascade_threshold(self.model, self.detector.threshold))
        self._apply(self._starts[:n].tolist(), probs, found)

    def _gated(self, start_frame: int) -> None:
        """A window the speech gate left out: it counts, scores 0 and never detects."""
        self.windows += 1
        self.gated += 1
        self.max_score = max(self.max_score, 0.0)
        if self.on_window is not None:
            start = start_frame * self.front_end.hop_length
            self.on_window(start / self.sample_rate, (start + self.front_end.window_samples) / self.sample_rate, 0.0)

    def _apply(self, starts: list[int], probs: np.ndarray, found: list[Detection]) -> None:
        bad = ~((probs >= -SCORE_SLACK) & (probs <= 1.0 + SCORE_SLACK))  # NaN compares false
        if bad.any():  # a broken model's value never gets out
            if not self._warned:
                self._warned = True
                log.warning("%s: the model gave a score that is not a probability (%s); counted as 0",
                            self.model.path, float(probs[bad][0]))
            self.bad_scores += int(bad.sum())
            probs = np.where(bad, 0.0, probs)
        probs = np.clip(probs, 0.0, 1.0)  # float rounding of a mean or a calibration
        fe = self.front_end
        for start_frame, prob in zip(starts, probs.tolist()):
            start = start_frame * fe.hop_length
            end = start + fe.window_samples
            self.windows += 1
            self.max_score = max(self.max_score, prob)
            if self.on_window is not None:
                self.on_window(start / self.sample_rate, end / self.sample_rate, prob)
            if self.detector(prob, end):
                self.detections += 1
                info = self.model.info
                found.append(Detection(self.stream, info.label, prob, self.detector.threshold,
                                       start / self.sample_rate, end / self.sample_rate,
                                       self.detections, info.name, info.version))


def _checked(audio: np.ndarray) -> np.ndarray:
    if audio.ndim != 1:
        raise ValueError(f"Spotter.feed expects mono audio of shape (n,), got {audio.shape}")
    # one pass for the usual case (NaN compares False); the ufunc's own reduce skips .max()'s wrappers
    if not audio.size or np.maximum.reduce(np.abs(audio)) <= 1.0:
        return audio
    if not np.isfinite(audio).all():
        raise ValueError("Spotter.feed got NaN or Inf samples")
    return np.clip(audio, -1.0, 1.0)  # over full scale: clip, or the front end overflows


def score_together(spotters: Iterable[Spotter]) -> list[tuple[Spotter, list[Detection]]]:
    """Score every queued window of many streams that share one model in one model call;
    each stream's detections, for the streams that had windows waiting. A cascade model
    cascades at the lowest of their thresholds, or not at all if one stream asks for every
    window in full."""
    ready = [s for s in spotters if s._waiting]
    if not ready:
        return []
    scored = [w for s in ready for _, w in s._waiting if w is not None]
    model = ready[0].model
    cut = [s.config.cascade_threshold(model, s.detector.threshold) for s in ready]
    probs = model.score(np.stack(scored), None if None in cut else min(cut)) if scored else np.empty(0)
    out, a = [], 0
    for s in ready:
        k = sum(w is not None for _, w in s._waiting)
        out.append((s, s.deliver(probs[a:a + k])))
        a += k
    return out
