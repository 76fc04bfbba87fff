"""`kws-train fit`: train a keyword model on a corpus in the seed's layout.

One flat loop. The checkpoint stores the model config and the whole run config, so
`kws-train export` rebuilds the model from the file alone.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kws_stream.frontends import FRAMES_PER_SECOND, HOP_LENGTH
from kws_stream.model import KwsModel

from .data import Corpus, Recipe, epoch_windows, load_corpora, load_corpus, negative_pool, window_of
from .evaluate import file_metrics
from .nets import ModelConfig, TunedEmbeddingHead, build, parameter_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    data: tuple[str, ...]
    out: str
    val: str | None = None
    arch: str = "cnn"
    recipe: str = "improved"  # seed | improved
    epochs: int = 15
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 42
    threads: int = 2
    cache: str | None = None
    exclude_engine: str | None = None  # leave this engine's calls out of training
    hard_negatives: float = 0.0  # from epoch 2, add this share (of the epoch's windows) of the hardest negatives
    negative_weight: float = 1.0  # target-free windows' loss weight, ramped linearly from 1 to this by the last epoch
    min_cover: float = 0.9  # a training window is positive when it holds this share of the phrase
    skip_easy: float = 0.0  # windows whose probability lies within this of their label are left out of the loss
    band_warp: float = 0.0  # > 0: vocal-tract length perturbation of half the training windows (data.BandWarp)
    time_warp: float = 0.0  # > 0: uneven durations in half the training windows (data.TimeWarp)
    init: str | None = None  # start from this checkpoint (emb-tune: an emb-deep head's, its tail the packaged network)
    # A verifier: every epoch also holds the target-free windows the init model (its first
    # stage) scores at or above candidate_low, at most candidate_share of an epoch's windows.
    candidate_low: float | None = None
    candidate_share: float = 0.25

    @classmethod
    def from_args(cls, args) -> "FitConfig":
        """The settings a `kws-train fit` or `folds` command line gives: every option named as
        a field (the fields a command has no option for keep their defaults)."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, "data": tuple(args.data)})

    def __post_init__(self):
        if not 0.0 <= self.skip_easy < 0.5:
            raise ValueError(f"--skip-easy {self.skip_easy:g}: a probability margin from 0 up to 0.5")
        if self.candidate_low is not None:
            if not self.init:
                raise ValueError("--candidate-low trains a verifier of the --init model, and no --init was given")
            if not 0.0 < self.candidate_low < 1.0:
                raise ValueError(f"--candidate-low {self.candidate_low:g}: a probability between 0 and 1, exclusive")
        if self.recipe == "seed" and (self.candidate_low is not None or self.hard_negatives > 0 or self.band_warp
                                      or self.time_warp):
            raise ValueError("the seed recipe trains on whole files: no --hard-negatives, --candidate-low, "
                             "--band-warp or --time-warp")
        if self.band_warp or self.time_warp:  # a bad warp is refused before anything loads
            Recipe(band_warp=self.band_warp, time_warp=self.time_warp).warps(ModelConfig(arch=self.arch).front_end)


