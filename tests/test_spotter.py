"""Streaming scores equal the seed's batch procedure; detections are counted in audio time."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from kws_stream import KwsModel, ModelError, Spotter, SpotterConfig
from kws_stream.audio import read_file
from kws_stream.replay import scan_file
from kws_stream.spotter import Detector
from modelkit import burst_signal, burst_weights, save_model
from seed_reference import seed_predict

RATE = 16000


def window_probs(model, audio, chunk, hop_seconds=1.0):
    probs = []
    sp = Spotter(model, config=SpotterConfig(hop_seconds=hop_seconds), on_window=lambda s, e, p: probs.append(p))
    for i in range(0, audio.size, chunk):
        sp.feed(audio[i:i + chunk])
    sp.finish()
    return probs


@pytest.mark.parametrize("seconds", [1.3, 2.5, 9.0, 14.37])
def test_file_replay_equals_seed_predict_file(tmp_path, burst_model, seconds):
    x = burst_signal(seconds, [1.05, 5.05, 9.8])
    path = tmp_path / "call.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    model = KwsModel(burst_model)
    want = seed_predict(read_file(path), lambda f: model.score(f)[0])
    got = []
    result = scan_file(str(path), model, SpotterConfig())
    sp = Spotter(model, on_window=lambda s, e, p: got.append(p))
    sp.feed(read_file(path))
    sp.finish()
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert result.max_score == pytest.approx(max(want), abs=1e-5)


def test_chunk_size_never_changes_a_score(burst_model):
    model = KwsModel(burst_model)
    x = burst_signal(21.0, [2.05, 7.05, 12.3, 18.05], seed=3)
    ref = window_probs(model, x, 160)
    assert max(ref) > 0.9 and min(ref) < 0.1  # the signal exercises the model
    for chunk in (1000, 4096, x.size):
        np.testing.assert_allclose(window_probs(model, x, chunk), ref, rtol=0, atol=1e-6)


def test_fine_hops_score_every_frame_hop(burst_model):
    model = KwsModel(burst_model)
    x = burst_signal(4.0, [1.05])
    probs = window_probs(model, x, 160, hop_seconds=0.01)
    assert len(probs) == 399  # a window at every one of the ceil((64000 - 400) / 160) + 1 frames
    np.testing.assert_allclose(window_probs(model, x, 4096, hop_seconds=0.01), probs, atol=1e-6)


def test_one_phrase_gives_one_event_and_two_phrases_two(burst_model):
    model = KwsModel(burst_model)
    x = burst_signal(20.0, [3.05, 12.05])
    sp = Spotter(model, stream="s", config=SpotterConfig(hop_seconds=0.1, threshold=0.8))
    found = sp.feed(x) + sp.finish()
    assert [d.seq for d in found] == [1, 2]
    assert 1.5 <= found[0].start <= 3.2 and 10.5 <= found[1].start <= 12.2
    for d in found:
        assert d.end - d.start == pytest.approx(2.515)
        ev = d.event()
        assert ev["type"] == "detection" and ev["schema"] == 1 and ev["stream"] == "s"
        assert ev["model"] == {"name": "test-burst", "version": "0.0.1"}


def test_detector_refractory_counts_samples():
    det = Detector(threshold=0.5, refractory_samples=40000)
    assert det(0.9, 40240)
    assert not det(0.9, 56240)  # 16000 samples later: same phrase
    assert not det(0.4, 90000)  # below threshold
    assert det(0.9, 80240)  # 40000 samples after the last event
    det.reset()
    assert det(0.9, 80241)


def test_reset_forgets_the_stream(burst_model):
    model = KwsModel(burst_model)
    x = burst_signal(8.0, [2.05])
    sp = Spotter(model)
    first = sp.feed(x) + sp.finish()
    sp.reset()
    again = sp.feed(x) + sp.finish()
    assert [(d.start, d.score, d.seq) for d in first] == [(d.start, d.score, d.seq) for d in again]
    assert sp.audio_seconds == pytest.approx(8.0)


@pytest.mark.parametrize("scale", [1.5, float("nan")])
def test_a_model_value_outside_0_1_is_counted_as_0(tmp_path, caplog, scale):
    """A broken model (values above 1, or NaN): no such score gets out, in windows or events."""
    x = burst_signal(8.0, [2.05])
    cfg = SpotterConfig(hop_seconds=0.1, threshold=0.8)
    good = Spotter(KwsModel(save_model(tmp_path / "good.onnx")), config=cfg)
    assert len(good.feed(x) + good.finish()) == 1 and good.bad_scores == 0
    seen = []
    sp = Spotter(KwsModel(save_model(tmp_path / "broken.onnx", out_scale=scale)), config=cfg,
                 on_window=lambda a, b, p: seen.append(p))
    found = sp.feed(x) + sp.finish()
    assert len(seen) == sp.windows == good.windows and all(0.0 <= p <= 1.0 for p in seen)
    assert all(0.0 <= d.score <= 1.0 for d in found)
    warned = sum("not a probability" in r.getMessage() for r in caplog.records)
    if scale > 1:  # only the windows the model scored above 1 / 1.5 were broken
        assert 0 < sp.bad_scores < sp.windows and warned == 1
    else:
        assert sp.bad_scores == sp.windows and sp.max_score == 0.0 and found == [] and warned == 1


def test_a_reload_keeps_the_count_of_bad_scores_and_warns_anew(tmp_path, caplog):
    """bad_scores counts a stream's windows across a model reload (events publish it as the
    stream's count so far); the new model's first bad value is warned about again."""
    x = burst_signal(8.0, [2.05])
    broken = KwsModel(save_model(tmp_path / "broken.onnx", out_scale=float("nan")))
    sp = Spotter(broken, config=SpotterConfig(hop_seconds=0.5))
    sp.feed(x[:4 * 16000])
    before = sp.bad_scores
    sp.replace_model(KwsModel(save_model(tmp_path / "broken2.onnx", out_scale=float("nan"))))
    sp.feed(x[4 * 16000:])
    sp.finish()
    assert 0 < before < sp.bad_scores == sp.windows
    assert sum("not a probability" in r.getMessage() for r in caplog.records) == 2


def test_the_cli_counts_a_broken_models_windows_at_the_end_of_a_file(tmp_path):
    """stream-end says how many windows the model gave no probability; a good model's, none."""
    wav = tmp_path / "call.wav"
    sf.write(wav, burst_signal(8.0, [2.05]), 16000, subtype="PCM_16")
    ends = {}
    for scale in (1.0, float("nan")):
        model = save_model(tmp_path / f"m{scale}.onnx", out_scale=scale)
        run = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--model", model,
                              "--events", "all", "--pub", "none"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        events = [json.loads(line) for line in run.stdout.splitlines()]
        ends[scale] = next(e for e in events if e.get("state") == "stream-end")
    assert ends[1.0]["bad_scores"] == 0 < ends[1.0]["windows"]
    nan = next(v for k, v in ends.items() if k != 1.0)
    assert nan["bad_scores"] == nan["windows"] == ends[1.0]["windows"] and nan["detections"] == 0


