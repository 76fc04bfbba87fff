"""`kws-train folds`: leave-voices-out cross-validation over the twelve allowed RHVoice voices.

The voices fall into four folds (variants of one speaker stay together). Fold k's model
trains on every call not spoken by fold k's voices (other RHVoice voices, espeak-ng,
Festival, and three quarters of the calls without synthetic speech), and is validated on
fold k's calls and on long target-free streams spoken by fold k's voices. Every voice is
validated once. Scores come from the cached front-end frames with the daemon's window grid
and refractory, so one run of the front end serves every fold.

Reports per fold, per voice, per channel and per phrase context (alone / inside a
sentence), the confusables flagged, and FRR at fixed false accepts per hour on the pooled
held-out negatives: one threshold across the fold models, false accepts summed over folds.
That pooled threshold at the target rate is what the shipped model, trained on all
voices, carries.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kws_stream.frontends import FrontEnd
from kws_stream.model import KwsModel

from .data import Corpus, load_corpus
from .evaluate import auc, file_metrics, threshold_for_windows
from .fit import FitConfig, save, train_model, trained_before, window_scores
from .nets import ModelConfig
from .synth_phrases import REAL_MARK
from .synth_tts import FOLDS

log = logging.getLogger(__name__)

FA_RATES = (0.1, 0.5, 1.0, 5.0)


def manifest(root: str | Path) -> dict[str, dict]:
    path = Path(root) / "manifest.jsonl"
    return {m["uid"]: m for m in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def fold_of(meta: dict) -> int | None:
    """The fold whose validation holds this call: its RHVoice voice's fold; for calls
    without synthetic speech a fixed hash of the uid; None (always trained on) for the
    other engines."""
    if meta.get("engine") == "rhvoice":
        return next(k for k, voices in enumerate(FOLDS) if meta["voice"]["voice"] in voices)
    if meta.get("engine") is None:
        return int(hashlib.sha1(meta["uid"].encode()).hexdigest(), 16) % len(FOLDS)
    return None


def subset(corpus: Corpus, keep) -> Corpus:
    idx = [i for i, f in enumerate(corpus.files) if keep(f.stem)]
    files = [corpus.files[i] for i in idx]
    stems = {f.stem for f in files}
    return Corpus(files, {k: v for k, v in corpus.bounds.items() if k in stems}, [corpus.mels[i] for i in idx],
                  corpus.front_end)


def merge(corpora: list[Corpus]) -> Corpus:
    return Corpus([f for c in corpora for f in c.files], {k: v for c in corpora for k, v in c.bounds.items()},
                  [m for c in corpora for m in c.mels], corpora[0].front_end)


# -- scoring -------------------------------------------------------------------------

def pooled_threshold(negatives: list[list], hours: float, target: float) -> float:
    """Lowest threshold whose false accepts, summed over the folds' negatives (each fold's
    windows scored by its own model), stay within target per hour."""
    if hours <= 0:
        return float("nan")  # no negatives: no rate to hold
    return threshold_for_windows([w for neg in negatives for w in neg], hours, target)


# -- reports ---------------------------------------------------------------------

def group_rates(rows: list[dict], key, threshold: float) -> dict:
    """Share of files at or above threshold, by group: recall for positives, flag rate for negatives."""
    out: dict = {}
    for r in rows:
        g = out.setdefault(str(key(r)), {"n": 0, "fired": 0})
        g["n"] += 1
        g["fired"] += int(r["score"] >= threshold)
    for g in out.values():
        g["rate"] = round(g["fired"] / g["n"], 3)
    return dict(sorted(out.items()))


def context_of(meta: dict) -> str:
    form = meta.get("form", "alone")
    return f"{form}, real speech around" if meta.get("context") == "real" else form


def channel_of(meta: dict) -> str:
    return meta.get("codec", "?") if meta.get("band") == "narrow" else f"wide-{meta.get('codec', '?')}"


def summarise(val_rows: list[dict], threshold: float) -> dict:
    pos = [r for r in val_rows if r["label"] == 1]
    neg = [r for r in val_rows if r["label"] == 0]
    conf = [r for r in neg if r["kind"] == "confusable"]
    return {"recall_by_voice": group_rates(pos, lambda r: r["voice"], threshold),
            "recall_by_context": group_rates(pos, lambda r: r["context"], threshold),
            "recall_by_channel": group_rates(pos, lambda r: r["channel"], threshold),
            "negatives_flagged_by_kind": group_rates(neg, lambda r: r["kind"], threshold),
            "confusables_flagged": round(sum(r["score"] >= threshold for r in conf) / max(len(conf), 1), 3),
            "confusables_flagged_texts": sorted({r["text"] for r in conf if r["score"] >= threshold})}


def val_rows(corpus: Corpus, metas: dict, windows) -> list[dict]:
    rows = []
    for f, (_, probs) in zip(corpus.files, windows):
        m = metas[f.stem]
        rows.append({"uid": f.stem, "label": m["label"], "kind": m["kind"], "score": float(probs.max(initial=0.0)),
                     "voice": (m.get("voice") or {}).get("voice", m.get("source", "?").split(":")[0]),
                     "context": context_of(m), "channel": channel_of(m),
                     "text": " / ".join(t for t in m.get("texts", []) if not t.startswith(REAL_MARK))[:120]})
    return rows


def report_entry(rows: list[dict], negatives: list[list], hours: float,
                 extras: dict[str, list[dict]] | None = None) -> dict:
    """What a fold (or all folds pooled) reports: the curve, and the recall tables at the
    threshold for 0.5 FA/h on these negatives; for each extra validation corpus, its
    recall by channel and by phrase context at that threshold."""
    t = pooled_threshold(negatives, hours, 0.5)
    entry = {**curve(rows, negatives, hours), "threshold_at_0.5": t, **summarise(rows, t)}
    for name, extra_rows in (extras or {}).items():
        extra = summarise(extra_rows, t)
        entry[f"{name}_recall_by_channel"] = extra["recall_by_channel"]
        entry[f"{name}_recall_by_context"] = extra["recall_by_context"]
    return entry


@dataclass
class Pooled:
    """The folds added up: validation rows, each fold's negative windows, their hours, and
    the extra corpora's rows by name; reported with one threshold across the folds."""
    rows: list[dict] = field(default_factory=list)
    negatives: list[list] = field(default_factory=list)
    hours: float = 0.0
    extras: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, rows: list[dict], negatives: list, hours: float, extras: dict[str, list[dict]] | None = None) -> None:
        self.rows += rows
        self.negatives.append(negatives)
        self.hours += hours
        for name, extra_rows in (extras or {}).items():
            self.extras.setdefault(name, []).extend(extra_rows)

    def entry(self) -> dict:
        return report_entry(self.rows, self.negatives, self.hours, self.extras)