def window_scores(model: nn.Module | KwsModel, corpus: Corpus, hop_seconds: float = 1.0,
                  batch: int = 4096) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per file, (window start in samples, probability) of the windows the daemon scores
    every hop_seconds, computed in batch from the cached frames: window k starts at the
    frame grid point at or before k * hop. A torch network or an exported model."""
    fe = corpus.front_end
    hop_frames = int(round(hop_seconds * FRAMES_PER_SECOND))
    hops_per_frame = FRAMES_PER_SECOND / fe.frame_rate  # 10 ms hops per batch frame
    rows, owner, starts = [], [], []
    for i, mel in enumerate(corpus.mels):
        k = 0
        while (s := fe.window_frame(k, hop_frames)) < max(fe.start_limit(mel.shape[1]), 1):
            rows.append(window_of(corpus, i, s))
            owner.append(i)
            starts.append(int(s * hops_per_frame) * HOP_LENGTH)
            k += 1
    probs = np.empty(len(rows), dtype=np.float64)
    if isinstance(model, KwsModel):  # an exported model: score through onnxruntime
        for a in range(0, len(rows), batch):
            probs[a:a + batch] = model.score(np.stack(rows[a:a + batch]))
    else:
        model.eval()
        with torch.no_grad():
            for a in range(0, len(rows), batch):
                probs[a:a + batch] = torch.sigmoid(model(torch.from_numpy(np.stack(rows[a:a + batch])))).numpy()
    owner, starts = np.array(owner), np.array(starts)
    return [(starts[owner == i], probs[owner == i]) for i in range(len(corpus.mels))]


def file_scores(model: nn.Module, corpus: Corpus) -> np.ndarray:
    """The seed's file probability (the best window, one every second): quick validation."""
    return np.array([p.max(initial=0.0) for _, p in window_scores(model, corpus)])


