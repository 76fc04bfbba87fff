"""`kws-train synth`: a synthetic Russian call corpus in the seed's layout.

DIR/audio/<uid>.opus, DIR/word_bounds.json (uid -> [start_s, end_s] of the target words,
positives only) and DIR/manifest.jsonl (how each call was made). Call i is generated
from the seed sequence (seed, i) alone, so the corpus is the same for any --jobs, and a run
that was stopped resumes where it was: DIR/calls/<uid>.json marks each finished call.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from kws_stream.frontends import SAMPLE_RATE
from kws_stream.pool import imap
from kws_stream.resample import resample

from . import synth_channel as ch
from . import synth_voice
from .align import locate
from .synth_phrases import CONFUSABLE_CORES, REAL_MARK, TARGETS, confusable_sentence, has_target, target_sentence
from .synth_tts import (ENGINES, ESPEAK_VARIANTS, RHVOICE_ALLOWED, RHVOICE_TRAIN, RHVOICE_VAL, MissingTool,
                        Utterance, check_engines, speech)

log = logging.getLogger(__name__)

# Targets alone, between carrier words synthesised separately (the glued form).
CARRIERS = (("", ""), ("алло, я вас", ""), ("я вас", ""), ("алло, алло,", ""), ("вас", ""),
            ("ничего", ""), ("совсем", ""), ("говорите громче,", ""), ("", "вас"), ("", "ничего"),
            ("алло,", ""), ("что?", ""), ("я вас совсем", ""), ("", "перезвоните"), ("простите,", ""),
            ("", "говорите громче"))
SENTENCE_POOL = 6000  # filler sentences, de-duplicated; bounded so the TTS cache is reused across corpora
FESTIVAL_POOL = 250  # Festival reloads its voice per utterance (1.7 s); a smaller pool keeps it cheap


REAL_LEVEL_DB = 6.0  # a recording's level around the phrase's: within this many dB


DEFAULT_STYLE = {"rhvoice": (100, 100), "espeak": (160, 50), "festival": (100, 100)}


@dataclass(frozen=True)
class SynthConfig:
    out: str
    n: int
    seed: int
    split: str = "train"  # train | val | all (all twelve allowed RHVoice voices, for voice folds)
    pos_fraction: float = 0.45
    holdout_engine: str | None = None  # train: never use it; val: use only it
    min_seconds: float = 3.0
    max_seconds: float = 20.0
    jobs: int = 1
    fetch: bool = True  # fetch the Debian packages of real recordings and music first
    sentence_share: float = 0.65  # positives and confusables said inside one whole sentence
    pseudo_speakers: float = 0.3  # share of speech tracks with pitch and formants moved (WORLD)
    codecs: str = "train"  # train: the training codecs; heldout: only codecs training never uses
    real_context: float = 0.0  # share of speech tracks among real Russian recordings (cli.py says more)
    real_speech: str = "train"  # which recordings: train or heldout (synth_channel.real_speech_files)
    confusable_share: float = 0.25  # share of target-free calls built on a confusable


# -- choices ---------------------------------------------------------------------

def engines_for(cfg: SynthConfig) -> tuple[str, ...]:
    if cfg.split == "val":
        return (cfg.holdout_engine,) if cfg.holdout_engine else ("rhvoice",)
    return tuple(e for e in ENGINES if e != cfg.holdout_engine)


def rhvoice_voices(cfg: SynthConfig) -> tuple[str, ...]:
    if cfg.split == "val":
        return RHVOICE_ALLOWED if cfg.holdout_engine == "rhvoice" else RHVOICE_VAL
    return RHVOICE_ALLOWED if cfg.split == "all" else RHVOICE_TRAIN


def pick_voice(rng: np.random.Generator, cfg: SynthConfig, engine: str) -> dict:
    """A speaker: engine voice plus quantised rate and pitch (quantised so the cache is reused)."""
    if engine == "rhvoice":
        voices = rhvoice_voices(cfg)
        return {"voice": voices[rng.integers(len(voices))], "rate": int(rng.choice([70, 85, 100, 115, 130])),
                "pitch": int(rng.choice([80, 90, 100, 110, 120]))}
    if engine == "espeak":
        return {"voice": ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))],
                "rate": int(rng.choice([120, 140, 160, 180, 210])), "pitch": int(rng.choice([25, 40, 50, 60, 75]))}
    return {"voice": "msu_ru_nsh_clunits", "rate": 100, "pitch": 100}


def speakable(s: str) -> bool:
    """A plain Russian sentence of three words or more that a TTS voice reads as it is
    written: no abbreviations (a dot inside), digits or Latin letters."""
    plain = re.fullmatch(r"[А-Яа-яЁё ,.!?:;—-]+", s) is not None
    return plain and 15 <= len(s) <= 110 and s.count(" ") >= 2 and not re.search(r"\.\S", s)


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Natural Russian sentences from fortunes-ru, de-duplicated, without any form of «слыш»."""
    found, seen = [], set()
    for path in sorted(glob.glob("/usr/share/games/fortunes/ru/*.u8")):
        text = Path(path).read_text(encoding="utf-8", errors="ignore")
        for block in text.split("\n%\n"):
            for s in re.split(r"(?<=[.!?])\s+", " ".join(block.split())):
                key = " ".join(re.findall(r"\w+", s.lower().replace("ё", "е")))
                if speakable(s) and "слыш" not in key and key not in seen:
                    seen.add(key)
                    found.append(s.strip(" -—"))
    if not found:
        raise MissingTool("fortunes-ru: no Russian text found; install it with: apt-get install fortunes-ru")
    order = np.random.default_rng(0).permutation(len(found))
    return tuple(found[i] for i in order)


