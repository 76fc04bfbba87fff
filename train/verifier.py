"""A second stage: what re-scoring the candidate windows would buy.

The daemon scores a window every second. A verifier drops each window that scores below
`--low`, and re-scores the others: from their own probability and the better of the windows
half a hop before and after (the one after is complete half a second later, so a
candidate's event would come up to 0.5 s later), or with `--stage2` from a second model
trained to reject what the first passes (`kws-train folds --candidate-low`). Measured
without building it, on the leave-voices-out folds: every fold's ensemble scores its
held-out calls and negative streams every half hop, and each rule is reported as
`kws-train folds` reports (its own threshold for each false-accept rate, pooled over the
folds):

    python -m kws_train.verifier --runs runs/folds-deep5 runs/folds-tune-lr1e3 runs/folds-tune4-lr1e3 \\
        --data data/folds --negatives data/negatives data/negatives2 --extra-val data/realctx \\
        --cache runs/cache --out runs/verifier-5-tune46 [--stage2 runs/folds-verifier4]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .ensemble_folds import HeldOut, fold_model, run_fit, runs_front_end
from .fit import window_scores
from .folds import FA_RATES, Pooled, report_entry, val_rows

log = logging.getLogger(__name__)


def neighbours(starts: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From a stream's windows every half hop: the daemon's windows (the even ones), their
    probabilities, and the better of each one's two half-hop neighbours (0 past the ends).
    The odd windows sit on the front end's frame grid, so a neighbour is about, not exactly,
    half a hop away (embedding rows: 0.52 s before, 0.48 s after)."""
    odd = np.concatenate([[0.0], probs[1::2], [0.0]])
    even = probs[0::2]
    return starts[0::2], even, np.maximum(odd[:even.size], odd[1:even.size + 1])


def _window(starts: np.ndarray, probs: np.ndarray, second: np.ndarray | None, low: float):
    return starts[0::2], probs[0::2]


def _half_hop_grid(starts: np.ndarray, probs: np.ndarray, second: np.ndarray | None, low: float):
    return starts, probs


def _verifier(combine):
    """A cascade: a daemon window below `low` is dropped (scored 0); one at or above it is
    re-scored as combine(its probability, its better neighbour's)."""
    def rule(starts: np.ndarray, probs: np.ndarray, second: np.ndarray | None, low: float):
        s, e, n = neighbours(starts, probs)
        return s, np.where(e >= low, combine(e, n), 0.0)
    rule.gated = True
    return rule


def _second_stage(combine):
    """A cascade with a second model: a daemon window below `low` is dropped (scored 0);
    one at or above it is re-scored as combine(its probability, the second model's)."""
    def rule(starts: np.ndarray, probs: np.ndarray, second: np.ndarray | None, low: float):
        e, v = probs[0::2], second[0::2]
        return starts[0::2], np.where(e >= low, combine(e, v), 0.0)
    rule.gated = True
    return rule


# Each rule turns a stream's windows every half hop (and the second model's, if any) into
# the windows that would be reported.
RULES = {
    "window": _window,  # the daemon as it is, every hop
    "half-hop grid": _half_hop_grid,  # as if the daemon scored every half hop
    "mean with its better neighbour": _verifier(lambda e, n: (e + n) / 2),
    "min with its better neighbour": _verifier(np.minimum),
}
STAGE2_RULES = {
    "the second model alone": _second_stage(lambda e, v: v),
    "mean with the second model": _second_stage(lambda e, v: (e + v) / 2),
}
ALL_RULES = {**RULES, **STAGE2_RULES}
GATED = {name for name, rule in ALL_RULES.items() if getattr(rule, "gated", False)}  # scores below `low` are 0

Windows = list[tuple[np.ndarray, np.ndarray]]  # per stream, (window starts, probabilities)


def verified(windows: Windows, second: Windows | None, rule: str, low: float) -> Windows:
    """A rule over one corpus's streams: `windows` the first stage's every half hop,
    `second` the second model's on the same streams and grid (or None)."""
    return [ALL_RULES[rule](starts, probs, None if second is None else second[i][1], low)
            for i, (starts, probs) in enumerate(windows)]


