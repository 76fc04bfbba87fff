"""The speech gate: its flags do not depend on chunking or gain, a gated front end skips
the windows that hear only a steady line and gives every other window exactly the
features of the ungated one, the Spotter counts skipped windows as score 0 and never fires
on them, and a model's metadata chooses the gate (kws-train export writes it)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from kws_stream import read_file
from kws_stream.frontends import embedding as emb
from kws_stream.frontends.gate import BLOCK, SpeechGate
from kws_stream.model import KwsModel, ModelError
from kws_stream.spotter import Spotter, SpotterConfig, score_together

from modelkit import save_model
from test_embedding import stream_windows

SR = emb.SAMPLE_RATE
MARGIN = 12.0


def call_with_pauses() -> np.ndarray:
    """The demo call between stretches of a quiet, steady line (-70 dBFS hiss): an idle
    line, the call, the line again."""
    rng = np.random.default_rng(5)
    line = lambda s: rng.normal(0, 3e-4, int(s * SR))  # noqa: E731
    return np.concatenate([line(7.0), read_file("models/demo_positive.opus"), line(9.0)])


def test_flags_do_not_depend_on_chunking_or_gain():
    mel = emb.shared_nets().mel(call_with_pauses())
    whole = SpeechGate(MARGIN).push(mel)
    assert whole[:BLOCK].all()  # no floor yet
    assert not whole[BLOCK * 3:600].any()  # the idle line
    assert whole[800:1800].mean() > 0.3  # the call
    rng = np.random.default_rng(0)
    for _ in range(5):
        gate, got, a = SpeechGate(MARGIN), [], 0
        while a < mel.shape[0]:
            n = int(rng.integers(0, 40))
            got.append(gate.push(mel[a:a + n]))
            a += n
        assert np.array_equal(np.concatenate(got), whole)
    # only level differences count (the negative demo call holds no digital silence, which
    # sits at the mel spectrum's 0 dB floor whatever the gain)
    call = np.concatenate([np.random.default_rng(1).normal(0, 3e-4, 5 * SR), read_file("models/demo_negative.opus")])
    loud, quiet = (SpeechGate(MARGIN).push(emb.shared_nets().mel(call * g)) for g in (1.0, 0.1))
    for flags in (loud, quiet):  # 20 dB apart, the same verdicts on the line and on the call
        assert not flags[BLOCK * 3:500].any() and flags[500:].mean() > 0.3
    assert (loud == quiet).mean() > 0.9  # frames differ where the quieter call's weakest bands floor


def test_a_bad_margin_is_refused():
    for margin, blocks in ((0.0, 30), (-3.0, 30), (9.0, 0)):
        with pytest.raises(ValueError, match="gate needs"):
            SpeechGate(margin, blocks)


@pytest.mark.parametrize("front_end", [emb.EmbeddingFrontEnd, emb.EmbeddingRowsFrontEnd, emb.MelFrontEnd])
@pytest.mark.parametrize("hop_frames, chunks", [(100, 160), (100, 16000), (8, 1000), (50, "random"), (250, 3000)])
def test_gated_windows_are_skipped_and_the_rest_are_exact(front_end, hop_frames, chunks):
    """At hops where windows overlap (the stream runs on after a skip) and where they do
    not (it starts afresh), in any chunking: a window is skipped exactly when the gate finds
    no active frame under it, and every other window has the ungated front end's features."""
    x = call_with_pauses()
    chunks = np.random.default_rng(3) if chunks == "random" else chunks
    plain = stream_windows(x, hop_frames, 3000, front_end)
    held: list[int] = []
    got = stream_windows(x, hop_frames, chunks, front_end, SpeechGate(MARGIN), held)
    assert [s for s, _ in got] == [s for s, _ in plain]  # the same windows, in order
    padded = np.concatenate([x, np.zeros(emb.WINDOW_SAMPLES + emb.EMB_HOP)])
    active = SpeechGate(MARGIN).push(emb.shared_nets().mel(padded))
    for (s, f), (_, want) in zip(got, plain):
        assert (f is None) == (not active[s:s + emb.WINDOW_MEL].any()), s
        if f is not None:
            assert np.array_equal(f, want), s  # the stream started afresh gives the same numbers
    skipped = [s / 100 for s, f in got if f is None]
    phrase = (7.0 + 10.0, 7.0 + 11.9)  # the demo call's phrase (its detected window is 10.0-12.46 s)
    assert skipped and skipped[0] > 0.0 and not any(s < phrase[1] and s + 2.44 > phrase[0] for s in skipped)
    assert max(held) <= emb.WINDOW_HOPS  # mel frames are not hoarded
    batch = front_end.gated_windows(x, SpeechGate(MARGIN), hop_frames)  # the gate's batch view agrees
    assert batch == [(s, f is None) for s, f in got]


