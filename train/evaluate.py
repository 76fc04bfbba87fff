"""`kws-train eval`: a model measured through the daemon's own streaming code.

Every file goes through kws_stream's Spotter (the path `kws-stream --file` uses), so
training and serving cannot drift apart. Reports the seed's file-level score, FAR and
FRR across thresholds, AUC, false accepts per hour of target-free audio (counted as the
daemon counts detections, refractory included), and FRR at fixed false-accept rates.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kws_stream.frontends import SAMPLE_RATE
from kws_stream.model import KwsModel
from kws_stream.replay import replay
from kws_stream.spotter import Detector, SpotterConfig

from .data import corpus_files

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 201), 3)
CONFIG = SpotterConfig()  # the daemon's defaults: hop, refractory


@dataclass
class Scored:
    name: str
    label: int
    seconds: float
    ends: np.ndarray  # window end, in samples
    probs: np.ndarray

    @property
    def max_score(self) -> float:
        return float(self.probs.max()) if self.probs.size else 0.0


def score_files(model: str, items: list[tuple[str, int]], jobs: int = 2, cascade: bool = False) -> list[Scored]:
    """Every window score of every file, through the daemon's own replay (kws-stream --file;
    a cascade model in full, or with `cascade` as the daemon runs it at the model's threshold)."""
    labels = dict(items)
    out = []
    config = replace(CONFIG, cascade=cascade)
    for r in replay([p for p, _ in items], KwsModel(model), config, jobs=jobs, keep_scores=True):
        if r.error is not None:
            raise RuntimeError(f"{r.path}: {r.error}")
        out.append(Scored(Path(r.path).stem, labels[r.path], r.audio_seconds, r.window_ends, r.window_probs))
    return out


REFRACTORY_SAMPLES = round(CONFIG.refractory_seconds * SAMPLE_RATE)  # the daemon's default


def window_false_accepts(windows, threshold: float) -> int:
    """Detections the daemon would make on target-free streams, each given as (window
    positions in samples, probabilities); the refractory resets per stream."""
    n = 0
    for positions, probs in windows:
        det = Detector(threshold, REFRACTORY_SAMPLES)
        n += sum(det(p, e) for p, e in zip(probs.tolist(), positions.tolist()))
    return n


def false_accepts(scored: list[Scored], threshold: float) -> int:
    return window_false_accepts([(s.ends, s.probs) for s in scored], threshold)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size)
    ranks[order] = np.arange(1, order.size + 1)
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def file_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    pred = scores >= threshold
    pos, neg = labels == 1, labels == 0
    frr = float((~pred & pos).sum() / max(pos.sum(), 1))
    far = float((pred & neg).sum() / max(neg.sum(), 1))
    score = 2 * (1 - frr) * (1 - far) / max((1 - frr) + (1 - far), 1e-12)
    return {"threshold": float(threshold), "score": score, "far": far, "frr": frr}


def threshold_for_fa_rate(negatives: list[Scored], target_per_hour: float) -> float:
    """The lowest threshold whose false accepts per hour on `negatives` are <= target."""
    return threshold_for_windows([(s.ends, s.probs) for s in negatives], sum(s.seconds for s in negatives) / 3600,
                                 target_per_hour)


def threshold_for_windows(windows, hours: float, target_per_hour: float) -> float:
    """The lowest threshold whose false accepts per hour on `windows` (as in
    window_false_accepts, `hours` of audio) are <= target.

    Candidates sit just above every window probability seen on the negatives, so the
    answer is exact rather than a grid point. Returns a value above 1.0 when even the
    highest threshold cannot reach the target (a negative window scored 1.0).
    """
    probs = np.unique(np.concatenate([p for _, p in windows] + [np.zeros(1)]))
    candidates = np.concatenate([[0.0], np.nextafter(probs, 2.0)])
    lo, hi = 0, candidates.size - 1  # false accepts fall as the threshold rises
    if window_false_accepts(windows, candidates[hi]) / hours > target_per_hour:
        return float(candidates[hi])
    while lo < hi:
        mid = (lo + hi) // 2
        if window_false_accepts(windows, candidates[mid]) / hours <= target_per_hour:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])


def report(model: str, data: str, negatives: str | None = None, out: str | None = None, jobs: int = 2,
           cascade: bool = False) -> dict:
    files, bounds = corpus_files(data)
    scored = score_files(model, [(str(f), int(f.stem in bounds)) for f in files], jobs, cascade)
    labels = np.array([s.label for s in scored])
    scores = np.array([s.max_score for s in scored])
    info = KwsModel(model).info
    own = info.threshold
    curve = [file_metrics(labels, scores, t) for t in THRESHOLDS]
    grid = [m for m in curve if round(m["threshold"] * 20, 6) % 1 == 0 and 0.05 <= m["threshold"] <= 0.95]
    result = {"model": model, "data": data, "files": len(files), "positives": int(labels.sum()),
              "cascade": cascade and bool(info.cascade),
              "auc": auc(labels, scores), "at_model_threshold": file_metrics(labels, scores, own),
              "best_on_seed_grid": max(grid, key=lambda m: m["score"])}
    neg = [s for s in scored if s.label == 0]
    if negatives:
        neg_files, neg_bounds = corpus_files(negatives)
        if neg_bounds:
            raise ValueError(f"{negatives}: has positives; false accepts need target-free audio")
        neg = score_files(model, [(str(f), 0) for f in neg_files], jobs, cascade)
    hours = sum(s.seconds for s in neg) / 3600
    result["negative_hours"] = hours
    result["fa_per_hour_at_model_threshold"] = false_accepts(neg, own) / hours if hours else None
    for target in (0.1, 0.5, 1.0, 2.0, 5.0):
        t = threshold_for_fa_rate(neg, target) if hours else 1.0
        result[f"at_{target}_fa_per_hour"] = file_metrics(labels, scores, t)
        result[f"at_{target}_fa_per_hour"]["reachable"] = t <= 1.0
    result["max_negative_window_score"] = float(max((s.probs.max() for s in neg if s.probs.size), default=0.0))
    if out:
        _plots(Path(out), labels, scores, curve, neg, hours)
        Path(out, "eval.json").write_text(json.dumps(result, indent=1))
    return result


def _plots(out: Path, labels, scores, curve, neg, hours) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([m["far"] * 100 for m in curve], [m["frr"] * 100 for m in curve])
    ax.set_xscale("symlog")
    ax.set_yscale("symlog")
    ax.set_xlabel("false accepts, % of negative files")
    ax.set_ylabel("false rejects, % of positive files")
    ax.set_title("DET (file level)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "det.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == 1], bins, alpha=0.6, label="positive files")
    ax.hist(scores[labels == 0], bins, alpha=0.6, label="negative files")
    ax.set_yscale("log")
    ax.set_xlabel("file score (max window probability)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)


def run(args) -> int:
    result = report(args.model, args.data, args.negatives, args.out, args.jobs, args.cascade)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0
