"""Leave-voices-out numbers for the mean of several `kws-train folds` runs' fold models.

Fold k's ensemble averages the probabilities of every run's fold-k model, so it still
never heard fold k's voices; it is validated on the same calls and negative streams as
the runs, and reported as `kws-train folds` reports (folds.json, readable by
`python -m kws_train.folds_table`). What an ensemble buys is measured without training:

    python -m kws_train.ensemble_folds --runs runs/folds-deep4 runs/folds-deep5 --data data/folds \\
        --negatives data/negatives --extra-val data/codecs --cache runs/cache --out runs/ens-45
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from kws_stream.frontends import FrontEnd

from .data import Corpus
from .export import ensemble_front_end, load_checkpoints
from .fit import window_scores
from .folds import Pooled, fold_of, load_all, report_entry, subset, val_rows
from .synth_tts import FOLDS

log = logging.getLogger(__name__)


def run_fit(run: str) -> dict:
    """A `kws-train folds` run's training options, from its report."""
    return json.loads(Path(run, "folds.json").read_text())["fit"]


def run_archs(runs: list[str]) -> list[str]:
    """Each `kws-train folds` run's architecture, from its report."""
    return [run_fit(run)["arch"] for run in runs]


def runs_front_end(runs: list[str]) -> type[FrontEnd]:
    """The front end the runs' models read together (emb-tune with heads on embeddings: rows)."""
    return ensemble_front_end(run_archs(runs))


def fold_model(runs: list[str], k: int):
    """The runs' fold-k models as one: the mean of their probabilities (as export writes it)."""
    model, _ = load_checkpoints([str(Path(run) / f"fold{k}" / "ckpt.pt") for run in runs])
    return model


@dataclass(frozen=True)
class HeldOut:
    """The validation sets every fold is cut from: calls, negative streams, extra corpora."""
    calls: Corpus
    negatives: Corpus
    extras: list[tuple[str, Corpus]]
    metas: dict

    @classmethod
    def load(cls, data: list[str], negatives: list[str], extra_val: list[str], cache: str,
             fe: type[FrontEnd]) -> "HeldOut":
        calls, metas = load_all(data, cache, 2, fe)
        streams, more = load_all(negatives, cache, 2, fe)
        metas.update(more)
        extras = []
        for root in extra_val:
            corpus, more = load_all([root], cache, 2, fe)
            metas.update(more)
            extras.append((Path(root).name, corpus))
        return cls(calls, streams, extras, metas)

    def fold(self, k: int) -> tuple[Corpus, Corpus, list[tuple[str, Corpus]], float]:
        """Fold k's held-out calls, negative streams, extra corpora, and the streams' hours."""
        held = lambda uid: fold_of(self.metas[uid]) == k  # noqa: E731
        neg = subset(self.negatives, held)
        hours = sum(self.metas[f.stem]["seconds"] for f in neg.files) / 3600
        return subset(self.calls, held), neg, [(name, subset(c, held)) for name, c in self.extras], hours


def ensemble(runs: list[str], data: list[str], negatives: list[str], extra_val: list[str], cache: str, out: str,
             hops: list[float], folds: list[int]) -> dict:
    archs = run_archs(runs)
    fe = ensemble_front_end(archs)
    sets = HeldOut.load(data, negatives, extra_val, cache, fe)
    metas = sets.metas
    report: dict = {"runs": runs, "archs": sorted(set(archs)), "front_end": fe.name, "folds": {},
                    "data": data, "negatives": negatives}
    pooled = {h: Pooled() for h in hops}
    for k in folds:
        val, neg, evs, hours = sets.fold(k)
        model = fold_model(runs, k)
        entry_k: dict = {"voices": list(FOLDS[k]), "negative_hours": round(hours, 3)}
        for h in hops:
            vw, nw = window_scores(model, val, h), window_scores(model, neg, h)
            rows = val_rows(val, metas, vw)
            entry_k[f"hop_{h}"] = report_entry(rows, [nw], hours)
            pooled[h].add(rows, nw, hours, {name: val_rows(ev, metas, window_scores(model, ev, h)) for name, ev in evs})
        report["folds"][k] = entry_k
        log.info("fold %d: %s", k, json.dumps({h: {x: entry_k[f"hop_{h}"].get(x) for x in ("auc", "at_0.5_fa_per_hour")}
                                              for h in hops}))
    for h, p in pooled.items():
        report[f"pooled_hop_{h}"] = p.entry()
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "folds.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="`kws-train folds` run directories")
    ap.add_argument("--data", nargs="+", required=True, metavar="DIR", help="the runs' validation corpora")
    ap.add_argument("--negatives", required=True, nargs="+", metavar="DIR",
                    help="target-free streams; several corpora are pooled (each fold's held-out voices' streams)")
    ap.add_argument("--extra-val", nargs="*", default=[], metavar="DIR")
    ap.add_argument("--cache", required=True, metavar="DIR")
    ap.add_argument("--out", required=True, metavar="RUN")
    ap.add_argument("--hops", nargs="+", type=float, default=[1.0])
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    args = ap.parse_args(argv)
    report = ensemble(args.runs, args.data, args.negatives, args.extra_val, args.cache, args.out, args.hops,
                      args.folds)
    print(json.dumps({k: {x: v.get(x) for x in ("auc", "at_0.5_fa_per_hour", "threshold_at_0.5")}
                      for k, v in report.items() if k.startswith("pooled")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
