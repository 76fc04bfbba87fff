"""A second stage over half-hop neighbours: what re-scoring the candidate windows would buy.

The daemon scores a window every second. A verifier takes each window that scores at
least `--low`, also scores the windows half a hop before and after it (the one after is
complete half a second later, so a candidate's event would come up to 0.5 s later), and
decides on a combination of the three. Measured without building it, on the
leave-voices-out folds: every fold's ensemble scores its held-out calls and negative
streams every half hop, and each rule is reported as `kws-train folds` reports (its own
threshold for each false-accept rate, pooled over the folds):

    python -m kws_train.verifier --runs runs/folds-deep5 runs/folds-tune-lr1e3 runs/folds-tune4-lr1e3 \\
        --data data/folds --negatives data/negatives data/negatives2 --extra-val data/realctx \\
        --cache runs/cache --out runs/verifier-5-tune46
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .ensemble_folds import HeldOut, fold_model
from .export import ensemble_front_end
from .fit import window_scores
from .folds import report_entry, val_rows

log = logging.getLogger(__name__)

# Combinations of a window's probability e with its better half-hop neighbour n = max(before, after).
RULES = {
    "window": lambda e, n: e,  # the daemon as it is
    "half-hop grid": None,  # every window of the 0.5 s grid, as if the daemon scored every half hop
    "mean with its better neighbour": lambda e, n: (e + n) / 2,
    "min with its better neighbour": np.minimum,
}


def neighbours(starts: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From a stream's windows every half hop: the daemon's windows (the even ones), their
    probabilities, and the better of each one's two half-hop neighbours (0 past the ends)."""
    odd = np.concatenate([[0.0], probs[1::2], [0.0]])
    even = probs[0::2]
    return starts[0::2], even, np.maximum(odd[:even.size], odd[1:even.size + 1])


def verified(windows: list[tuple[np.ndarray, np.ndarray]], rule: str, low: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The windows the daemon would report under `rule`, re-scored only where e >= low."""
    if RULES[rule] is None:
        return windows
    out = []
    for starts, probs in windows:
        s, e, n = neighbours(starts, probs)
        out.append((s, np.where(e >= low, RULES[rule](e, n), e)))
    return out


def measure(runs: list[str], data: list[str], negatives: list[str], extra_val: list[str], cache: str,
            low: float, folds: list[int]) -> dict:
    archs = [json.loads(Path(run, "folds.json").read_text())["fit"]["arch"] for run in runs]
    sets = HeldOut.load(data, negatives, extra_val, cache, ensemble_front_end(archs))
    pooled = {r: {"rows": [], "neg": [], "hours": 0.0, **{name: [] for name, _ in sets.extras}} for r in RULES}
    report: dict = {"runs": runs, "low": low, "folds": {}}
    for k in folds:
        val, neg, evs, hours = sets.fold(k)
        model = fold_model(runs, k)
        half = [window_scores(model, c, 0.5) for c in (val, neg, *(c for _, c in evs))]
        report["folds"][k] = {}
        for rule, p in pooled.items():
            vw, nw, *ews = (verified(w, rule, low) for w in half)
            rows = val_rows(val, sets.metas, vw)
            report["folds"][k][rule] = report_entry(rows, [nw], hours)
            p["rows"] += rows
            p["neg"].append(nw)
            p["hours"] += hours
            for (name, ev), ew in zip(evs, ews):
                p[name] += val_rows(ev, sets.metas, ew)
        log.info("fold %d: %s", k, {r: e["at_0.5_fa_per_hour"]["frr"] for r, e in report["folds"][k].items()})
    report["pooled"] = {r: report_entry(p["rows"], p["neg"], p["hours"], {name: p[name] for name, _ in sets.extras})
                        for r, p in pooled.items()}
    return report


def table(report: dict) -> str:
    rates = (0.1, 0.5, 1.0, 5.0)
    lines = ["| rule | AUC | " + " | ".join(f"FRR @ {r} FA/h" for r in rates) + " | threshold @ 0.5 |",
             "|---|---|" + "---|" * len(rates) + "---|"]
    for rule, e in report["pooled"].items():
        frr = [f"{e[f'at_{r}_fa_per_hour']['frr']:.3f}" if f"at_{r}_fa_per_hour" in e else "—" for r in rates]
        lines.append(f"| {rule} | {e['auc']:.4f} | " + " | ".join(frr) + f" | {e['threshold_at_0.5']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="`kws-train folds` run directories")
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR", help="the runs' validation corpora")
    ap.add_argument("--negatives", required=True, nargs="+", metavar="DIR")
    ap.add_argument("--extra-val", nargs="*", default=[], metavar="DIR")
    ap.add_argument("--cache", required=True, metavar="DIR")
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--low", type=float, default=0.5, help="the first stage's threshold: windows below it keep their score")
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    args = ap.parse_args(argv)
    report = measure(args.runs, args.data, args.negatives, args.extra_val, args.cache, args.low, args.folds)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "verifier.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