def filler(rng: np.random.Generator, engine: str) -> str:
    pool = sentences()[:FESTIVAL_POOL if engine == "festival" else SENTENCE_POOL]
    return pool[rng.integers(len(pool))]


# -- one call ------------------------------------------------------------------------

def say(engine: str, voice: dict, text: str, styled: bool = True) -> np.ndarray:
    """Fillers (styled=False) use the engine's default rate and pitch, so they come from
    the cache; the target, carriers and confusables use the speaker's own settings."""
    rate, pitch = (voice["rate"], voice["pitch"]) if styled else DEFAULT_STYLE[engine]
    return speech(Utterance(engine, voice["voice"], rate, pitch, text)).astype(np.float64)


def say_filler(rng: np.random.Generator, engine: str, voice: dict, text: str) -> np.ndarray:
    """A filler sentence; one an engine cannot say is replaced by another."""
    for _ in range(5):
        try:
            return say(engine, voice, text, styled=False)
        except RuntimeError as e:
            log.debug("%s", e)
            text = filler(rng, engine)
    raise RuntimeError(f"{engine}: five filler sentences failed to synthesise")


def gap(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.9) -> np.ndarray:
    return np.zeros(int(rng.uniform(lo, hi) * SAMPLE_RATE))


def glued_special(rng: np.random.Generator, kind: str) -> list[tuple[str, bool]]:
    """The target between separately synthesised carrier words, or a confusable alone:
    (text, is the target) pieces."""
    if kind == "positive":
        prefix, suffix = CARRIERS[rng.integers(len(CARRIERS))]
        return [(t, False) for t in [prefix] if t] + [(TARGETS[rng.integers(2)], True)] + \
            [(t, False) for t in [suffix] if t]
    return [(CONFUSABLE_CORES[rng.integers(len(CONFUSABLE_CORES))], False)]


def say_glued(rng: np.random.Generator, engine: str, voice: dict, pieces: list[tuple[str, bool]]):
    """(audio, target span or None, texts) of pieces said one by one with short gaps."""
    parts, texts, span, total = [], [], None, 0
    for j, (text, is_target) in enumerate(pieces):
        x = say(engine, voice, text)
        if is_target:
            span = (total, total + x.size)
        parts.append(x)
        texts.append(text)
        total += x.size
        if j < len(pieces) - 1:
            parts.append(gap(rng, 0.02, 0.2))
            total += parts[-1].size
    return np.concatenate(parts), span, texts


