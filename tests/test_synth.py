"""`kws-train synth`: layout, exact bounds, decodable opus, determinism, voice and engine splits.

These tests synthesise with every engine (RHVoice, espeak-ng, Festival); CI installs
them with .ci/install-synth-deps.sh, and a missing engine fails the tests.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws_train import synth
from kws_train.synth_tts import RHVOICE_ALLOWED, RHVOICE_RESERVED, RHVOICE_VAL, Utterance, speech

RATE = 16000


def make(out, n, seed, jobs=1, **kw):
    cfg = synth.SynthConfig(out=str(out), n=n, seed=seed, jobs=jobs, fetch=False, **kw)
    synth.generate(cfg, progress=False)
    return Path(out)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    out = {"train": make(root / "train", 12, 3, jobs=2, pos_fraction=0.6)}
    for engine in ("rhvoice", "espeak", "festival"):
        out[engine] = make(root / f"val_{engine}", 3, 4, split="val", holdout_engine=engine, pos_fraction=1.0,
                           max_seconds=6.0)
    out["val"] = make(root / "val", 4, 5, split="val", pos_fraction=0.5)
    out["no_festival"] = make(root / "no_festival", 8, 6, holdout_engine="festival", pos_fraction=0.5)
    return out


def manifest(root):
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_layout_matches_the_seed(corpora):
    for root in corpora.values():
        metas = manifest(root)
        audio = sorted(p.stem for p in (root / "audio").glob("*.opus"))
        assert audio == sorted(m["uid"] for m in metas)
        bounds = json.loads((root / "word_bounds.json").read_text())
        assert set(bounds) == {m["uid"] for m in metas if m["label"] == 1}
        for m in metas:
            assert {"engine", "kind", "codec", "band", "gain_db", "snr_db", "seconds"} <= set(m)


def test_every_engine_is_used(corpora):
    for engine in ("rhvoice", "espeak", "festival"):
        assert {m["engine"] for m in manifest(corpora[engine]) if m["engine"]} == {engine}


def test_every_file_decodes_and_bounds_sit_on_speech(corpora):
    for root in corpora.values():
        bounds = json.loads((root / "word_bounds.json").read_text())
        for m in manifest(root):
            x, rate = sf.read(root / "audio" / f"{m['uid']}.opus")
            assert rate == RATE and x.ndim == 1 and np.isfinite(x).all()
            assert abs(x.size / RATE - m["seconds"]) < 0.05
            if m["uid"] in bounds:
                start, end = bounds[m["uid"]]
                assert 0 <= start < end <= x.size / RATE
                assert 0.2 < end - start < 2.0
                hop = RATE // 50
                frames = x[:x.size // hop * hop].reshape(-1, hop)
                level = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
                inside = level[int(start * 50):int(end * 50)]
                assert np.median(inside) > np.percentile(level, 10) + 3, m["uid"]


def test_target_span_is_tight_to_20_ms(corpora):
    """Before the channel: the span starts and ends on the target's own speech."""
    cfg = synth.SynthConfig(out="unused", n=1, seed=9, fetch=False, sentence_share=0.0, pseudo_speakers=0.0)
    for i in range(6):
        rng = np.random.default_rng([9, i])
        x, span, texts, engine, voice, how = synth.speech_track(rng, cfg, "positive", 8.0)
        assert how["form"] == "alone"
        a, b = span
        word = x[a:b]
        hop = RATE // 50
        level = 10 * np.log10((word[:word.size // hop * hop].reshape(-1, hop) ** 2).mean(axis=1) + 1e-12)
        assert level[0] > level.max() - 45 and level[-1] > level.max() - 45, (engine, texts)
        target = speech(Utterance(engine, voice["voice"], voice["rate"], voice["pitch"],
                                  [t for t in texts if t in synth.TARGETS][0]))
        np.testing.assert_allclose(word, target.astype(np.float64))


def test_same_seed_same_bytes(tmp_path):
    a = make(tmp_path / "a", 5, 11, jobs=1)
    b = make(tmp_path / "b", 5, 11, jobs=2)
    for name in ("word_bounds.json", "manifest.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for f in sorted((a / "audio").iterdir()):
        assert f.read_bytes() == (b / "audio" / f.name).read_bytes(), f.name


def test_splits_hold_out_voices_and_engines(corpora):
    train_voices = synth.used_voices(corpora["train"] / "manifest.jsonl") | \
        synth.used_voices(corpora["no_festival"] / "manifest.jsonl")
    val_voices = synth.used_voices(corpora["val"] / "manifest.jsonl")
    assert val_voices and {v for e, v in val_voices} <= set(RHVOICE_VAL)
    assert not {v for e, v in train_voices if e == "rhvoice"} & set(RHVOICE_VAL)
    assert "festival" not in {m["engine"] for m in manifest(corpora["no_festival"])}


def test_reserved_voices_are_never_used(corpora, tmp_path):
    for root in corpora.values():
        for m in manifest(root):
            if m["engine"] == "rhvoice":
                assert m["voice"]["voice"] in RHVOICE_ALLOWED
                assert m["voice"]["voice"] not in RHVOICE_RESERVED
    with pytest.raises(ValueError, match="not allowed"):
        speech(Utterance("rhvoice", "elena", 100, 100, "проверка"))


def test_missing_engine_is_one_clear_line(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "synth", "--out", str(tmp_path / "c"), "--n", "1",
                        "--no-fetch"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "apt-get install" in r.stderr, r.stderr


def test_real_context_puts_recordings_around_the_exact_target(tmp_path, monkeypatch):
    """--real-context: one to three recordings before the target, more after, each at the
    target's speech level within 6 dB; the span is the target's own samples."""
    paths, amplitudes = [], (0.01, 0.3, 0.9)  # far apart: only level matching brings them near the target's
    for k, (seconds, amplitude) in enumerate(zip((0.8, 1.3, 2.1), amplitudes)):  # stand-ins: tone bursts
        n = int(seconds * RATE)
        x = np.zeros(n + int(0.4 * RATE))
        x[int(0.2 * RATE):int(0.2 * RATE) + n] = amplitude * np.sin(2 * np.pi * (200 + 100 * k) * np.arange(n) / RATE)
        paths.append(str(tmp_path / f"rec{k}.wav"))
        sf.write(paths[-1], x, RATE, subtype="FLOAT")  # float: no samples rounded to zero inside a burst
    monkeypatch.setattr(synth.ch, "real_speech_files", lambda half: tuple(paths))
    cfg = synth.SynthConfig(out="unused", n=1, seed=9, fetch=False, sentence_share=0.0, pseudo_speakers=0.0,
                            real_context=1.0)
    for i in range(4):
        rng = np.random.default_rng([9, i])
        x, span, texts, engine, voice, how = synth.speech_track(rng, cfg, "positive", 8.0)
        assert how == {"form": "alone", "context": "real"}
        first = next(j for j, text in enumerate(texts) if not text.startswith(synth.REAL_MARK))
        assert 1 <= first <= 3 and texts[-1].startswith(synth.REAL_MARK) and x.size >= 8.0 * RATE
        target = speech(Utterance(engine, voice["voice"], voice["rate"], voice["pitch"],
                                  [text for text in texts if text in synth.TARGETS][0]))
        np.testing.assert_allclose(x[span[0]:span[1]], target.astype(np.float64))
    # each recording at the phrase's level within 6 dB, whatever its own: a 0.2 burst stands for the phrase
    phrase = 0.2 * np.sin(2 * np.pi * 500 * np.arange(RATE) / RATE)
    x, span, texts = synth.real_context(np.random.default_rng(3), cfg, (phrase, (0, RATE), ["не слышу"]), 8 * RATE)
    edges = np.flatnonzero(np.diff(np.r_[0, (x != 0).astype(int), 0]))
    runs = [x[a:b] for a, b in zip(edges[::2], edges[1::2])]
    assert len(runs) == len(texts) >= 3 and x[span[0]:span[1]].tolist() == phrase.tolist()
    level = synth.ch.speech_level(phrase)
    for run in runs:
        assert level / 2.1 < np.sqrt(np.mean(run ** 2)) < level * 2.1  # within 6 dB (x 2.0), and a little for rounding
    # ordinary speech too: one synthetic sentence among the recordings, no target
    x, span, texts, *_, how = synth.speech_track(np.random.default_rng([9, 7]), cfg, "speech", 8.0)
    assert span is None and how == {"context": "real"} and texts[0].startswith(synth.REAL_MARK)
    assert sum(not text.startswith(synth.REAL_MARK) for text in texts) == 1 and not any(map(synth.has_target, texts))


def test_real_speech_halves_are_disjoint(monkeypatch):
    files = tuple(f"/x/usr/share/tuxpaint/stamps/{k:03d}_desc_ru.ogg" for k in range(10)) + \
        ("/x/usr/share/klettres/ru/a.ogg",)
    monkeypatch.setattr(synth.ch, "sound_files", lambda kind: files)
    train, heldout = synth.ch.real_speech_files("train"), synth.ch.real_speech_files("heldout")
    assert not set(train) & set(heldout) and len(heldout) == 2 and len(train) == 8  # klettres: letters, not used


def test_a_corpus_begun_before_a_setting_existed_resumes(tmp_path):
    """synth.json records the recipe; settings added since then count as their defaults."""
    cfg = synth.SynthConfig(out=str(tmp_path), n=1, seed=24, fetch=False)
    old = {k: v for k, v in json.loads(json.dumps(synth.asdict(cfg))).items()
           if k not in ("out", "n", "jobs", "fetch", "real_context", "real_speech", "confusable_share")}
    (tmp_path / "synth.json").write_text(json.dumps(old))
    synth.check_same_recipe(cfg)
    with pytest.raises(ValueError, match="real_context"):
        synth.check_same_recipe(synth.SynthConfig(out=str(tmp_path), n=1, seed=24, fetch=False, real_context=0.5))
    with pytest.raises(ValueError, match="confusable_share"):
        synth.check_same_recipe(synth.SynthConfig(out=str(tmp_path), n=1, seed=24, fetch=False, confusable_share=0.8))


def test_a_stalled_tts_run_is_tried_again_then_named(tmp_path, monkeypatch):
    from kws_train import synth_tts
    monkeypatch.setattr(synth_tts, "TTS_TIMEOUT", 0.2)
    marker = tmp_path / "runs"
    script = f"echo >> {marker}; sleep 5"
    with pytest.raises(RuntimeError, match=r"^sh took over 0.2 s twice for 'текст'$"):
        synth_tts._run(["sh", "-c", script], "текст", tmp_path / "u.wav")
    assert len(marker.read_text().splitlines()) == 2  # one retry, then the error


def test_recordings_are_cached_at_16_khz_to_the_bit(tmp_path, monkeypatch):
    from kws_train import synth_channel as ch
    monkeypatch.setattr(ch, "CACHE", tmp_path / "cache")
    wav = tmp_path / "rec.wav"
    rng = np.random.default_rng(5)
    sf.write(wav, 0.3 * rng.standard_normal(44100 * 2), 44100, subtype="FLOAT")
    first = ch.cached_16k(str(wav))
    np.testing.assert_array_equal(first, ch.load_16k(wav))
    assert first.dtype == np.float64 and first.size == 32000
    stored = list((tmp_path / "cache" / "clips").glob("*/*.npy"))
    assert len(stored) == 1
    np.testing.assert_array_equal(ch.cached_16k(str(wav)), first)  # read back, not made again
    assert list((tmp_path / "cache" / "clips").glob("*/*.npy")) == stored
    sf.write(wav, 0.3 * rng.standard_normal(44100), 44100, subtype="FLOAT")  # the recording changes
    os.utime(wav, ns=(1, 1))
    again = ch.cached_16k(str(wav))
    np.testing.assert_array_equal(again, ch.load_16k(wav))
    assert again.size == 16000


def test_confusable_share_sets_the_kind_chances_and_the_default_keeps_the_old_draws():
    from kws_train.synth import SynthConfig, negative_kinds
    assert negative_kinds(SynthConfig(out="-", n=1, seed=1)) == [0.45, 0.25, 0.1, 0.1, 0.1]  # old corpora's bytes
    chances = negative_kinds(SynthConfig(out="-", n=1, seed=1, confusable_share=0.7))
    assert chances[1] == 0.7 and abs(sum(chances) - 1) < 1e-12
    assert np.allclose(np.array(chances)[[0, 2, 3, 4]] / chances[0], [1, 0.1 / 0.45, 0.1 / 0.45, 0.1 / 0.45])
