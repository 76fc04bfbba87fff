"""The speech-embedding front end: streaming equals a whole-file pass for any chunking
and hop, frames are local, the packaged networks are checked, and a model that names
this front end in its metadata runs through the Spotter."""
import numpy as np
import pytest

from kws_stream.frontends import embedding as emb
from kws_stream.model import KwsModel, ModelError
from kws_stream.spotter import Spotter, SpotterConfig

from modelkit import save_model


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with digital silence between them, like a call with dropouts."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, int(seconds * emb.SAMPLE_RATE))
    t = np.arange(x.size) / emb.SAMPLE_RATE
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    x[int(1.1 * emb.SAMPLE_RATE):int(1.6 * emb.SAMPLE_RATE)] = 0.0
    return x


def stream_windows(x: np.ndarray, hop_frames: int, chunks: np.random.Generator | int,
                   front_end=emb.EmbeddingFrontEnd, gate=None,
                   held: list[int] | None = None) -> list[tuple[int, np.ndarray | None]]:
    """(start, features) of every window streamed in chunks; with a speech gate, features
    None for a skipped window, and `held` gets the mel frames the front end holds after
    each chunk."""
    fe = front_end(hop_frames=hop_frames) if gate is None else front_end(hop_frames=hop_frames, gate=gate)
    out = np.empty(fe.feature_size, dtype=np.float32)
    got, pos = [], 0
    while pos < x.size:
        size = chunks if isinstance(chunks, int) else int(chunks.integers(1, 6000))
        chunk, taken = x[pos:pos + size], 0
        while taken < chunk.size:
            taken += fe.accept(chunk[taken:])
            while fe.ready():
                got.append((fe.take(out), None if fe.skipped else out.copy()))
        if held is not None:
            held.append(fe._mel.shape[0])
        pos += size
    fe.finish()
    while fe.ready():
        got.append((fe.take(out), None if fe.skipped else out.copy()))
    return got


def test_geometry_follows_from_the_constants():
    assert emb.EMB_HOP == 1280 and emb.EMB_SPAN == 12512
    assert emb.WINDOW_EMBEDDINGS == 22 and emb.WINDOW_SAMPLES == 39392 and emb.FEATURE_SIZE == 22 * 96
    assert emb.WINDOW_SAMPLES <= 2.5 * emb.SAMPLE_RATE