def curve(rows: list[dict], negatives: list[list], hours: float) -> dict:
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    out = {"auc": auc(labels, scores), "files": len(rows), "positives": int(labels.sum()),
           "negative_hours": round(hours, 3)}
    for rate in FA_RATES:
        t = pooled_threshold(negatives, hours, rate)
        if np.isfinite(t):
            out[f"at_{rate}_fa_per_hour"] = {**file_metrics(labels, scores, t), "reachable": t <= 1.0}
    return out


# -- the run -----------------------------------------------------------------------

# Levers that can be taken out of training to measure what they buy (validation is unchanged).
WITHOUT = {
    "sentence": lambda m: m.get("form") == "sentence" and m["label"] == 1,  # positives said inside a sentence
    "pseudo": lambda m: "pseudo_speaker" in m,  # WORLD pseudo-speakers
    "new-codecs": lambda m: m.get("codec") in ("g726", "ima-adpcm", "speex"),  # the codecs added for issue 10
    "streams": lambda m: m["uid"].startswith("val"),  # the other folds' long negative streams
    "low-snr-positives": lambda m: m["label"] == 1 and m.get("snr_db") is not None and m["snr_db"] < 5,
}


def load_all(roots: list[str], cache: str, threads: int, front_end: type[FrontEnd]) -> tuple[Corpus, dict]:
    metas: dict = {}
    corpora = []
    for root in roots:
        m = manifest(root)
        if clash := set(m) & set(metas):
            raise ValueError(f"{root}: call ids also in another corpus (e.g. {min(clash)}); make it with another --seed")
        metas.update(m)
        corpora.append(load_corpus(root, cache, jobs=threads, front_end=front_end))
    return merge(corpora), metas


