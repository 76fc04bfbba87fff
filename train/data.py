"""Corpora in the seed's layout, their per-file feature frames, and training windows.

Features come from kws_stream's own front ends through their batch view (`file_frames`,
`features`), so a model sees in training exactly what the daemon computes, and nothing
here depends on which front end it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws_stream.audio import AudioError, read_file
from kws_stream.frontends import FrontEnd, SeedFrontEnd

from kws_stream.pool import pool_map

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    files: list[Path]
    bounds: dict[str, tuple[float, float]]  # uid -> target span in seconds, positives only
    mels: list[np.ndarray]  # per file, the front end's batch frames, time on axis 1
    front_end: type[FrontEnd] = SeedFrontEnd

    def label(self, i: int) -> int:
        return int(self.files[i].stem in self.bounds)

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(len(self.files))], dtype=np.int64)


def corpus_files(root: str | Path) -> tuple[list[Path], dict[str, tuple[float, float]]]:
    root = Path(root)
    files = sorted((root / "audio").glob("*.opus"))
    listed = root / "manifest.jsonl"
    if listed.exists():  # a synth corpus: its calls are the manifest's (a stopped run leaves more audio)
        uids = {json.loads(line)["uid"] for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()}
        extra = [f for f in files if f.stem not in uids]
        if extra:
            log.warning("%s: %d audio files are not in manifest.jsonl (a synth run stopped past --n?); left out",
                        root, len(extra))
            files = [f for f in files if f.stem in uids]
    if not files:
        raise FileNotFoundError(f"{root}/audio holds no .opus files")
    raw = json.loads((root / "word_bounds.json").read_text()) if (root / "word_bounds.json").exists() else {}
    return files, {k: (float(v[0]), float(v[1])) for k, v in raw.items()}


def load_corpus(root: str | Path, cache_dir: str | Path | None = None, jobs: int = 1,
                front_end: type[FrontEnd] = SeedFrontEnd) -> Corpus:
    """Read every file's frames, from one cache file per corpus and front end when it is current."""
    files, bounds = corpus_files(root)
    cache = None
    if cache_dir is not None:
        stamp = hashlib.sha1("".join(f"{f}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{front_end.name}-{stamp}.npz"
        if cache.exists():
            with np.load(cache) as z:
                flat, offsets = z["mels"], z["offsets"]
            return Corpus(files, bounds, [flat[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])], front_end)
    mels = pool_map(file_frames, [(front_end.name, f) for f in files], jobs, chunksize=16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [m.shape[1] for m in mels])
        np.savez(cache, mels=np.concatenate(mels, axis=1), offsets=offsets)
    return Corpus(files, bounds, mels, front_end)


def load_corpora(roots: list[str], cache_dir: str | Path | None = None, jobs: int = 1,
                 exclude_engine: str | None = None, front_end: type[FrontEnd] = SeedFrontEnd) -> Corpus:
    """Several corpora as one; calls made by `exclude_engine` (per manifest.jsonl) left out."""
    files, bounds, mels = [], {}, []
    for root in roots:
        c = load_corpus(root, cache_dir, jobs, front_end)
        skip = engine_calls(root, exclude_engine) if exclude_engine else set()
        for f, m in zip(c.files, c.mels):
            if f.stem not in skip:
                files.append(f)
                mels.append(m)
        bounds.update({k: v for k, v in c.bounds.items() if k not in skip})
    return Corpus(files, bounds, mels, front_end)


def engine_calls(root: str | Path, engine: str) -> set[str]:
    manifest = Path(root) / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: needed to leave out engine {engine!r}")
    return {m["uid"] for m in map(json.loads, manifest.read_text(encoding="utf-8").splitlines())
            if m.get("engine") == engine}


def file_frames(item: tuple[str, Path]) -> np.ndarray:
    """A file's batch frames from the named front end, as the daemon's stream computes them."""
    name, path = item
    from kws_stream import frontends
    try:
        return frontends.get(name).file_frames(read_file(path))
    except AudioError as e:
        raise RuntimeError(f"{path}: {e}") from e


# -- windows ----------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str = "improved"  # "seed": the notebook's 4 windows per file; "improved": see windows()
    windows_per_file: int = 4
    spec_augment: bool = True
    min_cover: float = 0.9  # a window is positive when it holds this share of the phrase
    band_warp: float = 0.0  # > 0: half the windows warped along frequency (BandWarp)
    time_warp: float = 0.0  # > 0: half the windows' durations moved unevenly (TimeWarp)

    def warps(self, fe: type[FrontEnd]) -> list["Warp"]:
        """The warps this recipe applies to windows of `fe`; ValueError names one it cannot."""
        return [w(fe, most) for w, most in ((BandWarp, self.band_warp), (TimeWarp, self.time_warp)) if most]


class Warp:
    """A training augmentation that moves a window's features along one axis by factors
    drawn log-uniformly from 1/(1 + most) to 1 + most. Only front ends whose features are
    frames of spectral bands (`FrontEnd.band_hz`) can be warped."""

    option = ""

    def __init__(self, fe: type[FrontEnd], most: float):
        """ValueError, in one line naming the option, unless `fe` can be warped by `most`."""
        if not 0.0 < most < 1.0:
            raise ValueError(f"{self.option} {most:g}: a relative warp between 0 and 1, exclusive")
        self.hz = fe.band_hz()  # read once: the mel front end's comes from its packaged filterbank
        if self.hz is None:
            raise ValueError(f"{self.option}: the front end {fe.name} has no frames of spectral bands to warp "
                             "(the mel student's has)")
        self.shape, self.most = fe.feature_shape, most

    def factors(self, rng: np.random.Generator, n: int | None = None):
        return np.exp(rng.uniform(-np.log1p(self.most), np.log1p(self.most), n))

    @staticmethod
    def resample(x: np.ndarray, source: np.ndarray, axis: int) -> np.ndarray:
        """x read at fractional positions `source` along axis, linearly between neighbours."""
        lo = np.floor(source).astype(np.int64)
        hi = np.minimum(lo + 1, x.shape[axis] - 1)
        w = (source - lo).astype(np.float32)
        w = w if axis == 1 else w[:, None]
        return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


class BandWarp(Warp):
    """Vocal-tract length perturbation: every band takes the value its centre frequency
    divided by the factor had (the edge bands repeat), so formants and harmonics move by
    the factor, as a shorter (> 1) or longer (< 1) vocal tract would move them."""

    option = "--band-warp"

    def __call__(self, features: np.ndarray, rng: np.random.Generator) -> None:
        """Warp one window's flat, time-major features in place by a random factor."""
        self.apply(features, float(self.factors(rng)))

    def apply(self, features: np.ndarray, factor: float) -> None:
        source = np.interp(self.hz / factor, self.hz, np.arange(self.hz.size, dtype=np.float64))
        bands = features.reshape(self.shape)
        bands[:] = self.resample(bands, source, axis=1)


class TimeWarp(Warp):
    """Durations moved unevenly: the window is cut into SEGMENTS equal stretches (about
    0.12 s each on the mel front end, a phone's length), each given a length of 1/(1 + most)
    to 1 + most times its own, and the whole squeezed back into the window, so its first
    and last frames stay and no content leaves it (a positive window still holds its
    phrase). Local rates then lie within (1 + most)^2 either way, and vowels and consonants
    last in other proportions than the synthesiser gave them."""

    option = "--time-warp"
    SEGMENTS = 20

    def __call__(self, features: np.ndarray, rng: np.random.Generator) -> None:
        """Warp one window's flat, time-major features in place."""
        frames = features.reshape(self.shape)
        last = self.shape[0] - 1
        lengths = self.factors(rng, self.SEGMENTS)  # each stretch's length in the output
        out_knots = np.concatenate([[0.0], np.cumsum(lengths)]) * (last / lengths.sum())
        source = np.interp(np.arange(self.shape[0], dtype=np.float64), out_knots,
                           np.linspace(0.0, last, self.SEGMENTS + 1))
        frames[:] = self.resample(frames, source, axis=0)


def phrase_frames(corpus: Corpus, i: int) -> tuple[int, int] | None:
    b = corpus.bounds.get(corpus.files[i].stem)
    if b is None:
        return None
    rate = corpus.front_end.frame_rate
    return int(b[0] * rate), int(np.ceil(b[1] * rate))


def seed_starts(rng: np.random.Generator, n_frames: int, phrase: tuple[int, int] | None, k: int,
                width: int) -> list[int]:
    """The notebook's choice: a positive's window centred on its phrase plus random ones."""
    last = max(n_frames - width, 0)
    starts = [int(rng.integers(0, last + 1)) for _ in range(k)]
    if phrase is not None:
        centre = (phrase[0] + phrase[1]) // 2
        starts[0] = min(max(0, centre - width // 2), last)
    return starts


def improved_windows(rng: np.random.Generator, n_frames: int, phrase: tuple[int, int] | None, k: int,
                     min_cover: float, front_end: type[FrontEnd] = SeedFrontEnd) -> list[tuple[int, int]]:
    """(start, label) pairs: for a positive, one window with the whole phrase at a random
    offset and windows clear of it (label 0); for a negative, random windows including
    ones running past the end, as the daemon's last windows do. Starts are any frame: on
    the rows front end half of them are odd rows, which the daemon's grid never starts on
    (the tail's time pool then pairs rows the other way), a shift the models trained with."""
    out = []
    width = front_end.window_frames
    hi = max(n_frames - front_end.tail, 1)
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
        if clear_of(s, phrase, front_end):
            out.append((s, 0))
        elif cover >= min_cover:
            out.append((s, 1))
        # partly covered phrases are ambiguous: not used
        if len(out) < k and rng.random() < 0.05:
            break
    return out


def clear_of(s: int, phrase: tuple[int, int] | None, front_end: type[FrontEnd]) -> bool:
    """True when the window starting at s hears nothing of the phrase."""
    return phrase is None or s + front_end.window_frames + front_end.reach <= phrase[0] or s >= phrase[1]


def negative_pool(corpus: Corpus) -> np.ndarray:
    """(file, start) of every target-free window on a grid of about half a second: all
    windows of negative files and the windows of positive files clear of the phrase."""
    fe = corpus.front_end
    grid = getattr(fe, "rows_per_embedding", 1)  # the embedding grid: 8 mel frames on the mel front end
    step = max(1, int(fe.frame_rate // 2)) // grid * grid  # about half a second: 50 seed frames, 6 embeddings, 48 mel frames
    pool = []
    for i, mel in enumerate(corpus.mels):
        phrase = phrase_frames(corpus, i)
        pool += [(i, s) for s in range(0, max(mel.shape[1] - fe.tail, 1), step) if clear_of(s, phrase, fe)]
    return np.array(pool, dtype=np.int64).reshape(-1, 2)


def window_of(corpus: Corpus, i: int, s: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Features of the window starting at frame s of file i (masked when rng is given)."""
    fe = corpus.front_end
    return fe.features(corpus.mels[i], s, np.empty(fe.feature_size, dtype=np.float32), rng)


def epoch_windows(corpus: Corpus, recipe: Recipe, rng: np.random.Generator, indices: np.ndarray | None = None):
    """Features and labels for one epoch.

    seed recipe: X (n_files, k, FEATURE_SIZE) and file labels (MIL, max over windows).
    improved: X (n_windows, FEATURE_SIZE) and window labels; half the windows masked
    (spec_augment), and half warped by each of the recipe's warps, each drawn on its own.
    """
    indices = np.arange(len(corpus.files)) if indices is None else indices
    fe = corpus.front_end
    k = recipe.windows_per_file
    if recipe.name == "seed":
        x = np.empty((len(indices), k, fe.feature_size), dtype=np.float32)
        for row, i in enumerate(indices):
            mel = corpus.mels[i]
            for j, s in enumerate(seed_starts(rng, mel.shape[1], phrase_frames(corpus, i), k, fe.window_frames)):
                fe.features(mel, s, x[row, j])
        return x, corpus.labels[indices].astype(np.float32)
    x = np.empty((len(indices) * k, fe.feature_size), dtype=np.float32)  # at most k per file; the rest is never touched
    ys = []
    warps = recipe.warps(fe)
    for i in indices:
        n = corpus.mels[i].shape[1]
        for s, y in improved_windows(rng, n, phrase_frames(corpus, i), k, recipe.min_cover, fe):
            augment = recipe.spec_augment and rng.random() < 0.5
            fe.features(corpus.mels[i], s, x[len(ys)], rng if augment else None)
            for warp in warps:
                if rng.random() < 0.5:
                    warp(x[len(ys)], rng)
            ys.append(y)
    return x[:len(ys)], np.array(ys, dtype=np.float32)
