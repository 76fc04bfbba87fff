"""File replay: recordings go through exactly the streaming path, fast or paced.

`scan_file` runs one file through a Spotter; `replay` runs many, in order, in this
process or in worker processes whose results are identical; `run_replay` is the whole
`kws-stream --file` job: events out, totals, the CSV.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import pool
from .audio import BLOCK_SECONDS, STDIN, AudioError, StdinFormat, iter_input
from .events import ReplayTotals, StreamSummary, error_event, finished_event, stream_end_event
from .model import KwsModel, ModelError
from .plot import Envelope
from .spotter import Detection, OnWindow, Spotter, SpotterConfig

log = logging.getLogger(__name__)

REALTIME_BLOCK_SECONDS = 0.1  # paced replay feeds audio as a device would


def stream_name(path: str) -> str:
    return "stdin" if path == STDIN else str(path)


@dataclass
class FileResult:
    path: str
    detections: list[Detection] = field(default_factory=list)
    max_score: float | None = None  # the seed's file probability: the highest window score
    audio_seconds: float = 0.0
    windows: int = 0
    gated: int = 0  # of the windows, those the speech gate left unscored
    bad_scores: int = 0  # of the windows, those the model gave no probability (counted as 0)
    error: str | None = None  # why the file failed (it may still have detections from before)
    interrupted: bool = False  # a stop came before the end of the file
    window_starts: np.ndarray | None = None  # with keep_scores: every window's start and end, in samples,
    window_ends: np.ndarray | None = None
    window_probs: np.ndarray | None = None  # and its probability
    envelope: tuple[np.ndarray, np.ndarray] | None = None  # with keep_scores: the waveform's min and max (--plot)

    @property
    def stream(self) -> str:
        """The name events give this file's stream."""
        return stream_name(self.path)

    def summary(self) -> StreamSummary:
        return StreamSummary(self.stream, self.audio_seconds, self.windows, len(self.detections),
                             self.max_score if self.max_score is not None else 0.0, self.gated,
                             self.bad_scores)


