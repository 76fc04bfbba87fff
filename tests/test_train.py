"""kws-train fit / export / eval on a tiny generated corpus, and the shared front end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kws_stream import KwsModel
from kws_stream.frontends import EmbeddingFrontEnd, EmbeddingRowsFrontEnd, MelFrontEnd, SeedFrontEnd, windows
from kws_stream.frontends import seed as frontend
from kws_stream.audio import read_file
from kws_train import data, export, synth

TRAIN_DIR = Path(__file__).resolve().parent.parent / "train"


def kws_train(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def exported(ckpt: Path, out: Path) -> KwsModel:
    """`kws-train export` of a checkpoint at threshold 0.5, onnxruntime agreeing with torch."""
    r = kws_train("export", "--ckpt", ckpt, "--out", out, "--threshold", "0.5")
    assert json.loads(r.stdout)["max_abs_diff"] <= 1e-4
    return KwsModel(out)


def replay_scores(files: list[Path], model: Path, tmp_path: Path) -> dict[str, float]:
    """Each file's score from `kws-stream --file` with this model (a real subprocess), by file stem."""
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", *map(str, files), "--model", str(model),
                        "--pub", "none", "--csv", str(tmp_path / "out.csv")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [row.split(",") for row in (tmp_path / "out.csv").read_text().splitlines()[1:]]
    return {row[0]: float(row[2]) for row in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "c"
    synth.generate(synth.SynthConfig(out=str(root), n=10, seed=21, split="val", holdout_engine="espeak",
                                     pos_fraction=0.5, max_seconds=8.0, fetch=False), progress=False)
    return root


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    kws_train("fit", "--data", corpus, "--val", corpus, "--arch", "cnn", "--out", out, "--epochs", "2",
              "--threads", "1", "--hard-negatives", "0.25")
    return out


def test_fit_writes_a_self_describing_checkpoint(run):
    import torch
    ckpt = torch.load(run / "ckpt.pt", weights_only=False)
    assert ckpt["model_args"]["arch"] == "cnn" and ckpt["config"]["epochs"] == 2
    history = json.loads((run / "metrics.json").read_text())
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert 0.0 <= history[-1]["val"]["score"] <= 1.0
    assert "mined" not in history[0] and history[1]["mined"]["windows"] > 0  # hard negatives from epoch 2


def test_mined_negative_windows_never_hear_the_phrase(corpus):
    for fe in (SeedFrontEnd, EmbeddingFrontEnd, MelFrontEnd):
        c = data.load_corpus(corpus, front_end=fe)
        pool = data.negative_pool(c)
        assert len(pool) > 0
        for i, s in pool.tolist():
            phrase = data.phrase_frames(c, i)
            if phrase is not None:
                assert s + fe.window_frames + fe.reach <= phrase[0] or s >= phrase[1]


def test_mining_runs_the_mel_student_once_per_file_and_scores_each_window_as_alone(corpus):
    """pool_logits runs a mel-student's network once over each file and slices every
    window's outputs; the logits equal the model on each window alone."""
    import torch
    from kws_train.fit import pool_logits
    from kws_train.nets import ModelConfig, build

    c = data.load_corpus(corpus, front_end=MelFrontEnd)
    pool = data.negative_pool(c)
    assert len(pool) > 10 and (pool[:, 1] % 8 == 0).all() and 48 in pool[:, 1]  # the embeddings' grid
    pool = pool[np.random.default_rng(0).permutation(len(pool))]  # any order
    torch.manual_seed(0)
    model = build(ModelConfig(arch="mel-student")).eval()
    for m in model.modules():  # running statistics away from the identity, as after training
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    runs = []
    model.student.register_forward_hook(lambda module, args, out: runs.append(args[0].shape[0]))
    got = pool_logits(model, c, pool)
    assert runs == [1] * len(np.unique(pool[:, 0]))  # one run of the student per file
    with torch.no_grad():
        want = model(torch.from_numpy(np.stack([data.window_of(c, i, s) for i, s in pool]))).numpy()
    assert np.isfinite(want).all() and want.std() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for bad in (4, (c.mels[0].shape[1] - 244) // 8 * 8 + 8):  # off the grid; running past the file's end
        with pytest.raises(ValueError, match="every 8 frames and end in the file"):
            model.file_logits(c.mels[0], np.array([bad]))


def test_a_verifiers_candidates_are_the_windows_its_first_stage_passes(corpus):
    import torch
    from kws_train.fit import candidates

    class FirstFeature(torch.nn.Module):  # a first stage whose logit is a window's first feature
        def forward(self, x):
            return x[:, 0]

    c = data.load_corpus(corpus)
    pool = data.negative_pool(c)
    logits = np.array([data.window_of(c, i, s)[0] for i, s in pool])
    low = 1 / (1 + np.exp(-np.median(logits)))  # about half the pool passes
    picked = candidates(FirstFeature(), c, pool, low, len(pool))
    passing = {tuple(w) for w, z in zip(pool.tolist(), logits) if z >= np.median(logits) - 1e-6}
    assert 0 < len(picked) and {tuple(w) for w in picked.tolist()} <= passing
    assert len(passing) - len(picked) <= 1  # float32 rounding at the boundary, at most
    top = candidates(FirstFeature(), c, pool, low, 3)  # capped: the three it scores highest
    assert np.array_equal(top, picked[:3])
    assert np.allclose(sorted(logits, reverse=True)[:3], [data.window_of(c, i, s)[0] for i, s in top])


def test_a_verifier_trains_on_its_candidates_every_epoch(run, corpus, tmp_path, monkeypatch):
    from dataclasses import replace
    from kws_train import fit
    kws_train("fit", "--data", corpus, "--arch", "cnn", "--out", tmp_path, "--epochs", "2", "--threads", "1",
              "--init", run / "ckpt.pt", "--candidate-low", "0.01")
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert all(h["mined"]["candidates"] > 0 and "windows" not in h["mined"] for h in history)
    # the same epoch with and without them: exactly that many more target-free windows in the loss
    zeros, loss = [], fit.window_loss
    monkeypatch.setattr(fit, "window_loss", lambda z, y, *w: zeros.append(int((y == 0).sum())) or loss(z, y, *w))
    cfg = fit.FitConfig(data=(str(corpus),), out=str(tmp_path), arch="cnn", epochs=1, threads=1,
                        init=str(run / "ckpt.pt"))
    c = data.load_corpus(corpus)
    fit.train_model(cfg, c)
    without, zeros[:] = sum(zeros), []
    _, history = fit.train_model(replace(cfg, candidate_low=0.01), c)
    assert sum(zeros) - without == history[0]["mined"]["candidates"] > 0
    for bad, why in ((["--candidate-low", "0.3"], "no --init was given"),
                     (["--init", run / "ckpt.pt", "--candidate-low", "1.5"], "between 0 and 1"),
                     (["--recipe", "seed", "--hard-negatives", "0.2"], "the seed recipe trains on whole files")):
        r = subprocess.run([sys.executable, "-m", "kws_train.cli", "fit", "--data", str(corpus), "--arch", "dnn",
                            "--out", str(tmp_path / "x"), "--epochs", "1", *map(str, bad)], capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("kws-train fit: ") and why in lines[0]


def test_seed_dnn_trains_with_the_seed_recipe(corpus, tmp_path):
    kws_train("fit", "--data", corpus, "--arch", "dnn", "--recipe", "seed", "--out", tmp_path, "--epochs", "1",
              "--threads", "1")
    model, _ = export.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert sum(p.numel() for p in model.parameters()) == 7200 * 2 + 7200 * 512 + 512 + 512 * 256 + 256 + 257


def test_export_gives_a_model_the_daemon_loads(run, corpus, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    r = kws_train("export", "--ckpt", run / "ckpt.pt", "--out", onnx_path, "--name", "tiny", "--version", "0.1",
                  "--threshold", "0.7")
    assert json.loads(r.stdout)["max_abs_diff"] <= 1e-4
    model = KwsModel(onnx_path)
    assert (model.info.name, model.info.version, model.info.threshold) == ("tiny", "0.1", 0.7)
    files = sorted((corpus / "audio").glob("*.opus"))
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", *map(str, files), "--model",
                        str(onnx_path), "--pub", "none", "--csv", str(tmp_path / "out.csv")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "out.csv").read_text().splitlines()) == len(files) + 1


def test_a_gate_on_a_front_end_without_one_is_refused_before_anything_is_written(run, tmp_path):
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--ckpt", str(run / "ckpt.pt"), "--out",
                        str(out), "--threshold", "0.5", "--gate-margin", "12"], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines == ["kws-train export: --gate-margin: front end seed-logmel-v1 has no "
                                           "speech gate"]
    assert not out.exists()


def test_export_fails_loudly_when_runtimes_disagree(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(str(run / "ckpt.pt"), str(tmp_path / "m.onnx"), "x", "1", threshold=0.5)
    assert not (tmp_path / "m.onnx").exists()


def test_a_cascade_scores_in_full_every_window_that_can_reach_the_threshold(run, corpus, tmp_path):
    """An ensemble exported with --cascade gives the mean's scores without a threshold;
    with one, the mean wherever the first member leaves it within reach and the first
    member's probability elsewhere; and `kws-stream --file` detects exactly as the whole
    ensemble does, --no-cascade giving the whole ensemble's scores."""
    import torch
    from kws_stream.spotter import Spotter, SpotterConfig, score_together
    files = sorted((corpus / "audio").glob("*.opus"))
    out = np.empty(SeedFrontEnd.feature_size, dtype=np.float32)
    x = np.stack([out.copy() for f in files for _ in windows(SeedFrontEnd(hop_frames=25), read_file(f), out)])
    logit = np.log(np.median(exported(run / "ckpt.pt", tmp_path / "trained.onnx").score(x)))
    logit -= np.log1p(-np.exp(logit))
    ckpt = torch.load(run / "ckpt.pt", weights_only=False)
    state = ckpt["state_dict"]  # two epochs leave every probability near 0.45: spread them around 0.5
    state["head.weight"], state["head.bias"] = 300 * state["head.weight"], 300 * (state["head.bias"] - logit)
    torch.save(ckpt, tmp_path / "first.pt")
    torch.manual_seed(1)
    ckpt["state_dict"] = {k: v + 0.2 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.numel() > 1
                          else v for k, v in state.items()}  # a second member that disagrees
    torch.save(ckpt, tmp_path / "other.pt")
    torch.manual_seed(2)
    ckpt["state_dict"] = {k: v + 0.2 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.numel() > 1
                          else v for k, v in state.items()}
    torch.save(ckpt, tmp_path / "third.pt")
    members = [str(tmp_path / "first.pt"), str(tmp_path / "other.pt")]
    kws_train("export", "--ckpt", *members, "--out", tmp_path / "mean.onnx", "--threshold", "0.5")
    kws_train("export", "--ckpt", members[0], "--out", tmp_path / "first.onnx", "--threshold", "0.5")
    kws_train("export", "--ckpt", *members, "--out", tmp_path / "c.onnx", "--threshold", "0.5", "--cascade")
    mean, first, cascade = (KwsModel(tmp_path / f) for f in ("mean.onnx", "first.onnx", "c.onnx"))
    assert (mean.info.cascade, cascade.info.cascade) == (0, 2)
    want, p0 = mean.score(x), first.score(x)
    assert np.abs(cascade.score(x) - want).max() <= 1e-5
    t = float((np.quantile(p0, 0.5) + 1) / 2)  # half the windows' first probabilities rule them out
    floor = cascade.cascade_floor(t)
    assert floor == 2 * t - 1 - 1e-4
    full, clear = p0 >= floor, np.abs(p0 - floor) > 1e-5  # (a row at the floor may round either way)
    assert 0 < full.sum() < len(x), "the threshold must split the windows for this test to mean anything"
    got = cascade.score(x, t)
    assert np.abs(got - np.where(full, want, p0))[clear].max() <= 1e-5
    assert np.array_equal(got >= t, want >= t) and (want >= t).any()
    for edge in (0.0, 1.0):  # everything in full; nothing can reach 1 but what the mean gives 1
        assert np.array_equal(cascade.score(x, edge) >= edge, want >= edge)
    assert np.abs(cascade.score(x, 0.0) - want).max() <= 1e-5
    # many streams in one call cascade at the lowest of their thresholds, or not at all
    high = min(1.0, t + 0.2)
    between = (p0 >= floor) & (p0 < cascade.cascade_floor(high))
    waiting, scored = [], []
    for configs in ((SpotterConfig(threshold=high), SpotterConfig(threshold=t)),
                    (SpotterConfig(threshold=t), SpotterConfig(threshold=t, cascade=False))):
        spotters = [Spotter(cascade, f"s{i}", c, on_window=lambda a, b, p: scored.append(p))
                    for i, c in enumerate(configs)]
        for s in spotters:
            s.queue(read_file(files[0]))
            s.queue(None)
        waiting.append(np.stack([w for s in spotters for _, w in s._waiting if w is not None]))
        score_together(spotters)
    n = len(waiting[0])
    assert between[:n // 2].any(), "some window must pass at the lower threshold only"
    np.testing.assert_allclose(scored[:n], cascade.score(waiting[0], t), atol=1e-7)
    np.testing.assert_allclose(scored[n:], cascade.score(waiting[1]), atol=1e-7)
    # three members: the first alone must leave 3t - 2 within reach
    kws_train("export", "--ckpt", *members, tmp_path / "third.pt", "--out", tmp_path / "c3.onnx", "--threshold",
              "0.5", "--cascade")
    kws_train("export", "--ckpt", *members, tmp_path / "third.pt", "--out", tmp_path / "m3.onnx", "--threshold",
              "0.5")
    three, want3 = KwsModel(tmp_path / "c3.onnx"), KwsModel(tmp_path / "m3.onnx").score(x)
    t3 = float((np.quantile(p0, 0.5) + 2) / 3)
    assert three.info.cascade == 3 and three.cascade_floor(t3) == 3 * t3 - 2 - 1e-4
    got3 = three.score(x, t3)
    full3, clear3 = p0 >= three.cascade_floor(t3), np.abs(p0 - three.cascade_floor(t3)) > 1e-5
    assert 0 < full3.sum() < len(x)
    assert np.abs(got3 - np.where(full3, want3, p0))[clear3].max() <= 1e-5
    assert np.array_equal(got3 >= t3, want3 >= t3)

    def replay_csv(*flags: str) -> list[list[str]]:
        csv = tmp_path / "out.csv"
        r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", *map(str, files), "--model",
                            str(tmp_path / "c.onnx"), "--threshold", str(t), "--pub", "none", "--csv", str(csv),
                            *flags], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return [row.split(",") for row in csv.read_text().splitlines()[1:]]

    on, off = replay_csv(), replay_csv("--no-cascade")
    assert [r[:2] for r in on] == [r[:2] for r in off] and any(r[1] == "1" for r in on)
    for a, b in zip(on, off):  # a file at or above the threshold keeps its whole-ensemble score
        assert float(a[2]) < t if a[1] == "0" else abs(float(a[2]) - float(b[2])) <= 1e-6
    kws_train("export", "--from-model", tmp_path / "c.onnx", "--version", "2", "--out", tmp_path / "v2.onnx")
    assert KwsModel(tmp_path / "v2.onnx").info.cascade == 2  # a new version keeps the cascade
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", "export", "--ckpt", members[0], "--out",
                        str(tmp_path / "one.onnx"), "--threshold", "0.5", "--cascade"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "kws-train export: --cascade needs 2 to 8 checkpoints that read one front end"]
    assert not (tmp_path / "one.onnx").exists()


def test_eval_reports_through_the_streaming_path(run, corpus, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    kws_train("export", "--ckpt", run / "ckpt.pt", "--out", onnx_path, "--threshold", "0.5")
    kws_train("eval", "--model", onnx_path, "--data", corpus, "--out", tmp_path / "eval", "--jobs", "1")
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["files"] == 10 and 0.0 <= result["auc"] <= 1.0
    for key in ("at_model_threshold", "best_on_seed_grid", "at_0.5_fa_per_hour", "at_0.1_fa_per_hour"):
        assert {"score", "far", "frr", "threshold"} <= set(result[key])
    assert (tmp_path / "eval" / "det.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "scores.png").stat().st_size > 1000


def test_training_features_are_the_runtime_front_end(corpus):
    assert data.SeedFrontEnd is frontend.SeedFrontEnd  # training's features come from the runtime's front end
    for name in ("data", "fit", "nets", "export", "evaluate"):
        source = (TRAIN_DIR / f"{name}.py").read_text()
        for token in ("np.fft", "hann_window", "hanning", "mel_filterbank", "1127"):
            assert token not in source, f"{name}.py has front-end code of its own ({token})"
    c = data.load_corpus(corpus)
    path = c.files[0]
    fe = frontend.SeedFrontEnd()
    out = np.empty(frontend.FEATURE_SIZE, dtype=np.float32)
    x = read_file(path)
    streamed = [(start, out.copy()) for start in windows(fe, x, out)]
    for start, feats in streamed:
        ours = data.window_of(c, 0, start)
        np.testing.assert_allclose(ours, feats, atol=1e-4)


def test_embedding_head_fits_exports_and_scores(corpus, tmp_path):
    """arch emb: features from kws_stream.embedding, exported with that front end in its
    metadata, and the daemon picks the front end from the model file alone."""
    from kws_stream.frontends.embedding import FEATURE_SIZE
    kws_train("fit", "--data", corpus, "--val", corpus, "--arch", "emb", "--out", tmp_path / "run", "--epochs", "1",
              "--threads", "1")
    c = data.load_corpus(corpus, front_end=EmbeddingFrontEnd)
    assert c.mels[0].shape[0] == 96
    onnx_path = tmp_path / "emb.onnx"
    model = exported(tmp_path / "run" / "ckpt.pt", onnx_path)
    assert model.front_end_class is EmbeddingFrontEnd and model.feature_size == FEATURE_SIZE
    files = sorted((corpus / "audio").glob("*.opus"))
    scores = replay_scores(files, onnx_path, tmp_path)
    assert sorted(scores) == [f.stem for f in files] and all(0.0 <= p <= 1.0 for p in scores.values())


def test_tuned_tail_starts_as_the_front_end_and_fits_exports_and_scores(corpus, tmp_path):
    """emb-tune: the embedding network's last convolutions as torch layers give the front
    end's embeddings from part 3a's rows; warm-started from an emb-deep head it scores as
    that head does; trained, it exports with the rows front end, which the daemon picks
    from the model file alone."""
    import torch
    from kws_train.fit import warm_start
    from kws_train.nets import EmbeddingTail, ModelConfig, build
    rows, embs = (data.load_corpus(corpus, front_end=fe) for fe in (EmbeddingRowsFrontEnd, EmbeddingFrontEnd))
    x = torch.from_numpy(np.stack([data.window_of(rows, i, 2 * s) for i in range(3) for s in (0, 5)]))
    e = np.stack([data.window_of(embs, i, s) for i in range(3) for s in (0, 5)])
    with torch.no_grad():
        got = EmbeddingTail()(x).numpy()
    np.testing.assert_allclose(got.reshape(len(e), -1), e, atol=1e-4)

    kws_train("fit", "--data", corpus, "--arch", "emb-deep", "--out", tmp_path / "deep", "--epochs", "1",
              "--threads", "1")
    head, tuned = build(ModelConfig(arch="emb-deep")), build(ModelConfig(arch="emb-tune"))
    head.load_state_dict(torch.load(tmp_path / "deep" / "ckpt.pt", weights_only=False)["state_dict"])
    warm_start(tuned, str(tmp_path / "deep" / "ckpt.pt"))
    head.eval(), tuned.eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), head(torch.from_numpy(e)), atol=1e-3, rtol=0)

    kws_train("fit", "--data", corpus, "--arch", "emb-tune", "--init", tmp_path / "deep" / "ckpt.pt", "--out",
              tmp_path / "tune", "--epochs", "2", "--threads", "1", "--hard-negatives", "0.25", "--lr", "3e-4")
    history = json.loads((tmp_path / "tune" / "metrics.json").read_text())
    assert history[1]["mined"]["windows"] > 0 and all(np.isfinite(h["loss"]) for h in history)
    onnx_path = tmp_path / "tune.onnx"
    model = exported(tmp_path / "tune" / "ckpt.pt", onnx_path)
    assert model.front_end_class is EmbeddingRowsFrontEnd and model.feature_size == 52 * 192
    files = sorted((corpus / "audio").glob("*.opus"))[:4]
    scores = replay_scores(files, onnx_path, tmp_path)
    assert sorted(scores) == [f.stem for f in files] and all(0.0 <= p <= 1.0 for p in scores.values())

    # with a head on embeddings, the ensemble reads rows and gives that head the packaged tail's embeddings
    mixed = tmp_path / "mixed.onnx"
    r = kws_train("export", "--ckpt", tmp_path / "tune" / "ckpt.pt", tmp_path / "deep" / "ckpt.pt", "--out", mixed,
                  "--threshold", "0.5")
    assert json.loads(r.stdout)["max_abs_diff"] <= 1e-4
    kws_train("export", "--ckpt", tmp_path / "deep" / "ckpt.pt", "--out", tmp_path / "deep.onnx", "--threshold", "0.5")
    tuned_p, head_p, both = (KwsModel(m) for m in (onnx_path, tmp_path / "deep.onnx", mixed))
    assert both.front_end_class is EmbeddingRowsFrontEnd
    np.testing.assert_allclose(both.score(x.numpy()), (tuned_p.score(x.numpy()) + head_p.score(e)) / 2, atol=1e-4)


def test_folds_refuse_archs_that_read_different_front_ends(tmp_path):
    from kws_train.fit import FitConfig
    from kws_train.folds import run_folds
    with pytest.raises(ValueError, match="emb-tune read another front end than emb-deep"):
        run_folds([str(tmp_path)], str(tmp_path), str(tmp_path / "out"), FitConfig(data=(), out="-", arch="emb-deep"),
                  [0], archs=("emb-tune",))
    assert not (tmp_path / "out").exists()


def test_negative_weight_ramps_and_weight_one_is_the_plain_loss():
    import torch
    from kws_train.fit import FitConfig, negative_weight, window_loss
    cfg = FitConfig(data=(), out="-", epochs=5, negative_weight=9.0)
    assert [negative_weight(cfg, e) for e in range(1, 6)] == [1.0, 3.0, 5.0, 7.0, 9.0]
    logits, y = torch.randn(64), (torch.rand(64) < 0.3).float()
    pos = torch.tensor([3.0])
    assert torch.equal(window_loss(logits, y, pos, 1.0), torch.nn.BCEWithLogitsLoss(pos_weight=pos)(logits, y))
    each = torch.nn.BCEWithLogitsLoss(pos_weight=pos, reduction="none")(logits, y)
    torch.testing.assert_close(window_loss(logits, y, pos, 4.0), (each * (1 + 3 * (1 - y))).mean())


def test_skip_easy_averages_only_the_windows_still_wrong():
    import torch
    from kws_train.fit import FitConfig, window_loss
    logits = torch.tensor([-9.0, -1.0, 0.5, 9.0, 2.0, -3.0])  # p: 0.0001 0.27 0.62 0.9999 0.88 0.047
    y = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    pos = torch.tensor([2.0])
    each = torch.nn.BCEWithLogitsLoss(pos_weight=pos, reduction="none")(logits, y) * torch.tensor([5, 5, 5, 1, 1, 1])
    torch.testing.assert_close(window_loss(logits, y, pos, 5.0, skip_easy=0.001), each[[1, 2, 4, 5]].mean())
    assert window_loss(logits[[0, 3]], y[[0, 3]], pos, 5.0, skip_easy=0.001).item() == 0.0  # nothing left to learn
    with pytest.raises(ValueError, match="--skip-easy 0.5"):
        FitConfig(data=(), out="-", skip_easy=0.5)


def test_attention_head_with_a_negative_weight_ramp_fits_and_exports(corpus, tmp_path):
    """emb-attn trains with target-free windows weighted 1 in the first epoch and 5 in the
    last, and exports to a graph onnxruntime agrees with."""
    kws_train("fit", "--data", corpus, "--arch", "emb-attn", "--out", tmp_path / "run", "--epochs", "2",
              "--threads", "1", "--negative-weight", "5", "--min-cover", "1.0")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "negative_weight" not in history[0] and history[1]["negative_weight"] == 5.0
    onnx_path = tmp_path / "attn.onnx"
    r = kws_train("export", "--ckpt", tmp_path / "run" / "ckpt.pt", "--out", onnx_path, "--threshold", "0.5")
    assert json.loads(r.stdout)["max_abs_diff"] <= 1e-4
    c = data.load_corpus(corpus, front_end=EmbeddingFrontEnd)
    x = np.stack([data.window_of(c, i, 0) for i in range(len(c.files))])
    p = KwsModel(onnx_path).score(x)
    assert p.shape == (len(c.files),) and np.all((p >= 0) & (p <= 1))


def test_a_corpus_is_its_manifest_when_a_stopped_run_left_more_audio(tmp_path):
    """A synth run stopped past --n leaves finished calls the manifest does not list; they
    are left out, so every file has its metadata (kws-train folds looks each one up)."""
    (tmp_path / "audio").mkdir()
    for uid in ("all1-000000", "all1-000001", "all1-000002"):
        (tmp_path / "audio" / f"{uid}.opus").write_bytes(b"")
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps({"uid": u}) + "\n" for u in ("all1-000000", "all1-000001")))
    files, _ = data.corpus_files(tmp_path)
    assert [f.stem for f in files] == ["all1-000000", "all1-000001"]


