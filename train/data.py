"""Corpora in the seed's layout, their per-file feature frames, and training windows.

Features come from kws_stream's own front ends, so a model sees in training exactly what
the daemon computes: the seed's log-mel (log_mel, window_at, WindowFeatures) or the
speech embeddings (file_embeddings, one 96-dim frame per 80 ms).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws_stream import embedding
from kws_stream.audio import AudioError, read_file
from kws_stream.frontend import (FEATURE_SIZE, FRAMES_PER_SECOND, WINDOW_FRAMES, SeedFrontEnd, WindowFeatures, log_mel,
                                 window_at)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    """One front end seen from training: per-file frames and the window grid over them."""
    front_end: str  # the runtime front end's name, written into the model's metadata
    rate: float  # frames per second
    window: int  # frames per window
    tail: int  # frames a window may run past the last start (seed: half a window of padding)
    reach: int = 0  # frames of audio past s + window that a window starting at s still hears


SEED = Features(front_end=SeedFrontEnd.name, rate=FRAMES_PER_SECOND, window=WINDOW_FRAMES,
                tail=WINDOW_FRAMES // 2)
EMBEDDING = Features(front_end=embedding.EmbeddingFrontEnd.name, rate=embedding.EMBEDDINGS_PER_SECOND,
                     window=embedding.WINDOW_EMBEDDINGS, tail=embedding.WINDOW_EMBEDDINGS - 1,
                     reach=-(-(embedding.EMB_SPAN - embedding.EMB_HOP) // embedding.EMB_HOP))


def kind_of(front_end: str) -> Features:
    return next(k for k in (SEED, EMBEDDING) if k.front_end == front_end)


@dataclass
class Corpus:
    files: list[Path]
    bounds: dict[str, tuple[float, float]]  # uid -> target span in seconds, positives only
    mels: list[np.ndarray]  # per file, time on axis 1: seed (48, n_frames); embedding (96, n_embeddings)
    kind: Features = SEED

    def label(self, i: int) -> int:
        return int(self.files[i].stem in self.bounds)

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(len(self.files))], dtype=np.int64)


def corpus_files(root: str | Path) -> tuple[list[Path], dict[str, tuple[float, float]]]:
    root = Path(root)
    files = sorted((root / "audio").glob("*.opus"))
    if not files:
        raise FileNotFoundError(f"{root}/audio holds no .opus files")
    raw = json.loads((root / "word_bounds.json").read_text()) if (root / "word_bounds.json").exists() else {}
    return files, {k: (float(v[0]), float(v[1])) for k, v in raw.items()}


def load_corpus(root: str | Path, cache_dir: str | Path | None = None, jobs: int = 1,
                kind: Features = SEED) -> Corpus:
    """Read every file's frames, from one cache file per corpus and front end when it is current."""
    files, bounds = corpus_files(root)
    cache = None
    if cache_dir is not None:
        stamp = hashlib.sha1("".join(f"{f}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]
        prefix = "mels" if kind is SEED else kind.front_end
        cache = Path(cache_dir) / f"{prefix}-{stamp}.npz"
        if cache.exists():
            with np.load(cache) as z:
                flat, offsets = z["mels"], z["offsets"]
            return Corpus(files, bounds, [flat[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])], kind)
    read = file_mel if kind is SEED else file_embedding_frames
    if jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            mels = pool.map(read, files, chunksize=16)
    else:
        mels = [read(f) for f in files]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [m.shape[1] for m in mels])
        np.savez(cache, mels=np.concatenate(mels, axis=1), offsets=offsets)
    return Corpus(files, bounds, mels, kind)


def load_corpora(roots: list[str], cache_dir: str | Path | None = None, jobs: int = 1,
                 exclude_engine: str | None = None, kind: Features = SEED) -> Corpus:
    """Several corpora as one; calls made by `exclude_engine` (per manifest.jsonl) left out."""
    files, bounds, mels = [], {}, []
    for root in roots:
        c = load_corpus(root, cache_dir, jobs, kind)
        skip = engine_calls(root, exclude_engine) if exclude_engine else set()
        for f, m in zip(c.files, c.mels):
            if f.stem not in skip:
                files.append(f)
                mels.append(m)
        bounds.update({k: v for k, v in c.bounds.items() if k not in skip})
    return Corpus(files, bounds, mels, kind)


def engine_calls(root: str | Path, engine: str) -> set[str]:
    manifest = Path(root) / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: needed to leave out engine {engine!r}")
    return {m["uid"] for m in map(json.loads, manifest.read_text(encoding="utf-8").splitlines())
            if m.get("engine") == engine}


def file_mel(path: Path) -> np.ndarray:
    try:
        return log_mel(read_file(path)).astype(np.float32)
    except AudioError as e:
        raise RuntimeError(f"{path}: {e}") from e


def file_embedding_frames(path: Path) -> np.ndarray:
    """(96, n) speech embeddings of a file as the daemon's stream computes them."""
    try:
        return np.ascontiguousarray(embedding.file_embeddings(read_file(path)).T)
    except AudioError as e:
        raise RuntimeError(f"{path}: {e}") from e


# -- windows ----------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str = "improved"  # "seed": the notebook's 4 windows per file; "improved": see windows()
    windows_per_file: int = 4
    spec_augment: bool = True
    min_cover: float = 0.9  # a window is positive when it holds this share of the phrase


def phrase_frames(corpus: Corpus, i: int) -> tuple[int, int] | None:
    b = corpus.bounds.get(corpus.files[i].stem)
    if b is None:
        return None
    rate = corpus.kind.rate
    return int(b[0] * rate), int(np.ceil(b[1] * rate))


