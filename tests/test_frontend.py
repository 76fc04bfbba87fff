"""The front end equals SEED.md's formulas, and streaming equals batch for any chunking."""
import math

import numpy as np
import pytest

from kws_stream.frontends import REGISTRY
from kws_stream.frontends import seed as frontend
from seed_reference import seed_features, seed_log_mel, seed_mel_filterbank, seed_window_mel

RATE = frontend.SAMPLE_RATE


def signal(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 0.02, t.size)


def test_constants_follow_seed():
    assert (frontend.FRAME_LENGTH, frontend.HOP_LENGTH, frontend.N_FFT) == (400, 160, 512)
    assert (frontend.WINDOW_FRAMES, frontend.FEATURE_SIZE) == (250, 7200)


def test_filterbank_matches_plain_formulas():
    np.testing.assert_allclose(frontend.mel_filterbank(), seed_mel_filterbank(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n", [16000 * 3 + 77, 400, 401, 560, 300, 40240])
def test_batch_log_mel_matches_plain_formulas(n):
    x = signal(n / RATE + 0.01, seed=n)[:n]
    ours = frontend.log_mel(x)
    assert ours.shape == (48, max(1, math.ceil((n - 400) / 160) + 1))
    np.testing.assert_allclose(ours, seed_log_mel(x), rtol=1e-6)


def test_window_features_match_plain_formulas():
    mel = seed_log_mel(signal(4.0))
    for start in (0, 100, 200, 399):
        ref = seed_features(seed_window_mel(mel, start, 250))
        ours = frontend.window_features(frontend.window_at(mel, start))
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def stream_features(x, chunk, hop_frames=100):
    fe = frontend.SeedFrontEnd(hop_frames=hop_frames)
    out = np.empty(frontend.FEATURE_SIZE, dtype=np.float32)
    got = []

    def drain():
        while fe.ready():
            start = fe.take(out)
            got.append((start, out.copy()))

    for i in range(0, x.size, chunk):
        piece = x[i:i + chunk]
        pos = 0
        while pos < piece.size:
            pos += fe.accept(piece[pos:])
            drain()
    fe.finish()
    drain()
    return got


def batch_features(x, hop_frames=100):
    mel = frontend.log_mel(x)
    return [(s, frontend.window_features(frontend.window_at(mel, s))) for s in range(0, mel.shape[1], hop_frames)]


@pytest.mark.parametrize("seconds", [0.01, 1.0, 2.5, 2.515, 7.3, 12.0])
@pytest.mark.parametrize("chunk", [160, 1000, 4096, None])
def test_streaming_equals_batch_for_any_chunk(seconds, chunk):
    x = signal(seconds, seed=int(seconds * 100))
    got = stream_features(x, chunk or x.size)
    want = batch_features(x)
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hop_frames", [1, 7, 50, 250])
def test_streaming_hops(hop_frames):
    x = signal(3.7, seed=hop_frames)
    got = stream_features(x, 160, hop_frames)
    want = batch_features(x, hop_frames)
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_window_is_ready_the_moment_its_last_sample_arrives():
    fe = frontend.SeedFrontEnd()
    need = frontend.SeedFrontEnd.window_samples
    x = signal(3.0)
    assert fe.accept(x[:need - 1]) == need - 1
    assert not fe.ready()
    assert fe.accept(x[need - 1:]) == 1  # stops at the due window
    assert fe.ready()


def test_reset_starts_a_new_stream():
    x = signal(5.0)
    fe = frontend.SeedFrontEnd()
    fe.accept(x[:30000])
    fe.reset()
    out = np.empty(frontend.FEATURE_SIZE, dtype=np.float32)
    pos = fe.accept(x)
    assert fe.ready() and fe.take(out) == 0
    np.testing.assert_allclose(out, batch_features(x)[0][1], rtol=1e-6, atol=1e-6)
    assert pos == frontend.SeedFrontEnd.window_samples


def test_hot_path_does_not_allocate_numpy_arrays():
    import tracemalloc
    fe = frontend.SeedFrontEnd()
    out = np.empty(frontend.FEATURE_SIZE, dtype=np.float32)
    hop = signal(0.01)[:frontend.HOP_LENGTH]
    for _ in range(600):  # warm up past the first windows
        fe.accept(hop)
        while fe.ready():
            fe.take(out)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        fe.accept(hop)
        while fe.ready():
            fe.take(out)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096, f"{grown} bytes allocated over 1000 hops"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_store_keeps_only_hops_that_complete_no_window(name):
    """store() is accept()'s fast path: it takes a hop only while the pending window still
    lacks samples, refuses the hop that completes it, and after finish() takes nothing."""
    fe = REGISTRY[name](hop_frames=100)
    x = signal(6.0, seed=3).astype(np.float32)
    out = np.empty(fe.feature_size, dtype=np.float32)
    stored, windows_at = 0, []
    for pos in range(0, x.size - 159, 160):
        hop = x[pos:pos + 160]
        if fe.store(hop):
            stored += 1
            assert not fe.ready()
            continue
        taken = 0
        while taken < hop.size:
            taken += fe.accept(hop[taken:])
            while fe.ready():
                windows_at.append((pos + taken, fe.take(out)))
    assert fe.samples_in == x.size // 160 * 160
    assert stored > 0.9 * (x.size // 160)
    # the windows come at the sample that completes them, as with accept() alone
    ref = REGISTRY[name](hop_frames=100)
    want, pos = [], 0
    while pos < x.size // 160 * 160:
        pos += ref.accept(x[pos:x.size // 160 * 160])
        while ref.ready():
            want.append((pos, ref.take(out)))
    assert len(want) >= 3 and windows_at == want
    fe.finish()
    assert not fe.store(x[:160]) and fe.samples_in == x.size // 160 * 160
