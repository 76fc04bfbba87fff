"""Markdown tables of a `kws-train folds` report, as the model card shows them.

    python -m kws_train.folds_table runs/folds/folds.json [--variant ensemble_] [--hop 1.0]
"""
from __future__ import annotations

import argparse
import json
import re

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
    ap.add_argument("--conditions", metavar="CACHE", help="also re-score by noise and room, from this feature cache")
    args = ap.parse_args(argv)
    report = json.loads(open(args.report, encoding="utf-8").read())
    if args.conditions:
        print(conditions(args.report, args.conditions, float(args.hop)))
    print(folds_table(report, args.variant, args.hop), "\n")
    pooled = report.get(f"pooled_{args.variant}hop_{args.hop}")
    if pooled is None:
        return 0
    print(f"At the pooled threshold for 0.5 FA/h ({pooled['threshold_at_0.5']:.4f}):\n")
    for key, what in (("recall_by_voice", "voice (positives found)"), ("recall_by_context", "phrase context"),
                      ("recall_by_channel", "channel"), ("negatives_flagged_by_kind", "negative calls flagged")):
        print(rates_table(pooled[key], what), "\n")
    for key in pooled:
        for by in ("channel", "context"):
            if key.endswith(f"_recall_by_{by}") and key != f"recall_by_{by}":
                print(rates_table(pooled[key], f"{key.split('_recall')[0]}: {by}"), "\n")
    print(f"Confusable calls flagged: {pooled['confusables_flagged']:.3f}; texts:",
          "; ".join(pooled["confusables_flagged_texts"][:12]))
    return 0


def snr_bin(meta: dict) -> str:
    snr = meta.get("snr_db")
    if snr is None:
        return "no noise"
    return next(f"{lo}-{hi} dB" for lo, hi in ((0, 5), (5, 10), (10, 20), (20, 31)) if lo <= snr < hi)


TARGET = re.compile(r"не\s+слыш(у|но)")


def target_word(meta: dict) -> str:
    found = TARGET.search(meta["phrase"].lower())
    return " ".join(found.group(0).split()) if found else "other"


def words_around(meta: dict) -> str:
    """Where the phrase's other words stand: the bench found the target inside longer
    speech far less often than alone."""
    text = meta["phrase"].lower()
    found = TARGET.search(text)
    if not found:
        return "other"
    before, after = bool(re.search(r"\w", text[:found.start()])), bool(re.search(r"\w", text[found.end():]))
    return {(False, False): "none", (True, False): "before only", (False, True): "after only",
            (True, True): "before and after"}[(before, after)]


def conditions(report_path: str, cache: str, hop: float = 1.0) -> str:
    """Recall at the pooled threshold by noise level and room, re-scored with each fold's
    checkpoint on its own held-out calls (from the feature cache)."""
    from pathlib import Path

    from kws_stream import frontends

    from .ensemble_folds import fold_model
    from .fit import window_scores
    from .folds import fold_of, load_all, subset
    from .nets import ModelConfig
    report = json.loads(open(report_path, encoding="utf-8").read())
    threshold = report[f"pooled_hop_{hop}"]["threshold_at_0.5"]
    front_end = frontends.get(report["front_end"]) if "front_end" in report else \
        ModelConfig(arch=report.get("archs", ["emb"])[0]).front_end  # an ensemble_folds report names it
    calls, metas = load_all(report["data"], cache, 1, front_end)
    negatives = report["negatives"]  # one directory (kws-train folds) or several (ensemble_folds)
    neg, neg_metas = load_all([negatives] if isinstance(negatives, str) else negatives, cache, 1, front_end)
    metas = {**metas, **neg_metas}
    runs = report.get("runs", [str(Path(report_path).parent)])  # an ensemble_folds report names its runs
    folds = []  # per fold: its model, and (uid, best window) of each of its held-out calls, scored once
    for k in report["folds"]:
        model = fold_model(runs, int(k))
        val = subset(calls, lambda u, k=int(k): fold_of(metas[u]) == k)
        best = [(f.stem, float(p.max(initial=0.0))) for f, (_, p) in zip(val.files, window_scores(model, val, hop))]
        folds.append((int(k), model, best))
    rows = [{"score": score, **metas[uid]} for _, _, best in folds for uid, score in best if metas[uid]["label"] == 1]
    groups = {
        "noise": lambda m: snr_bin(m),
        "room reverberation": lambda m: "yes" if "room" in m else "no",
        "noise source": lambda m: m.get("noise", "none"),
        "bench-like (SNR >= 5 dB or none, no room)":
            lambda m: "yes" if (m.get("snr_db") is None or m["snr_db"] >= 5) and "room" not in m else "no",
        "target": target_word,
        "words around the target in its sentence": words_around,
    }
    out = [plain_speech_curve(folds, neg, metas, hop),
           f"Positives found at the pooled threshold {threshold:.4f} (hop {hop} s):\n"]
    for name, key in groups.items():
        counts: dict = {}
        for r in rows:
            g = counts.setdefault(key(r), {"n": 0, "fired": 0})
            g["n"] += 1
            g["fired"] += int(r["score"] >= threshold)
        for g in counts.values():
            g["rate"] = g["fired"] / g["n"]
        out.append(rates_table(dict(sorted(counts.items())), name) + "\n")
    return "\n".join(out)


def plain_speech_curve(folds: list, neg, metas: dict, hop: float) -> str:
    """Pooled FRR at fixed false accepts counted, as the independent bench counts them, on
    target-free streams without a confusable sentence."""
    import numpy as np

    from .evaluate import file_metrics
    from .fit import window_scores
    from .folds import fold_of, pooled_threshold, subset
    labels = [metas[uid]["label"] for _, _, best in folds for uid, _ in best]
    scores = [score for _, _, best in folds for _, score in best]
    negs, hours = [], 0.0
    for k, model, _ in folds:
        plain = subset(neg, lambda u, k=k: fold_of(metas[u]) == k and metas[u]["kind"] != "confusable")
        negs.append(window_scores(model, plain, hop))
        hours += sum(metas[f.stem]["seconds"] for f in plain.files) / 3600
    cells = []
    for rate in FA_RATES:
        t = pooled_threshold(negs, hours, rate)
        cells.append(f"{file_metrics(np.array(labels), np.array(scores), t)['frr']:.3f} (threshold {t:.4f})")
    return (f"False accepts on streams without confusables ({hours:.2f} h), pooled FRR at "
            + ", ".join(f"{r} FA/h: {c}" for r, c in zip(FA_RATES, cells)) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