def test_reset_mid_stream_starts_the_gate_afresh():
    x = call_with_pauses()
    fe = emb.EmbeddingFrontEnd(hop_frames=100, gate=SpeechGate(MARGIN))
    fe.accept(x[:5 * SR])
    while fe.ready():
        fe.take(np.empty(fe.feature_size, dtype=np.float32))
    fe.reset()
    again = stream_windows(x, 100, 3000, gate=SpeechGate(MARGIN))
    out = np.empty(fe.feature_size, dtype=np.float32)
    got = []
    for a in range(0, x.size, 3000):
        chunk, taken = x[a:a + 3000], 0
        while taken < chunk.size:
            taken += fe.accept(chunk[taken:])
            while fe.ready():
                got.append((fe.take(out), fe.skipped))
    fe.finish()
    while fe.ready():
        got.append((fe.take(out), fe.skipped))
    assert got == [(s, f is None) for s, f in again]


def embedding_model(tmp_path, gate: float = 0.0, name: str = "emb.onnx") -> str:
    rng = np.random.default_rng(1)
    meta = {"kws.gate_margin_db": repr(gate)} if gate else {}
    return save_model(tmp_path / name, rng.normal(0, 0.01, emb.FEATURE_SIZE).astype(np.float32),
                      front_end=emb.EmbeddingFrontEnd.name, threshold=0.0, meta=meta)


def test_the_spotter_counts_gated_windows_as_zero_and_never_fires_on_them(tmp_path):
    x = call_with_pauses()
    plain, gated = KwsModel(embedding_model(tmp_path)), KwsModel(embedding_model(tmp_path, MARGIN, "g.onnx"))
    assert gated.info.gate_margin_db == MARGIN and plain.info.gate_margin_db == 0.0
    runs = {}
    every = dict(refractory_seconds=0.0)  # threshold 0 and no refractory period: every scored window fires
    for label, model, config in (("plain", plain, SpotterConfig(**every)), ("gated", gated, SpotterConfig(**every)),
                                 ("off", gated, SpotterConfig(gate_margin_db=0.0, **every)),
                                 ("on", plain, SpotterConfig(gate_margin_db=MARGIN, **every))):
        seen = []
        sp = Spotter(model, config=config, on_window=lambda a, b, p, seen=seen: seen.append((a, p)))
        found = [d for a in range(0, x.size, 3200) for d in sp.feed(x[a:a + 3200])] + sp.finish()
        runs[label] = (sp, seen, found)
    sp, seen, found = runs["gated"]
    plain_sp, plain_seen, plain_found = runs["plain"]
    assert sp.windows == plain_sp.windows and 6 <= sp.gated <= 14 and plain_sp.gated == 0
    zero = [a for a, p in seen if p == 0.0]
    assert len(zero) == sp.gated
    assert len(found) + sp.gated == len(plain_found) == plain_sp.windows  # no gated window fires
    assert {d.start for d in found}.isdisjoint(zero)
    for (a, p), (_, q) in zip(seen, plain_seen):
        assert p == 0.0 or p == q
    assert runs["off"][0].gated == 0 and runs["on"][0].gated == sp.gated  # the config overrides the model


def test_a_reload_may_retune_the_gate_but_not_switch_it(tmp_path):
    x = call_with_pauses()
    loose, tight = (KwsModel(embedding_model(tmp_path, m, f"g{m}.onnx")) for m in (6.0, MARGIN))
    plain = KwsModel(embedding_model(tmp_path))
    sp = Spotter(loose)
    sp.feed(x[:8 * SR])
    sp.replace_model(tight)
    assert sp.front_end.gate.margin_db == MARGIN and sp.model is tight
    with pytest.raises(ValueError, match="the speech gate would be turned off; restart to switch"):
        sp.replace_model(plain)
    assert sp.model is tight  # refused before anything changed
    with pytest.raises(ValueError, match="turned on"):
        Spotter(plain).replace_model(tight)
    both = Spotter(plain, config=SpotterConfig(gate_margin_db=MARGIN))
    both.replace_model(loose)  # the configured margin holds for every model
    assert both.front_end.gate.margin_db == MARGIN
    with pytest.raises(ValueError, match="deliver got 3 probabilities for 0 scored windows"):
        both.deliver(np.zeros(3))