MAX_ALIGN_COST = 0.45  # mean cosine distance along the DTW path; above it the match is not trusted


def say_in_sentence(rng: np.random.Generator, engine: str, voice: dict, kind: str):
    """(audio, target span or None, texts, alignment cost) of one whole sentence holding the
    target (found by DTW against the same voice saying it alone) or a confusable. None
    when the alignment is not trusted; the caller then falls back to the glued form."""
    if kind != "positive":
        text = confusable_sentence(rng)
        return say(engine, voice, text), None, [text], None
    text, target = target_sentence(rng)
    x, alone = say(engine, voice, text), say(engine, voice, target)
    m = locate(alone, x)
    if m.cost > MAX_ALIGN_COST or not 0.5 <= (m.end - m.start) / alone.size <= 1.6:
        return None
    return x, (m.start, m.end), [text], round(m.cost, 3)


def speech_track(rng: np.random.Generator, cfg: SynthConfig, kind: str, seconds: float):
    """Speech of one voice with the target (positives) or a confusable at a random place,
    inside a whole sentence or said alone. Returns the track, the target's sample span or
    None, the texts, engine, voice and how the special part was made."""
    engines = engines_for(cfg)
    engine = engines[rng.integers(len(engines))]
    voice = pick_voice(rng, cfg, engine)
    special, how = None, {}
    if kind != "speech" and rng.random() < cfg.sentence_share:
        got = say_in_sentence(rng, engine, voice, kind)
        if got is not None:
            special = got[:3]
            how = {"form": "sentence"} if got[3] is None else {"form": "sentence", "align_cost": got[3]}
    if kind != "speech" and special is None:
        special, how = say_glued(rng, engine, voice, glued_special(rng, kind)), {"form": "alone"}
    parts, texts, span = [gap(rng, 0.1, 1.0)], [], None
    total = parts[0].size
    target_budget = int(seconds * SAMPLE_RATE)
    if cfg.real_context > 0 and rng.random() < cfg.real_context:
        if special is None:  # ordinary speech: one synthetic sentence among the recordings, so that
            text = filler(rng, engine)  # a synthetic voice among real ones is no sign of the target
            special = (say_filler(rng, engine, voice, text), None, [text])
        x, span, texts = real_context(rng, cfg, special, target_budget)
        how["context"] = "real"
        return _converted(rng, cfg, x, how), span, texts, engine, voice, how
    n_before = rng.integers(0, 3)
    n_after = 3 + int(seconds // 4)  # enough to fill the call; the loop stops at the budget
    plan = [filler(rng, engine) for _ in range(n_before)] + [special] + [filler(rng, engine) for _ in range(n_after)]
    for item in plan:
        if item is None:  # ordinary speech: no special part
            continue
        if isinstance(item, tuple):
            x, sub_span, sub_texts = item
            if sub_span is not None:
                span = (total + sub_span[0], total + sub_span[1])
            texts += sub_texts
        else:
            if total > target_budget and (span is not None or kind != "positive"):
                break
            x = say_filler(rng, engine, voice, item)
            texts.append(item)
        parts.append(x)
        total += x.size
        parts.append(gap(rng))
        total += parts[-1].size
    return _converted(rng, cfg, np.concatenate(parts), how), span, texts, engine, voice, how


def _converted(rng: np.random.Generator, cfg: SynthConfig, x: np.ndarray, how: dict) -> np.ndarray:
    if rng.random() < cfg.pseudo_speakers:
        pitch, formant = synth_voice.pick(rng)
        x = synth_voice.convert(x, pitch, formant)
        how["pseudo_speaker"] = {"pitch": round(pitch, 3), "formant": round(formant, 3)}
    return x


def real_context(rng: np.random.Generator, cfg: SynthConfig, special: tuple, budget: int):
    """The synthetic target (a confusable, a sentence) among real Russian recordings: one to three
    before it, then as many after as fill the call, each at the special part's speech level
    within REAL_LEVEL_DB, with pauses between. The bench puts real speech around the phrase; in
    the other forms a model hears real voices only in calls without the target."""
    x, sub_span, special_texts = special
    files = ch.real_speech_files(cfg.real_speech)
    level = ch.speech_level(x)
    parts, texts, span, placed = [gap(rng, 0.1, 1.0)], [], None, False
    total, before = parts[0].size, int(rng.integers(1, 4))
    while not placed or total < budget:
        if not placed and len(texts) == before:
            placed, piece, texts = True, x, texts + special_texts
            if sub_span is not None:
                span = (total + sub_span[0], total + sub_span[1])
        else:
            path = files[rng.integers(len(files))]
            clip = ch.real_clip(path)
            clip_level = ch.speech_level(clip)
            if clip_level < ch.SILENT_LEVEL:  # none among today's files; never a huge gain
                continue
            piece = clip * (level / clip_level * 10 ** (rng.uniform(-1, 1) * REAL_LEVEL_DB / 20))
            texts = texts + [f"{REAL_MARK}{Path(path).name}]"]
        parts += [piece, gap(rng)]
        total += piece.size + parts[-1].size
    return np.concatenate(parts), span, texts


def negative_kinds(cfg: SynthConfig) -> list[float]:
    """Chances of a target-free call's kind (speech, confusable, Russian recordings, foreign
    prompts, other sounds): the confusables' share as asked, the others in their proportions."""
    rest = [0.45, 0.1, 0.1, 0.1]
    if cfg.confusable_share != 0.25:
        rest = [p * (1 - cfg.confusable_share) / 0.75 for p in rest]
    return [rest[0], cfg.confusable_share, *rest[1:]]


def make_call(cfg: SynthConfig, index: int) -> tuple[bytes, dict]:
    rng = np.random.default_rng([cfg.seed, index, 0 if cfg.split == "train" else 1])
    uid = call_uid(cfg, index)
    seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds)
    kind = "positive" if rng.random() < cfg.pos_fraction else \
        str(rng.choice(["speech", "confusable", "russian", "foreign", "other"], p=negative_kinds(cfg)))
    meta: dict = {"uid": uid, "kind": kind, "label": int(kind == "positive")}
    span = None
    if kind in ("positive", "speech", "confusable"):
        x, span, texts, engine, voice, how = speech_track(rng, cfg, kind, seconds)
        meta.update(how)
        # Speed perturbation, tempo and vocal tract together: resampled to SAMPLE_RATE * factor
        # and played at SAMPLE_RATE, the track becomes `factor` times longer.
        factor = float(rng.uniform(0.88, 1.12))
        rate = int(SAMPLE_RATE * factor)
        x = resample(x, SAMPLE_RATE, rate)
        if span is not None:
            span = (span[0] * rate // SAMPLE_RATE, span[1] * rate // SAMPLE_RATE)
        meta.update(engine=engine, voice=voice, texts=texts, speed=round(factor, 4))
    else:
        x, source = background_only(rng, kind, int(seconds * SAMPLE_RATE))
        meta.update(engine=None, source=source)
    x, channel = apply_channel(rng, x, cfg.codecs)
    meta.update(channel)
    if span is not None:
        meta["phrase"] = next(t for t in meta["texts"] if has_target(t))
        meta["bounds"] = [round(span[0] / SAMPLE_RATE, 3), round(span[1] / SAMPLE_RATE, 3)]
    meta["seconds"] = round(x.size / SAMPLE_RATE, 3)
    return encode_opus(x), meta


def background_only(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, str]:
    """A call without Russian synthetic speech: real Russian or foreign recordings, music,
    tones, noise or silence."""
    if kind in ("russian", "foreign"):
        got = ch.excerpt(rng, kind, n)
        if got is not None:
            return got[0], f"{kind}:{got[1]}"
    choice = rng.integers(4)
    if choice == 0 and (got := ch.excerpt(rng, "music", n)) is not None:
        return got[0], f"music:{got[1]}"
    if choice == 1:
        x, name = ch.tones(rng, n)
        return x, f"tones:{name}"
    if choice == 2:
        return 1e-4 * rng.standard_normal(n), "silence"
    exponent = float(rng.uniform(0, 2))
    return 0.05 * ch.coloured_noise(rng, n, exponent), f"noise:{exponent:.2f}"


NARROW_WEIGHTS = {"ulaw": 0.15, "alaw": 0.15, "gsm": 0.25, "opus-lowrate": 0.1, "g726": 0.1, "ima-adpcm": 0.1,
                  "speex": 0.15}  # GSM, the bench's weakest channel, drawn most


def pick_codec(rng: np.random.Generator, codecs: str) -> tuple[bool, str]:
    """(narrowband, codec): the training mix, or (heldout) only codecs training never hears."""
    if codecs == "heldout":
        return True, str(rng.choice(ch.HELDOUT_CODECS))
    if rng.random() < 0.6:
        return True, str(rng.choice(list(NARROW_WEIGHTS), p=list(NARROW_WEIGHTS.values())))
    return False, str(rng.choice(["pcm", "opus-lowrate"], p=[0.7, 0.3]))


def apply_channel(rng: np.random.Generator, x: np.ndarray, codecs: str = "train") -> tuple[np.ndarray, dict]:
    info: dict = {}
    irs = ch.room_irs()
    if irs and rng.random() < 0.3:
        k = int(rng.integers(len(irs)))
        x = ch.reverberate(x, irs[k])
        info["room"] = k
    snr = None
    if rng.random() < 0.85:
        snr = float(rng.uniform(0, 30))
        source = str(rng.choice(["ambient", "coloured", "babble", "music"], p=[0.4, 0.25, 0.2, 0.15]))
        noise = None
        if source in ("ambient", "music"):
            got = ch.excerpt(rng, source, x.size)
            noise = got[0] if got else None
        if source == "babble":
            got = ch.excerpt(rng, "foreign", x.size)
            noise = got[0] if got else None
        if noise is None:
            source, noise = "coloured", ch.coloured_noise(rng, x.size, float(rng.uniform(0, 2)))
        x = x + ch.scale_to_snr(x, noise, snr)
        info["noise"] = source
    info["snr_db"] = None if snr is None else round(snr, 2)
    narrow, codec = pick_codec(rng, codecs)
    peak = np.abs(x).max() + 1e-12
    x = x / peak * 0.5
    x = ch.telephone(x, codec, rng) if narrow else ch.encode(x, codec, SAMPLE_RATE, rng)
    info.update(band="narrow" if narrow else "wide", codec=codec)
    if rng.random() < 0.2:
        loss = float(rng.uniform(0.01, 0.06))
        conceal = bool(rng.random() < 0.5)
        x = ch.packet_loss(x, rng, loss, conceal)
        info["packet_loss"] = round(loss, 3)
        info["concealed"] = conceal
    if rng.random() < 0.15:
        x = ch.level_jumps(x, rng)
        info["level_jumps"] = True
    gain_db = float(rng.uniform(-30, 0))
    x = x * 10 ** (gain_db / 20) / (np.abs(x).max() + 1e-12)
    if rng.random() < 0.08:
        x = np.clip(x * rng.uniform(2, 6), -1, 1)
        info["clipped"] = True
    info["gain_db"] = round(gain_db, 2)
    return x, info


# -- files -------------------------------------------------------------------------

def encode_opus(x: np.ndarray) -> bytes:
    return ch.opus_bytes(x, SAMPLE_RATE)


_cfg: SynthConfig | None = None


def _init(cfg: SynthConfig) -> None:
    global _cfg
    _cfg = cfg


def check_same_recipe(cfg: SynthConfig) -> None:
    """A corpus directory resumes only with the settings it was begun with (jobs, n and
    fetching aside): DIR/synth.json records them."""
    record = Path(cfg.out) / "synth.json"
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("out", "n", "jobs", "fetch")}
    if record.exists():
        defaults = {f.name: f.default for f in fields(SynthConfig) if f.name in recipe}
        before = {**defaults, **json.loads(record.read_text(encoding="utf-8"))}  # settings added since: defaults
        if before != recipe:
            changed = sorted(k for k in set(before) | set(recipe) if before.get(k) != recipe.get(k))
            raise ValueError(f"{cfg.out} was begun with other settings ({', '.join(changed)}); use a new --out")
        return
    record.write_text(json.dumps(recipe, sort_keys=True))