def run_folds(data: list[str], negatives: str, out: str, fit_cfg: FitConfig, folds: list[int],
              extra_val: list[str] = (), hops: tuple[float, ...] = (1.0,), without: tuple[str, ...] = (),
              archs: tuple[str, ...] = (), baseline: str | None = None, train_extra: list[str] = ()) -> dict:
    """Train one model per fold (per arch in `archs`, the first being fit_cfg.arch) and
    report each arch, and with several archs their ensemble (the mean probability)."""
    archs = tuple(dict.fromkeys((fit_cfg.arch,) + tuple(archs)))
    fe = ModelConfig(arch=fit_cfg.arch).front_end
    if other := [a for a in archs if ModelConfig(arch=a).front_end is not fe]:
        raise ValueError(f"{', '.join(other)} read another front end than {fit_cfg.arch}; run them apart")
    cache = fit_cfg.cache or str(Path(out) / "cache")
    allcalls, metas = load_all(list(data), cache, fit_cfg.threads, fe)
    extras = []
    for root in [negatives, *extra_val]:
        corpus, more = load_all([root], cache, fit_cfg.threads, fe)
        if clash := set(more) & set(metas):
            raise ValueError(f"{root}: call ids also in another corpus (e.g. {min(clash)}); make it with another --seed")
        metas.update(more)
        extras.append((Path(root).name, corpus))
    neg_corpus = extras.pop(0)[1]
    more_train = []  # corpora only trained on: their calls by the fold's voices are left out, not validated
    for root in train_extra:
        corpus, more = load_all([root], cache, fit_cfg.threads, fe)
        if clash := set(more) & set(metas):
            raise ValueError(f"{root}: call ids also in another corpus (e.g. {min(clash)}); make it with another --seed")
        metas.update(more)
        more_train.append(corpus)
    variants = list(archs) + (["ensemble"] if len(archs) > 1 else [])
    prefix = {v: "" if v == archs[0] else f"{v}_" for v in variants}  # the first arch reports unprefixed
    report: dict = {"folds": {}, "fit": {k: v for k, v in vars(fit_cfg).items() if k != "data"},
                    "data": list(data), "negatives": negatives, "voices": [list(v) for v in FOLDS],
                    "without": list(without), "archs": list(archs), "train_extra": list(train_extra)}
    pooled = {(v, h): Pooled() for v in variants for h in hops}
    dropped = lambda uid: any(WITHOUT[w](metas[uid]) for w in without)  # noqa: E731
    for k in folds:
        held = lambda uid, k=k: fold_of(metas[uid]) == k  # noqa: E731
        train = merge([subset(c, lambda u: not held(u) and not dropped(u)) for c in (allcalls, neg_corpus, *more_train)])
        val, neg = subset(allcalls, held), subset(neg_corpus, held)
        evs = [(name, subset(extra, held)) for name, extra in extras]
        hours = sum(metas[f.stem]["seconds"] for f in neg.files) / 3600
        fold_report = {"voices": list(FOLDS[k]), "train_files": len(train.files), "val_files": len(val.files),
                       "negative_hours": round(hours, 3)}
        scores: dict = {}  # (variant, hop) -> (val windows, negative windows, extra windows)
        if baseline is not None and k == 0:  # the shipped model never heard fold 0's voices
            onnx_model = KwsModel(baseline)
            for h in hops:
                scores["baseline", h] = (window_scores(onnx_model, val, h), window_scores(onnx_model, neg, h),
                                         [window_scores(onnx_model, ev, h) for _, ev in evs])
        for arch in archs:
            cfg = replace(fit_cfg, arch=arch, out=str(Path(out) / f"fold{k}{'' if arch == archs[0] else '-' + arch}"),
                          data=tuple(data) + (negatives, *train_extra),
                          init=str(Path(fit_cfg.init) / f"fold{k}" / "ckpt.pt") if fit_cfg.init and arch == archs[0]
                          else None,  # --init (and a verifier's first stage) is the first arch's
                          candidate_low=fit_cfg.candidate_low if arch == archs[0] else None)
            began = time.time()
            if (earlier := trained_before(cfg)) is not None:  # a run cut short (a session's end) resumes here
                model, history = earlier
                log.info("fold %d: %s read back from %s/ckpt.pt, trained before with these settings", k, arch, cfg.out)
                fold_report[f"{prefix[arch]}read_back"] = True
            else:
                model, history = train_model(cfg, train)
                save(cfg, model, history, train)
                fold_report[f"{prefix[arch]}train_seconds"] = round(time.time() - began, 1)
            for h in hops:
                scores[arch, h] = (window_scores(model, val, h), window_scores(model, neg, h),
                                   [window_scores(model, ev, h) for _, ev in evs])
        if "ensemble" in variants:
            for h in hops:
                parts = [scores[a, h] for a in archs]
                scores["ensemble", h] = tuple(_mean_windows([p[i] for p in parts]) for i in range(2)) + \
                    ([_mean_windows([p[2][j] for p in parts]) for j in range(len(evs))],)
        for (variant, h), (vw, nw, ews) in scores.items():
            rows = val_rows(val, metas, vw)
            if variant == "baseline":
                fold_report[f"baseline_hop_{h}"] = {**report_entry(rows, [nw], hours), "model": baseline}
                continue
            extra_rows = {name: val_rows(ev, metas, ew) for (name, ev), ew in zip(evs, ews)}
            fold_report[f"{prefix[variant]}hop_{h}"] = report_entry(rows, [nw], hours, extra_rows)
            pooled[variant, h].add(rows, nw, hours, extra_rows)
        report["folds"][k] = fold_report
        log.info("fold %d: %s", k, json.dumps({f"{v} {h}": {x: fold_report[f"{prefix[v]}hop_{h}"].get(x)
                                                             for x in ("auc", "at_0.5_fa_per_hour")}
                                               for v in variants for h in hops}))
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "folds.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for (variant, h), p in pooled.items():
        report[f"pooled_{prefix[variant]}hop_{h}"] = p.entry()
    Path(out, "folds.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def _mean_windows(per_model: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ensemble's windows: the same grid, the mean of the models' probabilities."""
    return [(files[0][0], np.mean([p for _, p in files], axis=0)) for files in zip(*per_model)]


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        cfg = FitConfig.from_args(args)
        report = run_folds(args.data, args.negatives, args.out, cfg, args.folds, args.extra_val, tuple(args.hops),
                           tuple(args.without), tuple(args.also_arch), args.baseline, args.train_extra)
    except (ValueError, FileNotFoundError) as e:
        print(f"kws-train folds: {e}", file=sys.stderr)
        return 2
    summary = {k: {x: v.get(x) for x in ("auc", "at_0.5_fa_per_hour", "threshold_at_0.5")}
               for k, v in report.items() if k.startswith("pooled")}
    print(json.dumps(summary, indent=1))
    return 0