def test_mel_frames_are_local():
    """The packaged mel network floors each frame on its own, so chunks give the same frames."""
    nets = emb.shared_nets()
    x = speechlike(3.0)
    whole = nets.mel(x)
    assert whole.shape == ((x.size - emb.MEL_FRAME) // emb.MEL_HOP + 1, emb.N_BANDS)
    for skip in (1, 16, 255, 257, 300):  # inside, at and across the FFT batches
        part = nets.mel(x[skip * emb.MEL_HOP:])
        assert np.array_equal(part, whole[skip:skip + part.shape[0]])  # every frame is computed on its own
    assert whole.min() >= 2.0  # nothing under the 0 dB floor, digital silence included


@pytest.mark.parametrize("hop_frames,chunks", [(100, 160), (100, 4096), (37, 0), (8, 0), (250, 7)])
def test_streaming_equals_whole_file(hop_frames, chunks):
    x = speechlike(6.3)
    ref = emb.file_embeddings(x)
    got = stream_windows(x, hop_frames, chunks or np.random.default_rng(hop_frames))
    starts = [s // emb.EMB_STRIDE for s, _ in got]
    step = max(hop_frames, emb.EMB_STRIDE)
    assert starts == [emb.window_start(k, step) for k in range(len(got))]
    assert starts[-1] * emb.EMB_HOP < x.size <= (starts[-1] + step / emb.EMB_STRIDE + 1) * emb.EMB_HOP
    for s, w in got:
        np.testing.assert_allclose(w.reshape(emb.WINDOW_EMBEDDINGS, emb.EMB_DIM), ref[s // emb.EMB_STRIDE:
                                   s // emb.EMB_STRIDE + emb.WINDOW_EMBEDDINGS], atol=1e-5)


@pytest.mark.parametrize("hop_frames,chunks", [(100, 160), (37, 0), (8, 0)])
def test_rows_stream_equals_whole_file_and_keeps_the_embedding_grid(hop_frames, chunks):
    """The rows front end (part 3a's rows) streams the same windows, on the same grid and
    from the same samples, as the embedding front end."""
    rows_fe = emb.EmbeddingRowsFrontEnd
    assert rows_fe.window_frames == 52 and rows_fe.feature_size == 52 * 192 and rows_fe.frame_rate == 25
    x = speechlike(6.3)
    ref = rows_fe.file_frames(x)
    assert ref.shape == (192, 2 * emb.n_embeddings_for(x.size) + 8)
    got = stream_windows(x, hop_frames, chunks or np.random.default_rng(hop_frames), rows_fe)
    assert [s for s, _ in got] == [s for s, _ in stream_windows(x, hop_frames, 4096)]
    assert rows_fe.window_frame(len(got), hop_frames) >= rows_fe.start_limit(ref.shape[1])  # the batch view has no more
    for k, (s, w) in enumerate(got):
        first = rows_fe.window_frame(k, hop_frames)
        assert first == 2 * (s // emb.EMB_STRIDE) and first < rows_fe.start_limit(ref.shape[1])
        np.testing.assert_allclose(w, rows_fe.features(ref, first, np.empty_like(w)), atol=1e-5)


@pytest.mark.parametrize("hop_frames,chunks", [(100, 160), (100, 32000), (37, 0), (8, 0), (250, 7)])
def test_mel_stream_equals_whole_file_and_keeps_the_embedding_grid(hop_frames, chunks):
    """The mel front end gives exactly the mel frames under the embedding front end's windows,
    on its grid: a model on mel frames scores the windows an embedding model scores."""
    mel_fe = emb.MelFrontEnd
    assert mel_fe.window_frames == emb.WINDOW_MEL == 244 and mel_fe.feature_size == 244 * 32
    x = speechlike(6.3)
    ref = mel_fe.file_frames(x)
    assert ref.shape == (32, emb.EMB_STRIDE * (emb.n_embeddings_for(x.size) - 1) + emb.EMB_FRAMES)
    got = stream_windows(x, hop_frames, chunks or np.random.default_rng(hop_frames), mel_fe)
    assert [s for s, _ in got] == [s for s, _ in stream_windows(x, hop_frames, 4096)]
    assert mel_fe.window_frame(len(got), hop_frames) >= mel_fe.start_limit(ref.shape[1])
    for k, (s, w) in enumerate(got):
        assert mel_fe.window_frame(k, hop_frames) == s < mel_fe.start_limit(ref.shape[1])
        assert np.array_equal(w, mel_fe.features(ref, s, np.empty_like(w)))  # the same numpy, the same frames
        assert np.array_equal(w.reshape(244, 32), emb.shared_nets().mel(np.pad(x, (0, 40000))[s * 160:][:39392]))


def test_short_stream_gets_one_padded_window():
    got = stream_windows(speechlike(0.3), 100, 1000)
    assert [s for s, _ in got] == [0]


def test_reset_starts_a_new_stream():
    x = speechlike(4.0)
    fe = emb.EmbeddingFrontEnd()
    fe.accept(speechlike(2.0, seed=5))
    fe.reset()
    out = np.empty(emb.FEATURE_SIZE, dtype=np.float32)
    pos = 0
    while not fe.ready():
        pos += fe.accept(x[pos:])
    fe.take(out)
    np.testing.assert_allclose(out, emb.file_embeddings(x)[:emb.WINDOW_EMBEDDINGS].reshape(-1), atol=1e-5)


def test_damaged_network_file_is_named(monkeypatch):
    monkeypatch.setitem(emb.SHA256, emb.MEL_WEIGHTS[1], "0" * 64)
    with pytest.raises(RuntimeError, match="oww_melspectrogram_filters.npy: checksum mismatch"):
        emb.EmbeddingNets()


def test_numpy_mel_is_the_packaged_mel_network():
    """The front end's FFT mel gives the same computed in float64 to 1e-5, and the packaged
    mel network's frames to 1e-3 (the network's float32 DFT convolutions err up to 6e-5 on
    a pure tone's leakage bins and 5e-4 on a constant offset): speech-like audio with
    digital silence, loud clipped noise, near-silence, a tone, a full-scale offset, and 30 s
    (many FFT batches)."""
    import onnxruntime as ort
    session = ort.InferenceSession(emb_models().joinpath(emb.MEL_FILE).read_bytes(), providers=["CPUExecutionProvider"])
    window, filters = (np.load(emb_models().joinpath(name), allow_pickle=False).astype(np.float64)
                       for name in emb.MEL_WEIGHTS)
    rng = np.random.default_rng(3)
    t = np.arange(20000) / emb.SAMPLE_RATE
    for x in (speechlike(4.0), np.clip(rng.normal(0, 3, 9000), -1, 1), rng.normal(0, 1e-6, 5000),
              0.5 * np.sin(2 * np.pi * 440 * t), np.full(4000, 1.0), speechlike(30.0, seed=4)):
        pcm = (x * emb.PCM_SCALE).astype(np.float32)
        (net,) = session.run(None, {"input": pcm[None]})
        n = (x.size - emb.MEL_FRAME) // emb.MEL_HOP + 1
        frames = np.stack([pcm[i * emb.MEL_HOP:i * emb.MEL_HOP + emb.MEL_FRAME] for i in range(n)]).astype(np.float64)
        db = 10 * np.log10(np.maximum(np.abs(np.fft.rfft(frames * window)) ** 2 @ filters, 1e-10))
        exact = np.maximum(np.maximum(db, db.max(axis=1, keepdims=True) - emb.MEL_FLOOR_DB), 0) / 10 + 2
        got = emb.shared_nets().mel(x)
        assert got.shape == exact.shape == net[0, 0].shape and got.dtype == np.float32
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got, net[0, 0] / 10 + 2, rtol=0, atol=1e-3)


def test_model_metadata_selects_the_embedding_front_end(tmp_path):
    rng = np.random.default_rng(1)
    path = save_model(tmp_path / "emb.onnx", rng.normal(0, 0.01, emb.FEATURE_SIZE).astype(np.float32),
                      front_end=emb.EmbeddingFrontEnd.name)
    model = KwsModel(path)
    assert model.front_end_class is emb.EmbeddingFrontEnd and model.feature_size == emb.FEATURE_SIZE
    x = speechlike(5.0)
    windows = []
    spotter = Spotter(model, config=SpotterConfig(hop_seconds=1.0),
                      on_window=lambda a, b, p: windows.append((a, b, p)))
    for i in range(0, x.size, 160):
        spotter.feed(x[i:i + 160])
    spotter.finish()
    assert [round(a, 2) for a, _, _ in windows] == [0.0, 0.96, 2.0, 2.96, 4.0, 4.96]  # every window starting inside the 5 s
    assert all(round(b - a, 4) == emb.WINDOW_SAMPLES / emb.SAMPLE_RATE for a, b, _ in windows)
    # a seed-feature model's input size does not fit this front end
    wrong = save_model(tmp_path / "wrong.onnx", front_end=emb.EmbeddingFrontEnd.name)
    with pytest.raises(ModelError, match="input shape"):
        KwsModel(wrong)


@pytest.mark.parametrize("chunk", [1, 7, 8, 96, 1000])
def test_the_parts_streamed_equal_one_run_of_the_whole_network(chunk):
    """The network in four parts, each holding the rows its next run needs, gives in any
    chunking the embeddings that one run of the whole packaged network gives."""
    import onnxruntime as ort
    from importlib import resources
    nets = emb.shared_nets()
    mel = nets.mel(speechlike(4.0))
    whole = ort.InferenceSession(resources.files("kws_stream.models").joinpath(emb.EMBEDDING_FILE).read_bytes(),
                                 providers=["CPUExecutionProvider"])
    (ref,) = whole.run(None, {"mel": mel[None, :, :, None]})
    stream = emb.EmbeddingStream(nets)
    got = np.concatenate([stream.push(mel[a:a + chunk]) for a in range(0, mel.shape[0], chunk)])
    assert got.shape == ref.shape == ((mel.shape[0] - emb.EMB_FRAMES) // emb.EMB_STRIDE + 1, emb.EMB_DIM)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_shipped_parts_are_what_the_split_writes(tmp_path):
    """The packaged parts and mel weights are reproducible from the packaged networks."""
    from kws_train.split_embedding import mel_weights, split
    for path in [*split(emb_models() / emb.EMBEDDING_FILE, tmp_path), *mel_weights(emb_models() / emb.MEL_FILE, tmp_path)]:
        assert path.read_bytes() == (emb_models() / path.name).read_bytes(), path.name


def emb_models():
    from importlib import resources
    return resources.files("kws_stream.models")


def test_damaged_front_end_is_a_model_error_naming_it(tmp_path, monkeypatch):
    path = save_model(tmp_path / "emb.onnx", np.zeros(emb.FEATURE_SIZE, dtype=np.float32),
                      front_end=emb.EmbeddingFrontEnd.name)
    emb.shared_nets.cache_clear()
    monkeypatch.setitem(emb.SHA256, emb.EMBEDDING_PARTS[2], "0" * 64)
    try:
        with pytest.raises(ModelError, match="front end oww-embedding-v1: oww_embedding_part3.onnx: checksum mismatch"):
            KwsModel(path)
    finally:
        emb.shared_nets.cache_clear()