def scan_file(path: str, model: KwsModel, config: SpotterConfig, realtime: bool = False,
              on_detection: Callable[[Detection], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False, on_window: OnWindow | None = None,
              keep_scores: bool = False, stdin: StdinFormat = StdinFormat()) -> FileResult:
    """Replay one file (`-`: stdin); detections go to on_detection as they happen and into
    the result, every window's score to on_window (and into the result with keep_scores,
    with the waveform's envelope)."""
    result = FileResult(path=str(path))
    envelope = Envelope() if keep_scores else None
    starts: list[float] = []
    ends: list[float] = []
    probs: list[float] = []
    if keep_scores:
        def on_window(start: float, end: float, prob: float, chained=on_window) -> None:
            starts.append(start)
            ends.append(end)
            probs.append(prob)
            if chained is not None:
                chained(start, end, prob)
    spotter = Spotter(model, stream=stream_name(path), config=config, on_window=on_window)

    def emit(found: list[Detection]) -> None:
        result.detections.extend(found)
        if on_detection is not None:
            for det in found:
                on_detection(det)

    began = time.monotonic()
    try:
        block = REALTIME_BLOCK_SECONDS if realtime else 0.1 if path == STDIN else BLOCK_SECONDS
        for chunk in iter_input(str(path), stdin, block):
            if envelope is not None:
                envelope.add(chunk)
            emit(spotter.feed(chunk))
            if realtime:
                ahead = spotter.audio_seconds - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            if should_stop():
                result.interrupted = True
                break
        else:
            emit(spotter.finish())
    except AudioError as e:
        result.error = str(e)
        if spotter.audio_seconds:
            emit(spotter.finish())  # what was read is scored, to its end
    result.audio_seconds = spotter.audio_seconds
    result.windows = spotter.windows
    result.gated = spotter.gated
    result.bad_scores = spotter.bad_scores
    if spotter.windows:
        result.max_score = spotter.max_score
    if keep_scores:
        result.window_starts = (np.array(starts) * spotter.sample_rate).round().astype(np.int64)
        result.window_ends = (np.array(ends) * spotter.sample_rate).round().astype(np.int64)
        result.window_probs = np.array(probs)
        result.envelope = envelope.arrays()
    return result


# -- worker processes ----------------------------------------------------------

_worker: dict = {}


def _init_worker(model_path: str, config: SpotterConfig, sha256: str | None, keep_scores: bool) -> None:
    _worker["config"], _worker["keep_scores"] = config, keep_scores
    try:
        _worker["model"] = KwsModel(model_path, expect_sha256=sha256)  # the very file the parent checked
    except ModelError as e:  # a failing initializer would make the pool respawn workers forever
        _worker["model"] = None
        _worker["error"] = f"model {e}"


def _scan_in_worker(path: str) -> FileResult:
    if _worker["model"] is None:
        return FileResult(path=path, error=_worker["error"])
    return scan_file(path, _worker["model"], _worker["config"], keep_scores=_worker["keep_scores"])


def replay(paths: Iterable[str], model: KwsModel, config: SpotterConfig, jobs: int = 1, realtime: bool = False,
           on_detection: Callable[[Detection], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False, keep_scores: bool = False,
           stdin: StdinFormat = StdinFormat()) -> Iterator[FileResult]:
    """Yield one FileResult per path, in input order.

    With jobs > 1 files are scored in worker processes and a file's detections are
    delivered when the file is done; the results are the same as with jobs == 1.
    """
    paths = [str(p) for p in paths]
    if jobs <= 1 or len(paths) <= 1:
        for path in paths:
            if should_stop():
                return
            yield scan_file(path, model, config, realtime, on_detection, should_stop, keep_scores=keep_scores,
                            stdin=stdin)
        return
    for result in pool.imap(_scan_in_worker, paths, jobs, _init_worker,
                            (str(model.path), config, model.sha256, keep_scores), should_stop):
        if on_detection is not None:
            for det in result.detections:
                on_detection(det)
        yield result


# -- the whole job: inputs, events, totals, CSV, scores, plots ------------------------

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}


class InputError(Exception):
    """An input argument that cannot be expanded: a list file that cannot be read."""


def expand_inputs(items: list[str]) -> list[str]:
    """Paths to replay: a directory is searched recursively for audio files (sorted; one
    without any is kept, to fail as an input),
    @LIST is a file of paths (one per line; blank lines and # comments skipped), `-` is
    stdin and must come alone, anything else is a file (checked when it is read)."""
    paths: list[str] = []
    for item in items:
        if not item.strip():  # Path("") is the working directory: never search it by accident
            raise InputError("--file: an empty or blank path (an unset variable?)")
        if item.startswith("@") and len(item) > 1:
            try:
                lines = Path(item[1:]).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"{item[1:]}: cannot read the list of files ({getattr(e, 'strerror', None) or e})"
                                 ) from None
            paths += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        elif Path(item).is_dir():
            found = sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            paths += found or [item]  # a folder without audio fails as an input, like a bad file
        else:
            paths.append(item)
    if not paths:
        raise InputError("--file: no files to replay (an empty list?)")
    if STDIN in paths and len(paths) > 1:
        raise InputError("--file - (stdin) must be the only input")
    return paths


def file_ids(paths: list[str]) -> list[str]:
    """CSV ids: the file's stem, as the seed has it, unless stems collide; then the path
    relative to the files' common parent (without, then with its suffix)."""
    stems = ["stdin" if p == STDIN else Path(p).stem for p in paths]
    clash = Counter(stems)
    if all(n == 1 for n in clash.values()):
        return stems
    absolute = [Path(os.path.abspath(p)) for p in paths]  # symlinks kept as the user named them
    parent = Path(os.path.commonpath([str(a.parent) for s, a in zip(stems, absolute) if clash[s] > 1]))
    ids = [str(a.relative_to(parent).with_suffix("")) if clash[s] > 1 else s for s, a in zip(stems, absolute)]
    again = Counter(ids)
    ids = [str(a.relative_to(parent)) if again[i] > 1 and clash[s] > 1 else i
           for i, s, a in zip(ids, stems, absolute)]
    seen: Counter = Counter()
    out = []
    for i in ids:  # the same file given twice
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def check_writable(path: str, folder: bool = False) -> None:
    """Raise OSError now if `path` (a file, or a folder to write into) cannot be written,
    before an hour of audio is scored."""
    target = Path(path)
    if folder:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"{path}: not a directory")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"{path}: cannot make the folder ({e.strerror or e})") from None
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(f"{path}: permission denied")
        return
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(f"{path}: is a directory")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise PermissionError(f"{path}: permission denied")