def test_streams_scored_together_keep_their_gated_windows_in_order(tmp_path):
    model = KwsModel(embedding_model(tmp_path, MARGIN))
    x = call_with_pauses()
    alone = Spotter(model)
    alone_windows = []
    alone.on_window = lambda a, b, p: alone_windows.append((a, p))
    list(alone.run([x]))
    spotters = [Spotter(model, stream=f"s{i}") for i in range(2)]
    seen = [[], []]
    for i, sp in enumerate(spotters):
        sp.on_window = lambda a, b, p, i=i: seen[i].append((a, p))
    for a in range(0, x.size, 8000):
        for sp in spotters:
            sp.queue(x[a:a + 8000])
        score_together(spotters)
    for sp in spotters:
        sp.queue(None)
    score_together(spotters)
    for i in range(2):
        assert [a for a, _ in seen[i]] == [a for a, _ in alone_windows]
        np.testing.assert_allclose([p for _, p in seen[i]], [p for _, p in alone_windows], rtol=0, atol=1e-6)
    assert spotters[0].gated == alone.gated > 0


def test_a_bad_gate_in_the_metadata_is_a_model_error(tmp_path):
    for value, match in (("loud", "not a number"), ("-1", r"not a margin in \[0, 60\]"), ("75", "not a margin")):
        path = embedding_model(tmp_path, 1.0, f"bad{value}.onnx")
        import onnx
        proto = onnx.load(path)
        for p in proto.metadata_props:
            if p.key == "kws.gate_margin_db":
                p.value = value
        onnx.save(proto, path)
        with pytest.raises(ModelError, match=match):
            KwsModel(path)
    seed = save_model(tmp_path / "seed.onnx", meta={"kws.gate_margin_db": "9.0"})
    with pytest.raises(ModelError, match="front end seed-logmel-v1 can apply"):
        KwsModel(seed)


def test_export_from_a_model_sets_the_gate_and_keeps_the_graph(tmp_path):
    src = embedding_model(tmp_path)
    out = tmp_path / "gated.onnx"
    run = subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--from-model", src, "--out", str(out),
                          "--version", "9.9.9", "--gate-margin", "12"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["gate_margin_db"] == 12.0
    a, b = KwsModel(src), KwsModel(out)
    assert (b.info.version, b.info.gate_margin_db, b.info.threshold) == ("9.9.9", 12.0, a.info.threshold)
    x = np.random.default_rng(2).normal(0, 1, (4, emb.FEATURE_SIZE)).astype(np.float32)
    assert np.array_equal(a.score(x), b.score(x))
    kept = tmp_path / "kept.onnx"  # without --gate-margin and --version: the model's own
    assert subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--from-model", str(out), "--out",
                           str(kept)], capture_output=True, text=True).returncode == 0
    assert (KwsModel(kept).info.version, KwsModel(kept).info.gate_margin_db) == ("9.9.9", 12.0)
    for extra, message in ((["--threshold", "0.5"], "keeps the model's name and threshold"),
                           (["--name", "other"], "leave out --name"),
                           (["--gate-margin", "70"], "not a margin in [0, 60] dB")):
        bad = subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--from-model", src, "--out",
                              str(tmp_path / "x.onnx"), *extra], capture_output=True, text=True)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_the_cli_reports_gated_windows_at_the_end_of_a_file(tmp_path):
    import soundfile as sf
    wav = tmp_path / "call.wav"
    sf.write(wav, call_with_pauses(), SR, subtype="PCM_16")
    model = embedding_model(tmp_path, MARGIN)
    ends = {}
    for label, extra in (("model's", []), ("off", ["--gate-margin", "0"])):
        run = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", str(wav), "--model", model,
                              "--events", "all", "--pub", "none", *extra],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        events = [json.loads(line) for line in run.stdout.splitlines()]
        ends[label] = next(e for e in events if e.get("state") == "stream-end")
        ends[label]["started"] = next(e for e in events if e.get("state") == "started")
    assert 6 <= ends["model's"]["gated"] <= 14 and ends["off"]["gated"] == 0
    assert ends["model's"]["started"]["gate_margin_db"] == MARGIN and ends["off"]["started"]["gate_margin_db"] == 0
    assert ends["model's"]["windows"] == ends["off"]["windows"]