def pool_logits(model: nn.Module, corpus, pool: np.ndarray, batch: int = 2048) -> np.ndarray:
    """The model's logit for every (file, start) window of the pool."""
    scores = np.empty(len(pool), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        if hasattr(model, "file_logits"):  # a network over the frames (MelStudentHead): once per file
            order = np.argsort(pool[:, 0], kind="stable")
            files, first = np.unique(pool[order, 0], return_index=True)
            for i, rows in zip(files, np.split(order, first[1:])):
                scores[rows] = model.file_logits(corpus.mels[i], pool[rows, 1]).numpy()
            return scores
        for a in range(0, len(pool), batch):
            x = np.stack([window_of(corpus, i, s) for i, s in pool[a:a + batch]])
            scores[a:a + batch] = model(torch.from_numpy(x)).numpy()
    return scores


def hardest_negatives(model: nn.Module, corpus, pool: np.ndarray, k: int):
    """Features of the k target-free windows the model scores highest, and the pool's
    highest score: hard-negative mining over every negative window of the corpus."""
    scores = pool_logits(model, corpus, pool)
    top = np.argsort(scores)[-k:]
    x = np.stack([window_of(corpus, i, s) for i, s in pool[top]])
    return x, float(scores[top[-1]])


def candidates(model: nn.Module, corpus, pool: np.ndarray, low: float, k: int) -> np.ndarray:
    """The pool's windows a first stage passes (probability >= low), at most the k it
    scores highest: the target-free windows a verifier is trained to reject."""
    scores = pool_logits(model, corpus, pool)
    passed = np.flatnonzero(scores >= np.log(low / (1 - low)))
    return pool[passed[np.argsort(scores[passed])[::-1][:k]]]


def best_on_grid(labels: np.ndarray, scores: np.ndarray) -> dict:
    return max((file_metrics(labels, scores, t) for t in np.linspace(0.05, 0.95, 19)), key=lambda m: m["score"])


def fit(cfg: FitConfig) -> dict:
    """Load the corpora named by cfg, train, and write RUN/ckpt.pt and RUN/metrics.json."""
    fe = ModelConfig(arch=cfg.arch).front_end
    cache = cfg.cache or str(Path(cfg.out) / "cache")
    train = load_corpora(list(cfg.data), cache, jobs=cfg.threads, exclude_engine=cfg.exclude_engine, front_end=fe)
    val = load_corpus(cfg.val, cache, jobs=cfg.threads, front_end=fe) if cfg.val else None
    model, history = train_model(cfg, train, val)
    save(cfg, model, history, train)
    return {"history": history}


def train_model(cfg: FitConfig, train, val=None) -> tuple[nn.Module, list[dict]]:
    """The training loop over loaded corpora: per-window BCE (or the seed's MIL), cosine
    learning rate, hard-negative mining from epoch 2, a verifier's candidates in every
    epoch, target-free windows weighted up over the epochs when asked; val scored each
    epoch if given."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = build(ModelConfig(arch=cfg.arch))
    if cfg.init:
        warm_start(model, cfg.init)
    recipe = Recipe(name=cfg.recipe, min_cover=cfg.min_cover, band_warp=cfg.band_warp, time_warp=cfg.time_warp)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.recipe != "seed" else None
    labels = train.labels
    pos_weight = torch.tensor([(labels == 0).sum() / max((labels == 1).sum(), 1)], dtype=torch.float32)
    log.info("train: %d files (%d positive); model %s, %d parameters", len(labels), labels.sum(), cfg.arch,
             parameter_count(model))
    pool = negative_pool(train) if cfg.hard_negatives > 0 or cfg.candidate_low is not None else None
    fixed = None  # a verifier's: the windows its first stage (the init model) passes, in every epoch
    if cfg.candidate_low is not None:
        most = int(cfg.candidate_share * recipe.windows_per_file * len(train.files))  # about an epoch's windows
        picked = candidates(model, train, pool, cfg.candidate_low, most)
        fixed = np.stack([window_of(train, i, s) for i, s in picked]) if len(picked) else None
        log.info("verifier: %d of %d target-free windows pass %.2f", len(picked), len(pool), cfg.candidate_low)
        key = lambda w: w[:, 0] << 32 | w[:, 1]  # noqa: E731  (file, start) as one integer
        pool = pool[~np.isin(key(pool), key(picked))] if cfg.hard_negatives > 0 else None  # no candidate mined too
    history = []
    for epoch in range(1, cfg.epochs + 1):
        began = time.time()
        x, y = epoch_windows(train, recipe, rng)
        hard, n_drawn, mined = None, len(y), None
        if pool is not None and epoch > 1:  # kept apart from x: no copy of the epoch's windows
            hard, top = hardest_negatives(model, train, pool, int(cfg.hard_negatives * len(y)))
            mined = {"windows": len(hard), "pool": len(pool), "top_logit": round(top, 2)}
        if fixed is not None:
            hard = fixed if hard is None else np.concatenate([fixed, hard])
            mined = {**(mined or {}), "candidates": len(fixed)}
        if hard is not None:
            y = np.concatenate([y, np.zeros(len(hard), dtype=np.float32)])
        if cfg.recipe != "seed":  # window labels: weight positives to balance windows
            pos_weight = torch.tensor([(y == 0).sum() / max((y == 1).sum(), 1)], dtype=torch.float32)
        neg_weight = negative_weight(cfg, epoch)
        order = rng.permutation(len(y))
        model.train()
        total = 0.0
        for i in range(0, len(order), cfg.batch):
            idx = order[i:i + cfg.batch]
            if mined is not None:  # drawn windows first, then mined ones
                drawn, extra = idx[idx < n_drawn], idx[idx >= n_drawn]
                idx = np.concatenate([drawn, extra])
                xb = torch.from_numpy(np.concatenate([x[drawn], hard[extra - n_drawn]]))
            else:
                xb = torch.from_numpy(x[idx])
            yb = torch.from_numpy(y[idx])
            logits = model(xb)
            if cfg.recipe == "seed":  # multiple-instance: a file's logit is its best window's
                logits = logits.reshape(len(idx), -1).amax(dim=1)
            loss = window_loss(logits, yb, pos_weight, neg_weight, cfg.skip_easy)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        x = hard = None  # free this epoch's windows before the next epoch's are drawn
        if sched is not None:
            sched.step()
        row = {"epoch": epoch, "loss": total / len(y), "seconds": round(time.time() - began, 1)}
        if neg_weight != 1.0:
            row["negative_weight"] = round(neg_weight, 2)
        if mined is not None:
            row["mined"] = mined
        if val is not None:
            row["val"] = best_on_grid(val.labels, file_scores(model, val))
        history.append(row)
        log.info("epoch %d %s", epoch, json.dumps(row))
    return model, history


def warm_start(model: nn.Module, path: str) -> None:
    """Load a checkpoint's weights: the whole model's if the archs match, else (emb-tune
    from emb-deep) its head's."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    arch = ckpt["model_args"]["arch"]
    target = model.head if isinstance(model, TunedEmbeddingHead) and arch == "emb-deep" else model
    target.load_state_dict(ckpt["state_dict"])
    log.info("started from %s (%s)", path, arch)


def window_loss(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor, neg_weight: float,
                skip_easy: float = 0.0) -> torch.Tensor:
    """Mean BCE over windows (or files), positives weighted pos_weight and target-free ones
    neg_weight: with neg_weight 1, exactly nn.BCEWithLogitsLoss(pos_weight=pos_weight).

    skip_easy > 0 averages only over the windows whose probability is farther than
    skip_easy from their label (openWakeWord keeps target-free windows at >= 0.001 and
    positives below 0.999), so a large neg_weight pushes on the few target-free windows
    that still score, not on the many the model already rejects."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
    loss = loss * torch.where(y > 0.5, 1.0, neg_weight)
    if skip_easy <= 0:
        return loss.mean()
    hard = (torch.sigmoid(logits.detach()) - y).abs() > skip_easy
    return loss[hard].sum() / hard.sum().clamp(min=1)


def negative_weight(cfg: FitConfig, epoch: int) -> float:
    """The loss weight of target-free windows in this epoch: 1 in the first, rising linearly
    to cfg.negative_weight in the last, so the model first learns the phrase and then is
    pushed ever harder off the windows that set the false-accept rate."""
    if cfg.epochs <= 1:
        return cfg.negative_weight
    return 1.0 + (cfg.negative_weight - 1.0) * (epoch - 1) / (cfg.epochs - 1)


def save(cfg: FitConfig, model: nn.Module, history: list[dict], train) -> Path:
    """RUN/ckpt.pt (write_checkpoint) and RUN/metrics.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(history, indent=1))  # before the checkpoint that a rerun reads back
    labels = train.labels
    return write_checkpoint(out, {"model_args": asdict(ModelConfig(arch=cfg.arch)), "config": asdict(cfg),
                                  "state_dict": model.state_dict(), "history": history,
                                  "train_files": len(labels), "train_positives": int(labels.sum())})


