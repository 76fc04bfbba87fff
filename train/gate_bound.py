"""How much a cascade could skip: the bound set by the full model itself.

A first stage must keep nearly every window that holds the phrase (issue 11: lose at most
0.5% of them). No cheap first stage ranks windows better than the full model, so the
share of target-free windows the full model has to let through at that recall is a floor
for any first stage's pass rate, and thus for the embedding work a cascade still does.
Measured on the leave-voices-out folds (each window scored by the fold model that never
heard its voice), on the daemon's window grid:

    python -m kws_train.gate_bound --run runs/folds-deep4 --data data/folds --negatives data/negatives \\
        --cache runs/cache
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .data import phrase_frames
from .export import load_checkpoint
from .fit import window_scores
from .folds import fold_of, load_all, subset
from .nets import ModelConfig

LOSSES = (0.005, 0.01, 0.02)  # shares of phrase windows a first stage may lose


def window_classes(run: str, data: list[str], negatives: str, cache: str, hop: float,
                   folds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the windows that hold the whole phrase, and of the windows that
    hear none of it, from every fold's held-out calls and negative streams."""
    fe = ModelConfig(arch=json.loads(Path(run, "folds.json").read_text())["fit"]["arch"]).front_end
    calls, metas = load_all(data, cache, 2, fe)
    streams, more = load_all([negatives], cache, 2, fe)
    metas.update(more)
    hop_samples = fe.sample_rate / fe.frame_rate  # audio samples per batch frame
    phrase, clear = [], []
    for k in folds:
        held = lambda uid, k=k: fold_of(metas[uid]) == k  # noqa: E731
        model, _ = load_checkpoint(str(Path(run) / f"fold{k}" / "ckpt.pt"))
        for corpus in (subset(calls, held), subset(streams, held)):
            for i, (starts, probs) in enumerate(window_scores(model, corpus, hop)):
                span = phrase_frames(corpus, i)
                for start, p in zip(starts, probs):
                    s = int(start // hop_samples)
                    if span is None or s + fe.window_frames + fe.reach <= span[0] or s >= span[1]:
                        clear.append(p)
                    elif s <= span[0] and s + fe.window_frames >= span[1]:
                        phrase.append(p)
    return np.array(phrase), np.array(clear)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, metavar="RUN", help="a `kws-train folds` run directory")
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR")
    ap.add_argument("--negatives", required=True, metavar="DIR")
    ap.add_argument("--cache", required=True, metavar="DIR")
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    args = ap.parse_args(argv)
    phrase, clear = window_classes(args.run, args.data, args.negatives, args.cache, args.hop, args.folds)
    rows = []
    for loss in LOSSES:
        t = float(np.quantile(phrase, loss))
        rows.append({"phrase_windows_lost": loss, "first_stage_threshold": t,
                     "target_free_windows_passed": round(float(np.mean(clear >= t)), 4)})
    print(json.dumps({"phrase_windows": len(phrase), "target_free_windows": len(clear), "bound": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