@pytest.mark.parametrize("phrase, target, around", [
    ("Я вообще не слышу вас совсем!", "не слышу", "before and after"),
    ("Не слышно.", "не слышно", "none"),
    ("Алло, не  слышу", "не слышу", "before only"),
    ("не слышно ничего", "не слышно", "after only"),
    ("Вы меня слышите?", "other", "other"),
])
def test_folds_table_groups_positives_by_the_words_around_the_target(phrase, target, around):
    from kws_train.folds_table import target_word, words_around
    assert (target_word({"phrase": phrase}), words_around({"phrase": phrase})) == (target, around)


def test_verifier_pairs_each_daemon_window_with_its_better_half_hop_neighbour():
    from kws_stream.frontends import SAMPLE_RATE
    from kws_train.verifier import neighbours, verified
    rng = np.random.default_rng(5)
    for n in range(1, 8):  # one window, and odd and even counts
        starts, probs = np.arange(n) * (SAMPLE_RATE // 2), rng.random(n)
        s, e, best = neighbours(starts, probs)
        assert np.array_equal(s, starts[0::2]) and np.array_equal(e, probs[0::2])
        expect = [max(probs[i - 1] if i > 0 else 0.0, probs[i + 1] if i + 1 < n else 0.0) for i in range(0, n, 2)]
        assert np.array_equal(best, expect)
        (gs, gp), = verified([(starts, probs)], None, "half-hop grid", 0.5)
        assert gs is starts and gp is probs
    stream = (np.arange(5) * (SAMPLE_RATE // 2), np.array([0.1, 0.9, 0.5, 0.3, 0.6]))
    (_, mean), = verified([stream], None, "mean with its better neighbour", 0.5)
    (_, least), = verified([stream], None, "min with its better neighbour", 0.5)
    assert np.allclose(mean, [0.0, 0.7, 0.45]) and np.allclose(least, [0.0, 0.5, 0.3])  # 0.1 < low: dropped
    second = [(stream[0], np.array([0.9, 0.2, 0.1, 0.8, 0.4]))]  # a second model on the same grid
    (_, alone), = verified([stream], second, "the second model alone", 0.5)
    (_, both), = verified([stream], second, "mean with the second model", 0.5)
    assert np.allclose(alone, [0.0, 0.1, 0.4]) and np.allclose(both, [0.0, 0.3, 0.5])  # gated by the first


def test_verifier_sees_the_daemons_windows(run, corpus):
    """Of the windows scored every half hop, the even ones are the daemon's (hop 1 s), with
    the same probabilities."""
    from kws_train.export import load_checkpoint
    from kws_train.fit import window_scores
    from kws_train.verifier import verified
    model, _ = load_checkpoint(str(run / "ckpt.pt"))
    c = data.load_corpus(corpus)
    half, whole = window_scores(model, c, 0.5), window_scores(model, c, 1.0)
    for (s1, p1), (sv, pv) in zip(whole, verified(half, None, "window", 0.0)):
        assert np.array_equal(sv, s1) and np.allclose(pv, p1, atol=1e-6)


def test_gate_margin_reports_what_each_margin_keeps(corpus, capsys):
    from kws_train import gate_margin
    assert gate_margin.main(["--data", str(corpus)]) == 0
    report = json.loads(capsys.readouterr().out)[str(corpus)]
    assert report["calls"] >= 1
    kept = [report["kept"][f"{m:g}"] for m in gate_margin.MARGINS]
    assert kept == sorted(kept, reverse=True) and kept[0] == 1.0  # 3 dB keeps every phrase window here
    worst = report["worst"][0]
    assert worst["headroom_db"] == min(r["headroom_db"] for r in report["worst"]) >= 3.0
    lost = round((1.0 - kept[gate_margin.MARGINS.index(worst["headroom_db"] + 3.0)]) * report["calls"])
    assert lost >= 1  # one step above the worst call's headroom, that call's window is gated


def test_a_distilled_mel_student_gives_the_teachers_embeddings_and_fits_exports_and_scores(corpus, tmp_path):
    """kws_train.distil trains the mel-student network towards the embedding front end's
    embeddings from the mel front end's frames (closer than the untrained network); fit
    starts from its checkpoint, the export reads the mel front end, and the daemon's
    streamed scores are the batch scores."""
    import torch
    from kws_stream.frontends import MelFrontEnd
    from kws_train.export import load_checkpoint
    from kws_train.fit import window_scores
    from kws_train.nets import MelStudent, ModelConfig
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "kws_train.distil", "--data", str(corpus), "--cache", str(cache),
                        "--folds", "all", "--steps", "150", "--batch", "8", "--threads", "1", "--out",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from kws_train.distil import SEGMENT, Stretches
    stretches = Stretches([str(corpus)], str(cache), 1)
    for fold in (None, 0, 1):  # a fold's student never hears its voices
        pool = stretches.pool(fold)
        assert pool.size and all(stretches.folds[i] != fold or fold is None for i in pool)
        assert all(stretches.embs[i].shape[1] >= SEGMENT for i in pool)
    mel, emb = stretches.batch(np.random.default_rng(0), stretches.pool(None), None, 3)
    assert mel.shape == (3, 8 * (SEGMENT - 1) + 76, 32) and emb.shape == (3, SEGMENT, 96)
    distilled, ckpt = load_checkpoint(str(tmp_path / "d" / "all" / "ckpt.pt"))
    assert ckpt["model_args"]["arch"] == "mel-student" and ckpt["config"]["fold"] is None
    mels, embs = (data.load_corpus(corpus, cache, front_end=fe) for fe in (MelFrontEnd, EmbeddingFrontEnd))
    fresh = MelStudent(ModelConfig().student_channels).eval()
    with torch.no_grad():
        fresh.body[-1].pw.bias.copy_(torch.from_numpy(np.concatenate(embs.mels, axis=1).mean(axis=1)))
        errors = [np.mean([((s(torch.from_numpy(m.T[None]))[0].numpy() - e.T) ** 2).mean()
                           for m, e in zip(mels.mels, embs.mels)]) for s in (distilled.student, fresh)]
    assert errors[0] < 0.8 * errors[1], errors

    kws_train("fit", "--data", corpus, "--arch", "mel-student", "--init", tmp_path / "d" / "all" / "ckpt.pt",
              "--out", tmp_path / "run", "--epochs", "2", "--threads", "1", "--hard-negatives", "0.25",
              "--cache", cache, "--band-warp", "0.15", "--time-warp", "0.3")
    onnx_path = tmp_path / "mel.onnx"
    model = exported(tmp_path / "run" / "ckpt.pt", onnx_path)
    assert model.front_end_class is MelFrontEnd and model.feature_size == 244 * 32
    files = sorted((corpus / "audio").glob("*.opus"))[:4]
    streamed = replay_scores(files, onnx_path, tmp_path)
    batch = window_scores(model, data.load_corpus(corpus, cache, front_end=MelFrontEnd))
    for f in files:
        i = mels.files.index(f)
        assert abs(streamed[f.stem] - batch[i][1].max()) <= 1e-4, f


def test_band_warp_moves_every_frames_spectrum_by_its_factor():
    """A band lit alone lands, in every frame, where its centre frequency times the factor
    falls; random factors span the range asked."""
    from kws_train.data import BandWarp
    hz = MelFrontEnd.band_hz()
    assert hz.shape == (32,) and np.all(np.diff(hz) > 0) and 100 < hz[0] < hz[-1] < 4000
    assert EmbeddingFrontEnd.band_hz() is None and SeedFrontEnd.band_hz() is None
    x = np.zeros(MelFrontEnd.feature_size, dtype=np.float32)
    x.reshape(MelFrontEnd.feature_shape)[:, 12] = 1.0
    warp = BandWarp(MelFrontEnd, 0.2)
    for factor in (0.84, 0.9, 1.0, 1.1, 1.19):
        y = x.copy()
        warp.apply(y, factor)
        bands = y.reshape(MelFrontEnd.feature_shape)
        assert np.array_equal(bands, np.broadcast_to(bands[0], bands.shape))  # along frequency only
        centre = float((bands[0] * hz).sum() / bands[0].sum())
        assert abs(centre / hz[12] - factor) < 0.01, (factor, centre)
    drawn = np.concatenate([warp.factors(np.random.default_rng(s), 50) for s in range(4)])
    assert 1 / 1.2 - 1e-9 <= drawn.min() < 0.86 and 1.17 < drawn.max() <= 1.2 + 1e-9


def test_time_warp_moves_durations_unevenly_and_keeps_the_windows_ends():
    """Every band is read at the same warped times: the first and last frames stay, time
    runs forward, and the local rate varies within (1 + W)^2 either way."""
    from kws_train.data import TimeWarp
    t = np.arange(MelFrontEnd.feature_shape[0], dtype=np.float32)
    x = np.ascontiguousarray(np.broadcast_to(t[:, None], MelFrontEnd.feature_shape)).reshape(-1)
    warp = TimeWarp(MelFrontEnd, 0.3)
    slopes = []
    for seed in range(10):
        y = x.copy()
        warp(y, np.random.default_rng(seed))
        frames = y.reshape(MelFrontEnd.feature_shape)
        assert np.array_equal(frames, np.broadcast_to(frames[:, :1], frames.shape))  # along time only
        read = frames[:, 0]
        assert read[0] == 0 and read[-1] == t[-1]
        slopes.append(np.diff(read))
    slopes = np.concatenate(slopes)
    assert slopes.min() >= 1 / 1.3 ** 2 - 1e-4 and slopes.max() <= 1.3 ** 2 + 1e-4
    assert slopes.min() < 0.9 and slopes.max() > 1.1
    with pytest.raises(ValueError, match="--time-warp: the front end seed-logmel-v1"):
        TimeWarp(SeedFrontEnd, 0.3)


BAD_WARPS = [  # (command, options, the one line it answers); folds trains neither the seed's recipe nor its front end
    *[(command, ["--arch", "mel-student", *warp], says) for command in ("fit", "folds") for warp, says in (
        (["--band-warp", "1.5"], "--band-warp 1.5: a relative warp between 0 and 1"),
        (["--time-warp", "-0.1"], "--time-warp -0.1: a relative warp between 0 and 1"))],
    *[(command, ["--arch", "emb-deep", "--band-warp", "0.1"], "--band-warp: the front end oww-embedding-v1 has no frames")
      for command in ("fit", "folds")],
    ("fit", ["--arch", "cnn", "--time-warp", "0.1"], "--time-warp: the front end seed-logmel-v1 has no frames"),
    ("fit", ["--recipe", "seed", "--arch", "dnn", "--band-warp", "0.1"], "no --hard-negatives, --candidate-low, --band-warp")]


@pytest.mark.parametrize("command, args, says", BAD_WARPS)
def test_a_warp_that_cannot_apply_is_refused_in_one_line_before_anything_loads(tmp_path, command, args, says):
    corpus = tmp_path / "nothing-here"  # never read: the options are refused first
    more = ["--negatives", str(corpus)] if command == "folds" else []
    r = subprocess.run([sys.executable, "-m", "kws_train.cli", command, "--data", str(corpus), *more, "--out",
                        str(tmp_path / "run"), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, says", [(["--folds", "9"], "--folds 9: a fold number"),
                                        (["--folds", "0", "--steps", "0"], "--steps 0"),
                                        (["--folds", "all", "--batch", "0"], "--batch 0")])
def test_distil_refuses_bad_options_in_one_line(corpus, tmp_path, args, says):
    r = subprocess.run([sys.executable, "-m", "kws_train.distil", "--data", str(corpus), "--cache",
                        str(tmp_path / "cache"), "--out", str(tmp_path / "d"), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()  # nothing computed


def test_distil_names_a_corpus_without_its_manifest(tmp_path):
    (tmp_path / "c" / "audio").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "kws_train.distil", "--data", str(tmp_path / "c"), "--cache",
                        str(tmp_path / "cache"), "--out", str(tmp_path / "d")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "manifest.jsonl" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