def call_uid(cfg: SynthConfig, index: int) -> str:
    return f"{cfg.split}{cfg.seed}-{index:06d}"


def _one(index: int) -> dict:
    """Make call `index`, or read it back when an earlier run finished it: the audio is
    written first and the call's JSON last, each atomically, so a call with its JSON is whole."""
    out = Path(_cfg.out)
    uid = call_uid(_cfg, index)
    done = out / "calls" / f"{uid}.json"
    if done.exists() and (out / "audio" / f"{uid}.opus").exists():
        return json.loads(done.read_text(encoding="utf-8"))
    data, meta = make_call(_cfg, index)
    for path, payload in ((out / "audio" / f"{meta['uid']}.opus", data),
                          (done, json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())):
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    return meta


def generate(cfg: SynthConfig, progress: bool = True) -> list[dict]:
    if cfg.holdout_engine is not None and cfg.holdout_engine not in ENGINES:
        raise ValueError(f"--holdout-engine must be one of {', '.join(ENGINES)}")
    if not 0.0 <= cfg.real_context <= 1.0 or cfg.real_speech not in ("train", "heldout"):
        raise ValueError("--real-context must be a share in 0..1 and --real-speech train or heldout")
    check_engines(engines_for(cfg))
    sentences()
    if cfg.fetch:
        for pkg in ch.fetch_sources():
            log.warning("%s: could not be fetched with apt-get download; calls are made without it", pkg)
    if cfg.real_context > 0:
        ch.check_real_speech()
    for sub in ("audio", "calls"):
        (Path(cfg.out) / sub).mkdir(parents=True, exist_ok=True)
    check_same_recipe(cfg)
    ch.room_irs()  # build once before forking workers
    calls = imap(_one, range(cfg.n), cfg.jobs, _init, (cfg,), start="fork", chunksize=4)  # forked: IRs shared
    metas = list(_progress(calls, cfg.n, progress))
    out = Path(cfg.out)
    bounds = {m["uid"]: m["bounds"] for m in metas if "bounds" in m}
    (out / "word_bounds.json").write_text(json.dumps(bounds, ensure_ascii=False, indent=1, sort_keys=True))
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for m in metas:
            f.write(json.dumps(m, ensure_ascii=False, sort_keys=True) + "\n")
    return metas


