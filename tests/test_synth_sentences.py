"""The generator's issue-10 parts: the target inside whole sentences and its DTW bounds,
clean confusables, WORLD pseudo-speakers, the extra codecs, resumable generation and the
leave-voices-out folds."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kws_train import synth, synth_channel as ch, synth_voice
from kws_train.align import locate
from kws_train.folds import fold_of
from kws_train.synth_phrases import TARGETS, confusable_sentence, has_target, target_sentence
from kws_train.synth_tts import FOLDS, RHVOICE_ALLOWED, Utterance, speech

RATE = 16000
VOICES = (("rhvoice", "anna", 100, 100), ("rhvoice", "pavel", 130, 80), ("espeak", "+m3", 160, 50),
          ("festival", "msu_ru_nsh_clunits", 100, 100))


def say(engine, voice, rate, pitch, text):
    return speech(Utterance(engine, voice, rate, pitch, text)).astype(np.float64)


@pytest.mark.parametrize("engine,voice,rate,pitch", VOICES)
def test_dtw_finds_a_phrase_glued_between_other_words(engine, voice, rate, pitch):
    pre = say(engine, voice, rate, pitch, "алло, говорите громче, я вас")
    target = say(engine, voice, rate, pitch, "не слышу")
    post = say(engine, voice, rate, pitch, "перезвоните, пожалуйста")
    gap = np.zeros(RATE // 10)
    x = np.concatenate([pre, gap, target, gap, post])
    m = locate(target, x)
    start = pre.size + gap.size
    assert abs(m.start - start) <= 0.04 * RATE and abs(m.end - (start + target.size)) <= 0.04 * RATE, m


def test_sentence_bounds_agree_with_the_words_before_them():
    """An independent check of the sentence form: where DTW puts the target, the words
    before it (found by their own DTW) have just ended, or a comma's pause ago."""
    cfg = synth.SynthConfig(out="unused", n=1, seed=3, fetch=False, sentence_share=1.0, pseudo_speakers=0.0)
    checked = 0
    for i in range(12):
        rng = np.random.default_rng([3, i])
        engine = ("rhvoice", "espeak", "festival")[i % 3]
        voice = synth.pick_voice(rng, cfg, engine)
        got = synth.say_in_sentence(rng, engine, voice, "positive")
        if got is None:
            continue
        x, (a, b), (text,), cost = got
        assert cost <= synth.MAX_ALIGN_COST and has_target(text)
        target = next(t for t in TARGETS if t in text.lower())
        before = text[:text.lower().index(target)].strip(" ,.!?")
        if len(before.split()) < 2:
            continue
        prefix = synth.say(engine, voice, before)
        pause = a - locate(prefix, x[:b]).end  # a comma may add a pause before the target
        assert -0.1 * RATE <= pause <= 0.4 * RATE, (engine, text, pause / RATE)
        checked += 1
    assert checked >= 3


def test_texts_are_labelled_right():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        sentence, target = target_sentence(rng)
        assert has_target(sentence) and target in sentence.lower()
        assert not has_target(confusable_sentence(rng))
    assert not any(has_target(s) for s in synth.sentences())
    assert len(set(synth.sentences()[:synth.SENTENCE_POOL])) == synth.SENTENCE_POOL


