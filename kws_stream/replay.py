"""File replay: recordings go through exactly the streaming path, fast or paced.

`scan_file` runs one file through a Spotter; `replay` runs many, in order, in this
process or in a pool of worker processes whose results are identical.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .audio import AudioError, iter_file
from .model import KwsModel, ModelError
from .spotter import Detection, Spotter, SpotterConfig

log = logging.getLogger(__name__)

REALTIME_BLOCK_SECONDS = 0.1  # paced replay feeds audio as a device would


@dataclass
class FileResult:
    path: str
    detections: list[dict] = field(default_factory=list)
    max_score: float | None = None  # the seed's file probability: the highest window score
    audio_seconds: float = 0.0
    windows: int = 0
    error: str | None = None

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def scan_file(path: str, model: KwsModel, config: SpotterConfig, realtime: bool = False,
              on_detection: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] = lambda: False
              ) -> FileResult:
    """Replay one file; detections go to on_detection as they happen and into the result."""
    result = FileResult(path=str(path))
    spotter = Spotter(model, stream=str(path), config=config)

    def emit(found: list[Detection]) -> None:
        for det in found:
            event = det.event()
            result.detections.append(event)
            if on_detection is not None:
                on_detection(event)

    began = time.monotonic()
    try:
        block = REALTIME_BLOCK_SECONDS if realtime else None
        for chunk in iter_file(path, **({"block_seconds": block} if block else {})):
            emit(spotter.feed(chunk))
            if realtime:
                ahead = spotter.audio_seconds - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            if should_stop():
                result.error = "interrupted"
                break
        else:
            emit(spotter.finish())
    except AudioError as e:
        result.error = str(e)
    result.audio_seconds = spotter.audio_seconds
    result.windows = spotter.windows
    if spotter.windows:
        result.max_score = spotter.max_score
    return result


# -- worker processes ----------------------------------------------------------

_worker: dict = {}


PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 0.1  # how often the parent looks at the stop flag while workers score


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when the process that made it dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers still end with the pool
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect (reparented)
        os._exit(1)


def _init_worker(model_path: str, config: SpotterConfig, parent: int, sha256: str | None = None) -> None:
    _die_with_parent(parent)
    # The parent owns Ctrl-C, SIGTERM and SIGHUP: it stops the pool itself.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker["config"] = config
    try:
        _worker["model"] = KwsModel(model_path, expect_sha256=sha256)  # the very file the parent checked
    except ModelError as e:  # a failing initializer would make the pool respawn workers forever
        _worker["model"] = None
        _worker["error"] = f"model {e}"


def _scan_in_worker(path: str) -> FileResult:
    if _worker["model"] is None:
        return FileResult(path=path, error=_worker["error"])
    return scan_file(path, _worker["model"], _worker["config"])


def replay(paths: Iterable[str], model: KwsModel, config: SpotterConfig, jobs: int = 1, realtime: bool = False,
           on_detection: Callable[[dict], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False) -> Iterator[FileResult]:
    """Yield one FileResult per path, in input order.

    With jobs > 1 files are scored in worker processes and a file's detections are
    delivered when the file is done; the results are the same as with jobs == 1.
    """
    paths = list(paths)
    if jobs <= 1 or len(paths) <= 1:
        for path in paths:
            if should_stop():
                return
            yield scan_file(path, model, config, realtime, on_detection, should_stop)
        return
    ctx = multiprocessing.get_context("spawn")  # no forked onnxruntime or ZeroMQ state
    with ctx.Pool(min(jobs, len(paths)), initializer=_init_worker,
                  initargs=(str(model.path), config, os.getpid(), model.sha256)) as pool:
        results = pool.imap(_scan_in_worker, paths)
        for _ in paths:
            while True:  # wait for the next file, but never longer than POLL_SECONDS past a stop
                if should_stop():
                    pool.terminate()
                    return
                try:
                    result = results.next(timeout=POLL_SECONDS)
                    break
                except multiprocessing.TimeoutError:
                    continue
            if on_detection is not None:
                for event in result.detections:
                    on_detection(event)
            yield result
