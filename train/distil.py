"""`python -m kws_train.distil`: train the mel-student network (kws_train.nets.MelStudent)
to give speech_embedding's embeddings from the mel frames alone.

The teacher's embeddings and the mel frames both come from the front ends' caches
(`oww-embedding-v1` and `oww-mel-v1`; what a --cache does not hold yet is computed
and written there first). Each step takes
random stretches of SEGMENT embeddings from the calls and streams, and the student
learns to give the teacher's embedding at every one, each dimension's error scaled by that
dimension's spread. No label is used.

Per fold k (`--folds 0 1 2 3`), the student learns only from calls and streams that fold
k's voices did not speak, as fold k's model does, and is written as RUN/foldk/ckpt.pt:
a mel-student checkpoint with the head untrained, which `kws-train folds --arch
mel-student --init RUN` starts from. `--folds all` learns from everything (a model to
ship: RUN/all/ckpt.pt, for `kws-train fit --init`). The same arguments give the same
student: the steps, not the time, are fixed.

    python -m kws_train.distil --data data/folds --negatives data/negatives \\
        --cache runs/cache --folds 0 --steps 20000 --out runs/distil
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from kws_stream.frontends import EmbeddingFrontEnd, MelFrontEnd

from .data import load_corpus
from .fit import write_checkpoint
from .folds import fold_of, manifest
from .nets import MelStudent, ModelConfig, build
from .synth_tts import FOLDS

log = logging.getLogger(__name__)

SEGMENT = 48  # embeddings per training stretch (3.8 s)
STRIDE = MelFrontEnd.rows_per_embedding  # 8 mel frames between embeddings
FIELD = MelFrontEnd.window_frames - STRIDE * (EmbeddingFrontEnd.window_frames - 1)  # 76 mel frames under one


class Stretches:
    """The corpora's mel frames and teacher embeddings, and random aligned stretches of them:
    embedding j of a file hears its mel frames 8j .. 8j + 75."""

    def __init__(self, roots: list[str], cache: str, threads: int):
        self.mels, self.embs, self.folds = [], [], []
        for root in roots:
            mel = load_corpus(root, cache, threads, MelFrontEnd)
            emb = load_corpus(root, cache, threads, EmbeddingFrontEnd)
            metas = manifest(root)
            for f, m, e in zip(mel.files, mel.mels, emb.mels):
                if m.shape[1] != STRIDE * (e.shape[1] - 1) + FIELD:
                    raise RuntimeError(f"{f}: {m.shape[1]} mel frames for {e.shape[1]} embeddings; stale cache?")
                self.mels.append(m)
                self.embs.append(e)
                self.folds.append(fold_of(metas[f.stem]))

    def pool(self, fold: int | None) -> np.ndarray:
        """Files long enough for a stretch, not spoken by fold `fold`'s voices (None: all)."""
        return np.array([i for i, (e, k) in enumerate(zip(self.embs, self.folds))
                         if e.shape[1] >= SEGMENT and (fold is None or k != fold)], dtype=np.int64)

    def batch(self, rng: np.random.Generator, pool: np.ndarray, weights: np.ndarray, size: int):
        mels, embs = [], []
        for i in rng.choice(pool, size=size, p=weights):
            a = int(rng.integers(0, self.embs[i].shape[1] - SEGMENT + 1))
            embs.append(self.embs[i][:, a:a + SEGMENT].T)
            mels.append(self.mels[i][:, STRIDE * a:STRIDE * (a + SEGMENT - 1) + FIELD].T)
        return torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(embs))