def test_pseudo_speaker_moves_pitch_and_keeps_length():
    t = np.arange(RATE) / RATE
    x = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 20)) * 0.1
    y = synth_voice.convert(x, pitch=1.25, formant=1.0)
    assert y.size == x.size and np.isfinite(y).all()

    def f0(z):
        seg = z[RATE // 4:RATE // 4 + 4096]
        ac = np.correlate(seg, seg, "full")[seg.size - 1:]
        lo = RATE // 400
        return RATE / (lo + np.argmax(ac[lo:RATE // 60]))
    assert abs(f0(x) - 120) < 6 and abs(f0(y) - 150) < 8


def test_formant_warp_moves_the_envelope():
    sp = np.zeros((3, 513)) + 1e-6
    sp[:, 100] = 1.0
    moved = synth_voice.warp_envelope(sp, 1.1)
    assert int(np.argmax(moved[0])) == 110


@pytest.mark.parametrize("codec", sorted(ch.FFMPEG_CODECS))
def test_ffmpeg_codecs_keep_length_and_alignment(codec):
    x = say("rhvoice", "anna", 100, 100, "алло, я вас не слышу")
    y8 = ch.resample(x, RATE, ch.NARROW_RATE) * 0.5
    z = ch.encode(y8, codec, ch.NARROW_RATE, np.random.default_rng(0))
    assert z.size == y8.size and np.isfinite(z).all()
    assert ch.codec_delay(y8, z) <= 2  # the codec's own delay was removed
    assert np.corrcoef(y8, z)[0, 1] > 0.3


def test_heldout_codecs_never_in_training_mix():
    rng = np.random.default_rng(1)
    train = {synth.pick_codec(rng, "train")[1] for _ in range(2000)}
    held = {synth.pick_codec(rng, "heldout")[1] for _ in range(200)}
    assert held == set(ch.HELDOUT_CODECS) and not train & held
    assert {"g726", "speex", "ima-adpcm", "gsm"} <= train


def test_generation_resumes_with_the_same_bytes(tmp_path):
    cfg = synth.SynthConfig(out=str(tmp_path / "a"), n=4, seed=17, split="all", fetch=False, pos_fraction=0.5)
    synth.generate(cfg, progress=False)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a" / "audio").iterdir()}
    manifest = (tmp_path / "a" / "manifest.jsonl").read_bytes()
    uid = synth.call_uid(cfg, 2)
    (tmp_path / "a" / "calls" / f"{uid}.json").unlink()  # as if stopped before this call finished
    (tmp_path / "a" / "audio" / f"{uid}.opus").write_bytes(b"partial")
    synth.generate(cfg, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a" / "audio").iterdir()} == first
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == manifest


def test_folds_cover_every_allowed_voice_once():
    assert sorted(v for f in FOLDS for v in f) == sorted(RHVOICE_ALLOWED)
    for voices in FOLDS:  # variants of one speaker stay together
        for v in voices:
            assert not any(w.startswith(v.split("-")[0]) for f in FOLDS if f is not voices for w in f)
    assert fold_of({"engine": "rhvoice", "voice": {"voice": "pavel"}, "uid": "x"}) == 2
    assert fold_of({"engine": "espeak", "voice": {"voice": "+m1"}, "uid": "x"}) is None
    assert fold_of({"engine": None, "uid": "all1-000003"}) in range(len(FOLDS))


def test_kws_train_folds_end_to_end(tmp_path):
    calls = tmp_path / "calls"
    synth.generate(synth.SynthConfig(out=str(calls), n=24, seed=5, split="all", fetch=False, pos_fraction=0.5,
                                     max_seconds=8.0), progress=False)
    neg = tmp_path / "neg"
    synth.generate(synth.SynthConfig(out=str(neg), n=8, seed=6, split="val", holdout_engine="rhvoice",
                                     pos_fraction=0.0, min_seconds=15, max_seconds=20, fetch=False), progress=False)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "folds", "--data", str(calls), "--negatives", str(neg),
                        "--out", str(run), "--epochs", "1", "--threads", "1", "--hops", "1.0", "0.5"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((run / "folds.json").read_text())
    metas = [json.loads(line) for line in (calls / "manifest.jsonl").read_text().splitlines()]
    for k, fold in report["folds"].items():
        voices = set(fold["hop_1.0"]["recall_by_voice"])
        assert voices <= set(FOLDS[int(k)])  # only the fold's own voices are validated
        assert (run / f"fold{k}" / "ckpt.pt").exists()
    held = sum(1 for m in metas if fold_of(m) is not None)
    assert sum(f["val_files"] for f in report["folds"].values()) == held
    for hop in ("1.0", "0.5"):
        pooled = report[f"pooled_hop_{hop}"]
        assert 0.0 <= pooled["auc"] <= 1.0 and pooled["files"] == held
        assert 0.0 < pooled["threshold_at_0.5"] <= np.nextafter(1.0, 2.0)
    # the same command again (a session that ended mid-run) reads each fold's model back
    stamps = {k: (run / f"fold{k}" / "ckpt.pt").stat().st_mtime_ns for k in report["folds"]}
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "folds", "--data", str(calls), "--negatives", str(neg),
                        "--out", str(run), "--epochs", "1", "--threads", "1", "--hops", "1.0", "0.5"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((run / "folds.json").read_text())
    assert all(fold.get("read_back") and "train_seconds" not in fold for fold in again["folds"].values())
    assert {k: (run / f"fold{k}" / "ckpt.pt").stat().st_mtime_ns for k in report["folds"]} == stamps
    assert again["pooled_hop_1.0"] == report["pooled_hop_1.0"]
    onnx_path = run / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--ckpt", str(run / "fold0" / "ckpt.pt"),
                        "--out", str(onnx_path), "--threshold-from", str(run / "folds.json")],
                       capture_output=True, text=True, timeout=300)
    want = report["pooled_hop_1.0"]["at_0.5_fa_per_hour"]["threshold"]
    if want <= 1.0:
        assert r.returncode == 0, r.stderr
        from kws_stream.model import KwsModel
        assert KwsModel(onnx_path).info.threshold == pytest.approx(want)
    else:
        assert r.returncode == 1 and "no threshold" in r.stderr
    # verifiers of these fold models (with a second arch, which is no verifier), and the cascade they make
    import torch
    second = tmp_path / "second"
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "folds", "--data", str(calls), "--negatives", str(neg),
                        "--out", str(second), "--epochs", "1", "--threads", "1", "--init", str(run), "--cache", str(run / "cache"),
                        "--candidate-low", "0.01", "--hard-negatives", "0", "--also-arch", "emb-deep"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for k in report["folds"]:
        first = torch.load(second / f"fold{k}" / "ckpt.pt", weights_only=False)["history"][0]
        other = torch.load(second / f"fold{k}-emb-deep" / "ckpt.pt", weights_only=False)["history"][0]
        assert first["mined"]["candidates"] > 0 and "mined" not in other
    r = subprocess.run([sys.executable, "-m", "kws_train.verifier", "--runs", str(run), "--stage2", str(second),
                        "--data", str(calls), "--negatives", str(neg), "--out", str(tmp_path / "v"), "--low", "0.2",
                        "--cache", str(run / "cache")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    pooled = json.loads((tmp_path / "v" / "verifier.json").read_text())["pooled"]
    assert {"window", "the second model alone", "mean with the second model"} <= set(pooled)
    assert pooled["window"]["files"] == held and pooled["window"]["auc"] == pytest.approx(report["pooled_hop_1.0"]["auc"])
    assert "| the second model alone | — |" in r.stdout  # gated: its AUC would be the first stage's
    # a checkpoint from before a setting existed is read back when the setting is at its default
    ckpt = torch.load(run / "fold0" / "ckpt.pt", weights_only=False)
    del ckpt["config"]["skip_easy"]
    torch.save(ckpt, run / "fold0" / "ckpt.pt")
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "folds", "--data", str(calls), "--negatives", str(neg),
                        "--out", str(run), "--epochs", "1", "--threads", "1", "--hops", "1.0", "--folds", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "folds.json").read_text())["folds"]["0"].get("read_back")