def test_a_model_value_above_1_by_rounding_is_clipped(tmp_path, caplog):
    ones = np.zeros_like(burst_weights()[0])  # sigmoid(30) is 1.0 in float32; times the scale, just above
    model = KwsModel(save_model(tmp_path / "m.onnx", weights=ones, bias=30.0, out_scale=1.0000005))
    assert model.score(np.zeros((1, ones.size), np.float32))[0] > 1.0
    sp = Spotter(model, config=SpotterConfig(threshold=0.8))
    found = sp.feed(np.zeros(16000 * 5)) + sp.finish()
    assert found and all(d.score == 1.0 for d in found) and sp.max_score == 1.0 and sp.bad_scores == 0
    assert not [r for r in caplog.records if "not a probability" in r.getMessage()]


def test_threshold_override(burst_model):
    model = KwsModel(burst_model)
    x = burst_signal(8.0, [2.05])
    sp = Spotter(model, config=SpotterConfig(threshold=1.0))
    assert sp.feed(x) + sp.finish() == []


def test_feed_rejects_multichannel(burst_model):
    with pytest.raises(ValueError, match="mono"):
        Spotter(KwsModel(burst_model)).feed(np.zeros((100, 2)))


@pytest.mark.parametrize("meta, message", [
    ({"kws.front_end": "mfcc-v9"}, "unknown front end"),
    ({"kws.feature_size": "640"}, "kws.feature_size"),
    ({"kws.threshold": "high"}, "not a number"),
    ({"kws.threshold": "1.5"}, "outside"),
    ({"kws.schema": "7"}, "schema"),
    ({"kws.label": " "}, "no 'kws.label' .or an empty one."),
    ({"kws.cascade": "1"}, "kws.cascade '1' is not a count of members from 2 to 8"),
    ({"kws.cascade": "²"}, "kws.cascade '²' is not a count"),
    ({"kws.cascade": "two"}, "kws.cascade 'two' is not a count"),
    ({"kws.cascade": "2"}, "a cascade needs a second input, the float scalar 'stage1_floor'"),
])
def test_model_contract_is_checked(tmp_path, meta, message):
    path = save_model(tmp_path / "bad.onnx", meta=meta)
    with pytest.raises(ModelError, match=message):
        KwsModel(path)


def test_model_without_metadata_or_not_onnx(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        KwsModel(junk)
    with pytest.raises(ModelError, match="no such model file"):
        KwsModel(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx: empty file"):
        KwsModel(tmp_path / "empty.onnx")
    with pytest.raises(ModelError, match="/dev/null: not a regular file"):
        KwsModel("/dev/null")
    (tmp_path / "loop.onnx").symlink_to(tmp_path / "loop.onnx")
    with pytest.raises(ModelError, match="loop.onnx: cannot open .Too many levels of symbolic links"):
        KwsModel(tmp_path / "loop.onnx")
