"""Markdown tables of a `kws-train folds` report, as the model card shows them.

    python -m train.folds_table runs/folds/folds.json [--variant ensemble_] [--hop 1.0]
"""
from __future__ import annotations

import argparse
import json

from .folds import FA_RATES


def frr_cells(entry: dict) -> list[str]:
    cells = []
    for rate in FA_RATES:
        m = entry.get(f"at_{rate}_fa_per_hour")
        cells.append("–" if m is None else f"{m['frr']:.3f}")
    return cells


def folds_table(report: dict, variant: str, hop: str) -> str:
    head = "| fold | held-out voices | val calls (positive) | negatives, h | AUC | " + \
        " | ".join(f"FRR @ {r} FA/h" for r in FA_RATES) + " | threshold @ 0.5 FA/h |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for k, fold in report["folds"].items():
        e = fold.get(f"{variant}hop_{hop}")
        if e is None:
            continue
        lines.append(f"| {k} | {', '.join(fold['voices'])} | {e['files']} ({e['positives']}) | "
                     f"{fold['negative_hours']:.2f} | {e['auc']:.3f} | " + " | ".join(frr_cells(e)) +
                     f" | {e['threshold_at_0.5']:.4f} |")
    p = report.get(f"pooled_{variant}hop_{hop}")
    if p is not None:
        lines.append(f"| **pooled** | all twelve | {p['files']} ({p['positives']}) | {p['negative_hours']:.2f} | "
                     f"**{p['auc']:.3f}** | " + " | ".join(f"**{c}**" for c in frr_cells(p)) +
                     f" | {p['threshold_at_0.5']:.4f} |")
    return "\n".join(lines)


def rates_table(groups: dict, what: str) -> str:
    lines = [f"| {what} | calls | fired | share |", "|---|---|---|---|"]
    lines += [f"| {g} | {v['n']} | {v['fired']} | {v['rate']:.3f} |" for g, v in groups.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--variant", default="", help="'' for the first arch, or e.g. 'emb-gru_' or 'ensemble_'")
    ap.add_argument("--hop", default="1.0")
    args = ap.parse_args(argv)
    report = json.loads(open(args.report, encoding="utf-8").read())
    print(folds_table(report, args.variant, args.hop), "\n")
    pooled = report.get(f"pooled_{args.variant}hop_{args.hop}")
    if pooled is None:
        return 0
    print(f"At the pooled threshold for 0.5 FA/h ({pooled['threshold_at_0.5']:.4f}):\n")
    for key, what in (("recall_by_voice", "voice (positives found)"), ("recall_by_context", "phrase context"),
                      ("recall_by_channel", "channel"), ("negatives_flagged_by_kind", "negative calls flagged")):
        print(rates_table(pooled[key], what), "\n")
    for key in pooled:
        if key.endswith("_recall_by_channel") and key != "recall_by_channel":
            print(rates_table(pooled[key], f"{key.split('_recall')[0]}: channel"), "\n")
    print(f"Confusable calls flagged: {pooled['confusables_flagged']:.3f}; texts:",
          "; ".join(pooled["confusables_flagged_texts"][:12]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