def measure(runs: list[str], data: list[str], negatives: list[str], extra_val: list[str], cache: str,
            low: float, folds: list[int], stage2: list[str] = ()) -> dict:
    fe = runs_front_end(runs)
    if stage2 and (fe2 := runs_front_end(list(stage2))) is not fe:
        raise ValueError(f"--stage2 reads {fe2.name}, --runs {fe.name}: score them apart")
    sets = HeldOut.load(data, negatives, extra_val, cache, fe)
    rules = [*RULES, *(STAGE2_RULES if stage2 else ())]
    pooled = {r: Pooled() for r in rules}
    report: dict = {"runs": runs, "stage2": {run: {x: run_fit(run).get(x) for x in ("init", "candidate_low")}
                                             for run in stage2}, "data": data, "negatives": negatives,
                    "extra_val": extra_val, "front_end": fe.name, "low": low, "folds": {}}
    for k in folds:
        val, neg, evs, hours = sets.fold(k)
        corpora = (val, neg, *(c for _, c in evs))
        model = fold_model(runs, k)
        half = [window_scores(model, c, 0.5) for c in corpora]
        model2 = fold_model(list(stage2), k) if stage2 else None
        second = [window_scores(model2, c, 0.5) if model2 is not None else None for c in corpora]
        report["folds"][k] = {}
        for rule, p in pooled.items():
            vw, nw, *ews = (verified(w, w2, rule, low) for w, w2 in zip(half, second))
            rows = val_rows(val, sets.metas, vw)
            extra_rows = {name: val_rows(ev, sets.metas, ew) for (name, ev), ew in zip(evs, ews)}
            report["folds"][k][rule] = report_entry(rows, [nw], hours, extra_rows)
            p.add(rows, nw, hours, extra_rows)
        log.info("fold %d: %s", k, {r: e.get("at_0.5_fa_per_hour", {}).get("frr")  # none without negatives
                                         for r, e in report["folds"][k].items()})
    report["pooled"] = {r: p.entry() for r, p in pooled.items()}
    return report


def _found(entry: dict, name: str) -> str:
    groups = entry[f"{name}_recall_by_context"].values()
    fired, n = sum(g["fired"] for g in groups), sum(g["n"] for g in groups)
    return f"{fired} of {n} ({fired / max(n, 1):.3f})"


def table(report: dict) -> str:
    """The pooled results as a Markdown table. A gated rule's AUC, and its FRR at a
    threshold below `low`, would measure the first stage, not the rule: left out."""
    extras = [Path(root).name for root in report["extra_val"]]
    lines = ["| rule | AUC | " + " | ".join(f"FRR @ {r} FA/h" for r in FA_RATES) + " | threshold @ 0.5 | "
             + "".join(f"found in {name} | " for name in extras) + "confusables flagged |",
             "|---|---|" + "---|" * (len(FA_RATES) + len(extras) + 2)]
    for rule, e in report["pooled"].items():
        frr = []
        for r in FA_RATES:
            at = e.get(f"at_{r}_fa_per_hour")
            shown = at is not None and not (rule in GATED and at["threshold"] < report["low"])
            frr.append(f"{at['frr']:.3f}" if shown else "—")
        auc = "—" if rule in GATED else f"{e['auc']:.4f}"  # the gate ties every window below `low` at 0
        lines.append(f"| {rule} | {auc} | " + " | ".join(frr) + f" | {e['threshold_at_0.5']:.4f} | "
                     + "".join(f"{_found(e, name)} | " for name in extras) + f"{e['confusables_flagged']:.3f} |")
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
    ap.add_argument("--low", type=float, default=0.3, help="the first stage's threshold: the verifiers drop windows below it")
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--stage2", nargs="+", default=[], metavar="RUN",
                    help="`kws-train folds` runs (verifiers: made with --candidate-low) whose fold models, "
                         "averaged, re-score the windows the --runs pass")
    args = ap.parse_args(argv)
    try:
        report = measure(args.runs, args.data, args.negatives, args.extra_val, args.cache, args.low, args.folds,
                         args.stage2)
    except (ValueError, FileNotFoundError) as e:
        print(f"kws_train.verifier: {e}", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "verifier.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