def _progress(it, total: int, show: bool):
    if not show:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, unit="call", file=sys.stderr)


def run(args) -> int:
    cfg = SynthConfig(out=args.out, n=args.n, seed=args.seed, split=args.split, pos_fraction=args.pos_fraction,
                      holdout_engine=args.holdout_engine, min_seconds=args.min_seconds,
                      max_seconds=args.max_seconds, jobs=args.jobs, fetch=not args.no_fetch,
                      sentence_share=args.sentence_share, pseudo_speakers=args.pseudo_speakers, codecs=args.codecs,
                      real_context=args.real_context, real_speech=args.real_speech,
                      confusable_share=args.confusable_share)
    if not 0.0 <= cfg.confusable_share <= 1.0:
        print(f"kws-train synth: --confusable-share {cfg.confusable_share:g}: a share from 0 to 1", file=sys.stderr)
        return 2
    try:
        metas = generate(cfg)
    except (MissingTool, ValueError) as e:
        print(f"kws-train synth: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a TTS engine or codec that failed on one call: the calls made so far are kept
        print(f"kws-train synth: {e}; run the same command again to resume", file=sys.stderr)
        return 1
    n_pos = sum(m["label"] for m in metas)
    print(f"kws-train synth: {len(metas)} calls ({n_pos} positive) in {cfg.out}", file=sys.stderr)
    return 0


def used_voices(manifest: Path) -> set[tuple[str, str]]:
    """(engine, voice) pairs of a corpus, for split checks."""
    pairs = set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        m = json.loads(line)
        if m.get("engine"):
            pairs.add((m["engine"], m["voice"]["voice"]))
    return pairs


__all__ = ["SynthConfig", "generate", "run", "used_voices"]