def write_checkpoint(out: Path, ckpt: dict) -> Path:
    """OUT/ckpt.pt, written whole or not at all (a run killed while saving leaves none)."""
    out.mkdir(parents=True, exist_ok=True)
    part = out / "ckpt.pt.part"
    torch.save(ckpt, part)
    os.replace(part, out / "ckpt.pt")
    return out / "ckpt.pt"


def trained_before(cfg: FitConfig) -> tuple[nn.Module, list[dict]] | None:
    """The model and history RUN/ckpt.pt holds when a run with exactly these settings
    finished it; None when there is none, or it was trained otherwise."""
    path = Path(cfg.out) / "ckpt.pt"
    if not path.exists():
        return None
    from .export import load_checkpoint  # export does not import fit: no cycle, but kept local
    model, ckpt = load_checkpoint(str(path))
    defaults = {f.name: f.default for f in fields(FitConfig)}  # settings added since that run: their defaults
    before, now = {**defaults, **(ckpt.get("config") or {})}, asdict(cfg)
    if before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        log.info("%s was trained with other settings (%s): training again", path, ", ".join(changed))
        return None
    return model, ckpt["history"]


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        cfg = FitConfig.from_args(args)
    except ValueError as e:
        print(f"kws-train fit: {e}", file=sys.stderr)
        return 2
    try:
        fit(cfg)
    except FileNotFoundError as e:
        print(f"kws-train fit: {e}", file=sys.stderr)
        return 2
    return 0