def distil(data: Stretches, fold: int | None, steps: int, batch: int, lr: float, seed: int) -> tuple[MelStudent, list]:
    """A student trained on `data` without fold `fold`'s voices; its history of losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = data.pool(fold)
    lengths = np.array([data.embs[i].shape[1] for i in pool], dtype=np.float64)
    weights = lengths / lengths.sum()  # every embedding equally likely
    sample = np.concatenate([data.embs[i] for i in pool[::7]], axis=1)
    mu, sd = (torch.from_numpy(v.astype(np.float32)) for v in (sample.mean(axis=1), sample.std(axis=1) + 1e-3))
    student = MelStudent(ModelConfig().student_channels)
    with torch.no_grad():  # start at the teacher's mean embedding
        student.body[-1].pw.bias.copy_(mu)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    log.info("fold %s: %d files, %.1f h of embeddings", fold, pool.size, lengths.sum() / 12.5 / 3600)
    history, running, began = [], 0.0, time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        x, y = data.batch(rng, pool, weights, batch)
        student.train()
        loss = (((student(x) - y) / sd) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
        if step % 500 == 0 or step == steps:
            history.append({"step": step, "loss": round(running / (500 if step % 500 == 0 else step % 500), 5),
                            "seconds": round(time.time() - began, 1)})
            log.info("fold %s: step %d, loss %.4f", fold, step, history[-1]["loss"])
            running = 0.0
    return student.eval(), history


def save(student: MelStudent, history: list, out: Path, config: dict) -> Path:
    """A mel-student checkpoint in kws-train fit's format: the student distilled, the head as built."""
    model = build(ModelConfig(arch="mel-student"))
    model.student.load_state_dict(student.state_dict())
    return write_checkpoint(out, {"model_args": asdict(ModelConfig(arch="mel-student")), "config": config,
                                  "state_dict": model.state_dict(), "history": history, "distilled": True})


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kws_train.distil", description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR", help="call corpora (--split all)")
    ap.add_argument("--negatives", nargs="*", default=[], metavar="DIR", help="long target-free stream corpora")
    ap.add_argument("--cache", required=True, metavar="DIR", help="the front ends' feature cache")
    ap.add_argument("--folds", nargs="+", default=["0", "1", "2", "3"],
                    help="fold numbers, or all (learn from every voice: a student to ship)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, metavar="RUN")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        folds = checked_folds(args.folds)
        if args.steps < 1 or args.batch < 1:
            raise ValueError(f"--steps {args.steps} and --batch {args.batch}: each at least 1")
        for root in [*args.data, *args.negatives]:
            manifest(root)  # before any feature is computed: each corpus has its calls' voices
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        print(f"kws_train.distil: {_reason(e)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        data = Stretches([*args.data, *args.negatives], args.cache, args.threads)
        pools = {fold: data.pool(fold) for fold in folds}
        empty = [fold for fold, pool in pools.items() if not pool.size]
        if empty:
            raise ValueError(f"no file of {SEGMENT} embeddings or more to learn from without fold {empty[0]}")
    except (OSError, RuntimeError, ValueError) as e:
        print(f"kws_train.distil: {_reason(e)}", file=sys.stderr)
        return 2
    config = {k: v for k, v in vars(args).items() if k != "folds"}
    for fold in folds:
        student, history = distil(data, fold, args.steps, args.batch, args.lr, args.seed)
        try:
            path = save(student, history, Path(args.out) / ("all" if fold is None else f"fold{fold}"),
                        {**config, "fold": fold})
        except OSError as e:
            print(f"kws_train.distil: {args.out}: cannot write the student ({e.strerror or e})", file=sys.stderr)
            return 2
        print(json.dumps({"fold": fold, "ckpt": str(path), "loss": history[-1]["loss"]}))
    return 0


def _reason(e: Exception) -> str:
    """One line naming the thing and the reason."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def checked_folds(given: list[str]) -> list[int | None]:
    """--folds as fold numbers (None: all voices), each once; ValueError names a bad one."""
    folds: list[int | None] = []
    for f in given:
        fold = None if f == "all" else int(f) if f.isdigit() else -1
        if fold is not None and not 0 <= fold < len(FOLDS):
            raise ValueError(f"--folds {f}: a fold number from 0 to {len(FOLDS) - 1}, or all")
        if fold not in folds:
            folds.append(fold)
    return folds


if __name__ == "__main__":
    sys.exit(run())
