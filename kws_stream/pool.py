"""Worker processes: the one way this project runs work in a process pool.

Workers die with the process that made them (even when it is SIGKILLed) and ignore
Ctrl-C and SIGHUP: the parent owns those signals and stops the pool itself. `imap`
yields results in input order and looks at a stop flag while it waits; `pool_map` is
the plain form training uses. With one job, both run in this process.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from functools import partial
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 0.1  # how often a waiting parent looks at its stop flag


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when the process that made it dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers still end with the pool
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect (reparented)
        os._exit(1)


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    _die_with_parent(parent)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _pool(jobs: int, initializer: Callable[..., None] | None, initargs: tuple, start: str):
    ctx = multiprocessing.get_context(start)
    return ctx.Pool(jobs, initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))


def _apply(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(item) for item in chunk]


def imap(fn: Callable[[T], R], items: Iterable[T], jobs: int = 1, initializer: Callable[..., None] | None = None,
         initargs: tuple = (), should_stop: Callable[[], bool] = lambda: False, start: str = "spawn",
         chunksize: int = 1) -> Iterator[R]:
    """fn over items in `jobs` worker processes, results in input order. Stops (and
    terminates the workers) within POLL_SECONDS of should_stop() turning true."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            if should_stop():
                return
            yield fn(item)
        return
    chunks = [items[a:a + chunksize] for a in range(0, len(items), chunksize)]
    with _pool(min(jobs, len(chunks)), initializer, initargs, start) as pool:
        results = pool.imap(partial(_apply, fn), chunks)  # chunk by chunk, so that next() can time out
        for _ in chunks:
            while True:
                if should_stop():
                    pool.terminate()
                    return
                try:
                    done = results.next(timeout=POLL_SECONDS)
                    break
                except multiprocessing.TimeoutError:
                    continue
            yield from done


def pool_map(fn: Callable[[T], R], items: Iterable[T], jobs: int = 1, initializer: Callable[..., None] | None = None,
             initargs: tuple = (), start: str = "spawn", chunksize: int = 1) -> list[R]:
    """imap's results as a list."""
    return list(imap(fn, items, jobs, initializer, initargs, start=start, chunksize=chunksize))