def write_csv_atomically(path: str, rows: list[tuple[str, int, float]]) -> None:
    """Write id,label,score rows to a temporary file beside `path`, then rename it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "score"])
            w.writerows((name, label, f"{score:.6f}") for name, label, score in rows)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def score_lines(result: FileResult, stream: str, rate: int) -> Iterator[str]:
    """--scores: one JSON line per scored window."""
    for a, b, p in zip(result.window_starts.tolist(), result.window_ends.tolist(), result.window_probs.tolist()):
        yield json.dumps({"stream": stream, "start": round(a / rate, 3), "end": round(b / rate, 3),
                          "score": round(p, 6)}, ensure_ascii=False) + "\n"


@dataclass
class ReplayJob:
    """`kws-stream --file`: every file through `replay`; its detections to the publisher as
    they are found, one status event per file, the totals at the end; and the CSV, the
    window scores and the plots when asked for."""
    paths: list[str]
    model: KwsModel
    config: SpotterConfig
    publisher: object  # anything with publish(event), dropped, sent, drain_exhausted
    jobs: int = 1
    realtime: bool = False
    csv: str | None = None
    scores: str | None = None
    plot: str | None = None
    stdin: StdinFormat = StdinFormat()
    rows: list[tuple[str, int, float]] = field(default_factory=list)
    plot_failures: int = 0

    def _plot(self, result: FileResult, threshold: float, file_id: str) -> None:
        from .plot import plot_file
        out = Path(self.plot) / f"{file_id.replace('/', '_')}.png"
        try:
            plot_file(result, threshold, out, self.model.front_end_class.sample_rate)
        except (OSError, ValueError) as e:  # the picture, not the scoring, failed: one line
            self.plot_failures += 1
            log.error("%s: cannot write the plot (%s)", out, getattr(e, "strerror", None) or e)

    def run(self, should_stop: Callable[[], bool],
            on_result: Callable[[FileResult], None] | None = None) -> ReplayTotals:
        threshold = self.config.threshold_for(self.model)
        ids = iter(file_ids(self.paths))  # results come in input order, one per path
        files = failed = detections = 0
        seconds = 0.0
        keep = bool(self.scores or self.plot)
        scores = open(self.scores, "w", encoding="utf-8") if self.scores else None
        try:
            for result in replay(self.paths, self.model, self.config, self.jobs, self.realtime,
                                 lambda det: self.publisher.publish(det.event()), should_stop, keep, self.stdin):
                file_id = next(ids)
                files += 1
                seconds += result.audio_seconds
                detections += len(result.detections)
                if keep and result.window_probs is not None:
                    if scores is not None:
                        scores.writelines(score_lines(result, result.stream, self.model.front_end_class.sample_rate))
                        scores.flush()
                    if self.plot and result.audio_seconds > 0:  # a file that failed before any audio: no picture
                        self._plot(result, threshold, file_id)
                if on_result is not None:
                    on_result(result)
                if result.interrupted:
                    break
                if result.error is not None:
                    failed += 1
                    log.error("%s: %s", result.stream, result.error)
                    self.publisher.publish(error_event(result.stream, result.error))
                    self.publisher.publish(stream_end_event(result.summary(), reason="error"))
                    continue
                self.rows.append((file_id, int(result.max_score >= threshold), result.max_score))
                self.publisher.publish(stream_end_event(result.summary()))
        finally:
            if scores is not None:
                scores.close()
        if self.csv:
            try:
                write_csv_atomically(self.csv, self.rows)
            except OSError as e:
                log.error("%s: cannot write CSV (%s)", self.csv, e.strerror or e)
                failed += 1
        pub = self.publisher
        failed += self.plot_failures
        totals = ReplayTotals(files, seconds, detections, failed, pub.dropped, pub.sent, pub.drain_exhausted,
                              should_stop())
        pub.publish(finished_event(totals))
        return totals