def seed_starts(rng: np.random.Generator, n_frames: int, phrase: tuple[int, int] | None, k: int) -> list[int]:
    """The notebook's choice: a positive's window centred on its phrase plus random ones."""
    last = max(n_frames - WINDOW_FRAMES, 0)
    starts = [int(rng.integers(0, last + 1)) for _ in range(k)]
    if phrase is not None:
        centre = (phrase[0] + phrase[1]) // 2
        starts[0] = min(max(0, centre - WINDOW_FRAMES // 2), last)
    return starts


def improved_windows(rng: np.random.Generator, n_frames: int, phrase: tuple[int, int] | None, k: int,
                     min_cover: float, kind: Features = SEED) -> list[tuple[int, int]]:
    """(start, label) pairs: for a positive, one window with the whole phrase at a random
    offset and windows clear of it (label 0); for a negative, random windows including
    ones running past the end, as the daemon's last windows do."""
    out = []
    width = kind.window
    hi = max(n_frames - kind.tail, 1)
    if phrase is not None:
        a, b = phrase
        lo_s, hi_s = max(0, b - width), min(a, hi - 1)
        out.append((int(rng.integers(lo_s, max(lo_s, hi_s) + 1)), 1))
    while len(out) < k:
        s = int(rng.integers(0, hi))
        if phrase is None:
            out.append((s, 0))
            continue
        a, b = phrase
        cover = max(0, min(b, s + width) - max(a, s)) / max(b - a, 1)
        if clear_of(s, phrase, kind):
            out.append((s, 0))
        elif cover >= min_cover:
            out.append((s, 1))
        # partly covered phrases are ambiguous: not used
        if len(out) < k and rng.random() < 0.05:
            break
    return out


def clear_of(s: int, phrase: tuple[int, int] | None, kind: Features) -> bool:
    """True when the window starting at s hears nothing of the phrase."""
    return phrase is None or s + kind.window + kind.reach <= phrase[0] or s >= phrase[1]


def negative_pool(corpus: Corpus) -> np.ndarray:
    """(file, start) of every target-free window on a half-second grid: all windows of
    negative files and the windows of positive files clear of the phrase."""
    kind = corpus.kind
    step = max(1, int(kind.rate // 2))
    pool = []
    for i, mel in enumerate(corpus.mels):
        phrase = phrase_frames(corpus, i)
        pool += [(i, s) for s in range(0, max(mel.shape[1] - kind.tail, 1), step) if clear_of(s, phrase, kind)]
    return np.array(pool, dtype=np.int64).reshape(-1, 2)


def spec_augment(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    w = w.copy()
    fill = float(w.mean())
    for _ in range(2):
        t = int(rng.integers(0, 16))
        t0 = int(rng.integers(0, WINDOW_FRAMES - t + 1))
        w[:, t0:t0 + t] = fill
        f = int(rng.integers(0, 6))
        f0 = int(rng.integers(0, w.shape[0] - f + 1))
        w[f0:f0 + f, :] = fill
    return w


def embedding_augment(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """SpecAugment's idea on embedding frames (96, W): mask a few frames and dimensions."""
    w = w.copy()
    fill = w.mean(axis=1, keepdims=True)
    t = int(rng.integers(0, 4))
    t0 = int(rng.integers(0, w.shape[1] - t + 1))
    w[:, t0:t0 + t] = fill
    dims = rng.choice(w.shape[0], size=int(rng.integers(0, 10)), replace=False)
    w[dims, :] = fill[dims]
    return w


def window_of(corpus: Corpus, i: int, s: int, rng: np.random.Generator | None, feats: WindowFeatures) -> np.ndarray:
    """Features of the window starting at frame s of file i (augmented when rng is given)."""
    mel = corpus.mels[i]
    if corpus.kind is SEED:
        w = window_at(mel, s).astype(np.float64)
        if rng is not None:
            w = spec_augment(rng, w)
        return feats(w, np.empty(FEATURE_SIZE, dtype=np.float32))
    w = mel[:, s:s + corpus.kind.window]
    if rng is not None:
        w = embedding_augment(rng, w)
    return np.ascontiguousarray(w.T).reshape(-1)


def epoch_windows(corpus: Corpus, recipe: Recipe, rng: np.random.Generator, indices: np.ndarray | None = None):
    """Features and labels for one epoch.

    seed recipe: X (n_files, k, FEATURE_SIZE) and file labels (MIL, max over windows).
    improved: X (n_windows, FEATURE_SIZE) and window labels.
    """
    indices = np.arange(len(corpus.files)) if indices is None else indices
    feats = WindowFeatures()
    k = recipe.windows_per_file
    if recipe.name == "seed":
        if corpus.kind is not SEED:
            raise ValueError("the seed recipe is defined on the seed's features only")
        x = np.empty((len(indices), k, FEATURE_SIZE), dtype=np.float32)
        for row, i in enumerate(indices):
            mel = corpus.mels[i]
            for j, s in enumerate(seed_starts(rng, mel.shape[1], phrase_frames(corpus, i), k)):
                feats(window_at(mel, s).astype(np.float64), x[row, j])
        return x, corpus.labels[indices].astype(np.float32)
    xs, ys = [], []
    for i in indices:
        n = corpus.mels[i].shape[1]
        for s, y in improved_windows(rng, n, phrase_frames(corpus, i), k, recipe.min_cover, corpus.kind):
            augment = recipe.spec_augment and rng.random() < 0.5
            xs.append(window_of(corpus, i, s, rng if augment else None, feats))
            ys.append(y)
    return np.stack(xs), np.array(ys, dtype=np.float32)
