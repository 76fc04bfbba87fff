"""The speech-embedding front end: openWakeWord's mel spectrogram and Google's
speech_embedding network, both as ONNX files shipped in `kws_stream.models` (see
models/THIRD_PARTY.md for where they come from and how they were changed).

Audio is scaled to the 16-bit range (as openWakeWord feeds it), turned into 32-band mel
frames (512-sample frames, 160-sample hop, no padding, so every frame depends on its own
samples only) and mapped to x/10 + 2; every 8 mel frames a 96-dim embedding is taken of the
last 76. The network runs fully convolutionally over a stretch of frames and gives every
8th frame's embedding in one run, 6x cheaper than one run per embedding. A window is
WINDOW_EMBEDDINGS consecutive embeddings (2.46 s), flattened time-major. Because frames
and embeddings are local, a stream computes each of them once and gets the same values
as a whole-file pass (to float rounding).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

import numpy as np

from .base import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, WINDOW_HOPS

PCM_SCALE = 32768.0  # openWakeWord feeds 16-bit-range floats to the mel model
MEL_FRAME = 512  # samples per mel frame
MEL_HOP = HOP_LENGTH  # 160 samples, 10 ms
N_BANDS = 32
EMB_FRAMES = 76  # mel frames per embedding
EMB_STRIDE = 8  # mel frames between embeddings
EMB_DIM = 96
EMB_HOP = EMB_STRIDE * MEL_HOP  # 1280 samples, 80 ms
EMB_SPAN = (EMB_FRAMES - 1) * MEL_HOP + MEL_FRAME  # 12,512 samples under one embedding
WINDOW_EMBEDDINGS = (WINDOW_HOPS - EMB_FRAMES) // EMB_STRIDE + 1  # 22: the most that fit in 2.5 s
WINDOW_SAMPLES = (WINDOW_EMBEDDINGS - 1) * EMB_HOP + EMB_SPAN  # 39,392
FEATURE_SIZE = WINDOW_EMBEDDINGS * EMB_DIM  # 2112
EMBEDDINGS_PER_SECOND = SAMPLE_RATE / EMB_HOP  # 12.5

MEL_FILE = "oww_melspectrogram.onnx"
EMBEDDING_FILE = "oww_embedding.onnx"
SHA256 = {MEL_FILE: "434ff0d3b3461ddaf770cff405b02c70b720b8c041ab3ff77b0b93153bea0446",
          EMBEDDING_FILE: "166207cb67704fc596355061643c541bc906470e0367a30b7f539c81ee250156"}


class EmbeddingNets:
    """The two ONNX networks, single-threaded sessions over the packaged files."""

    def __init__(self, threads: int = 1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._mel = ort.InferenceSession(_checked_bytes(MEL_FILE), sess_options=opts,
                                         providers=["CPUExecutionProvider"])
        self._emb = ort.InferenceSession(_checked_bytes(EMBEDDING_FILE), sess_options=opts,
                                         providers=["CPUExecutionProvider"])

    def mel(self, pcm: np.ndarray) -> np.ndarray:
        """(n_frames, 32) mel frames of float audio in [-1, 1]; n_frames = (n - 512) // 160 + 1."""
        x = (pcm * PCM_SCALE).astype(np.float32).reshape(1, -1)
        (out,) = self._mel.run(None, {"input": x})
        return out[0, 0] / 10.0 + 2.0

    def embed(self, mel: np.ndarray, first: int, count: int) -> np.ndarray:
        """(count, 96) embeddings of the 76-frame blocks starting at mel rows first, first+8, ...,
        in one fully convolutional run over the frames they span."""
        span = mel[first:first + EMB_FRAMES + EMB_STRIDE * (count - 1)]
        (out,) = self._emb.run(None, {"mel": span.astype(np.float32, copy=False)[None, :, :, None]})
        return out


def _checked_bytes(name: str) -> bytes:
    try:
        data = resources.files("kws_stream.models").joinpath(name).read_bytes()
    except OSError as e:
        raise RuntimeError(f"{name}: cannot read the packaged front-end model ({e.strerror or e}); reinstall kws-stream") from e
    if hashlib.sha256(data).hexdigest() != SHA256[name]:
        raise RuntimeError(f"{name}: checksum mismatch; the packaged front-end model is damaged, reinstall kws-stream")
    return data


@lru_cache(maxsize=1)
def shared_nets() -> EmbeddingNets:
    return EmbeddingNets()


def n_embeddings_for(n_samples: int) -> int:
    """Embeddings a whole-file pass computes: the file followed by one window of silence."""
    return (n_samples + WINDOW_SAMPLES - EMB_SPAN) // EMB_HOP + 1


def file_embeddings(signal: np.ndarray, nets: EmbeddingNets | None = None) -> np.ndarray:
    """(n, 96) embeddings of a whole signal padded with one window of zeros, as a stream
    sees it after finish(). Window k of hop h embeddings starts at embedding
    window_start(k, h) and is valid while it starts inside the signal."""
    nets = nets or shared_nets()
    n = n_embeddings_for(signal.size)
    padded = np.zeros((n - 1) * EMB_HOP + EMB_SPAN, dtype=np.float64)
    padded[:signal.size] = signal
    mel = nets.mel(padded)
    out = np.empty((n, EMB_DIM), dtype=np.float32)
    for a in range(0, n, 256):
        out[a:a + 256] = nets.embed(mel, a * EMB_STRIDE, min(256, n - a))
    return out


def window_start(k: int, hop_frames: int) -> int:
    """First embedding of window k when windows are due every hop_frames mel frames:
    the nominal start snapped down to the 80 ms embedding grid."""
    return (k * hop_frames) // EMB_STRIDE


def _mask(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """SpecAugment's idea on embedding frames (EMB_DIM, W): mask a few frames and dimensions."""
    w = w.copy()
    fill = w.mean(axis=1, keepdims=True)
    t = int(rng.integers(0, 4))
    t0 = int(rng.integers(0, w.shape[1] - t + 1))
    w[:, t0:t0 + t] = fill
    dims = rng.choice(w.shape[0], size=int(rng.integers(0, 10)), replace=False)
    w[dims, :] = fill[dims]
    return w


class EmbeddingFrontEnd:
    """Incremental speech-embedding windows, with the interface of SeedFrontEnd.

    Times are in mel frames (hop_length 160 samples): window k is due at nominal frame
    k * hop_frames and starts at the embedding grid point at or before it; hops under
    80 ms are raised to 80 ms. PCM is kept only until its mel frames are computed, mel
    frames only until their embeddings are, and embeddings in a ring of one window.
    `finish()` appends one window of silence and lets the windows that start inside the
    stream run into it.
    """

    name = "oww-embedding-v1"
    feature_size = FEATURE_SIZE
    feature_shape = (WINDOW_EMBEDDINGS, EMB_DIM)  # time-major
    sample_rate = SAMPLE_RATE
    hop_length = MEL_HOP
    window_frames = WINDOW_EMBEDDINGS
    window_samples = WINDOW_SAMPLES
    frame_rate = EMBEDDINGS_PER_SECOND
    tail = WINDOW_EMBEDDINGS - 1  # windows starting inside the stream run on into silence
    reach = -(-(EMB_SPAN - EMB_HOP) // EMB_HOP)  # an embedding hears 0.78 s: past its 80 ms slot

    @staticmethod
    def load() -> None:
        """Load and check the networks once (raises RuntimeError naming a damaged file)."""
        shared_nets()

    # -- batch view -------------------------------------------------------------

    @classmethod
    def file_frames(cls, signal: np.ndarray) -> np.ndarray:
        """(EMB_DIM, n) embeddings of a whole signal, as a stream computes them."""
        return np.ascontiguousarray(file_embeddings(signal).T)

    @classmethod
    def features(cls, frames: np.ndarray, start: int, out: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """The WINDOW_EMBEDDINGS embeddings from `start`, flattened time-major; with rng, up
        to 3 embeddings and 9 dimensions are first set to their mean over the window."""
        w = frames[:, start:start + WINDOW_EMBEDDINGS]
        if rng is not None:
            w = _mask(rng, w)
        out[:] = np.ascontiguousarray(w.T).reshape(-1)
        return out

    @classmethod
    def start_limit(cls, n_frames: int) -> int:
        return n_frames - WINDOW_EMBEDDINGS + 1  # file_frames already holds the silence after the stream

    def __init__(self, hop_frames: int = FRAMES_PER_SECOND, nets: EmbeddingNets | None = None,
                 lookahead_seconds: float = 0.0):
        if not 1 <= hop_frames <= WINDOW_HOPS:
            raise ValueError(f"hop_frames must be in 1..{WINDOW_HOPS}, got {hop_frames}")
        self.hop_frames = max(hop_frames, EMB_STRIDE)  # finer hops would repeat windows: 80 ms is the grid
        self.nets = nets or shared_nets()
        # Lookahead (file replay): when the pending window lacks audio, take this much more and
        # run both networks over it in one go, so each embedding's 76-frame context is paid
        # once per stretch rather than once per window. The values are the same to float rounding
        # (the mel network's output moves by ~2e-6 with where its runs start; tested).
        self._ahead = int(np.ceil(lookahead_seconds * EMBEDDINGS_PER_SECOND))  # embeddings
        self._slots = WINDOW_EMBEDDINGS + self._ahead  # ring rows: the pending window and the lookahead
        self._pcm = np.zeros(WINDOW_SAMPLES + WINDOW_HOPS * MEL_HOP + self._ahead * EMB_HOP, dtype=np.float64)
        # every frame of a full PCM buffer plus the fewer than EMB_FRAMES an embedding still waits on
        self._mel = np.zeros((self._pcm.size // MEL_HOP + EMB_FRAMES + EMB_STRIDE, N_BANDS), dtype=np.float32)
        # mirrored ring: embedding e at rows e % S and e % S + S, so a window is a view
        self._ring = np.zeros((2 * self._slots, EMB_DIM), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self.samples_in = 0
        self._pcm_first = 0  # absolute index of self._pcm[0]
        self._n_pcm = 0
        self._mel_first = 0  # absolute mel frame of self._mel[0]
        self._n_mel = 0
        self.embeddings = 0  # embeddings computed since reset
        self.window = 0  # index of the next window
        self.total_samples = None  # known once the stream is finished

    # -- geometry ---------------------------------------------------------------

    def _first_embedding(self) -> int:
        return window_start(self.window, self.hop_frames)

    def _need_samples(self) -> int:
        """Absolute samples the next window needs."""
        return self._first_embedding() * EMB_HOP + WINDOW_SAMPLES

    def _due(self) -> bool:
        return self.total_samples is None or self._first_embedding() * EMB_HOP < self.total_samples

    # -- audio in ---------------------------------------------------------------

    def accept(self, audio: np.ndarray) -> int:
        """Take samples until the next window is complete; return how many were taken."""
        if self.total_samples is not None:
            raise RuntimeError("accept() after finish(); call reset() first")
        n = self._fill(audio)
        self.samples_in += n
        return n

    def _fill(self, audio: np.ndarray | None) -> int:
        """Append samples (zeros if audio is None) up to what the pending window needs plus
        the lookahead (audio only); never more, so that no embedding past the ring's reach
        is computed."""
        ahead = self._ahead * EMB_HOP if audio is not None else 0
        want = max(self._need_samples() + ahead - (self._pcm_first + self._n_pcm), 0)
        n = min(want if audio is None else min(audio.size, want), self._pcm.size - self._n_pcm)
        self._pcm[self._n_pcm:self._n_pcm + n] = 0.0 if audio is None else audio[:n]
        self._n_pcm += n
        if self._n_pcm == self._pcm.size:
            self._advance()  # frees PCM by turning it into mel frames and embeddings
        return n

    def _advance(self) -> None:
        """Turn held PCM into mel frames and mel frames into embeddings, as far as they go."""
        n_frames = 0 if self._n_pcm < MEL_FRAME else (self._n_pcm - MEL_FRAME) // MEL_HOP + 1
        if n_frames > 0:
            mel = self.nets.mel(self._pcm[:(n_frames - 1) * MEL_HOP + MEL_FRAME])
            self._mel[self._n_mel:self._n_mel + n_frames] = mel
            self._n_mel += n_frames
            used = n_frames * MEL_HOP
            self._pcm[:self._n_pcm - used] = self._pcm[used:self._n_pcm]
            self._n_pcm -= used
            self._pcm_first += used
        first = self.embeddings * EMB_STRIDE - self._mel_first  # row of the next embedding's first frame
        count = 0 if self._n_mel - first < EMB_FRAMES else (self._n_mel - first - EMB_FRAMES) // EMB_STRIDE + 1
        if count > 0:
            emb = self.nets.embed(self._mel, first, count)
            for e in range(count):
                row = (self.embeddings + e) % self._slots
                self._ring[row] = self._ring[row + self._slots] = emb[e]
            self.embeddings += count
        drop = self.embeddings * EMB_STRIDE - self._mel_first  # frames no later embedding reads
        if drop > 0:
            self._mel[:self._n_mel - drop] = self._mel[drop:self._n_mel]
            self._n_mel -= drop
            self._mel_first += drop

    # -- windows out ------------------------------------------------------------

    def ready(self) -> bool:
        if not self._due():
            return False
        if self.total_samples is not None:  # the silence after the stream
            while self._fill(None):
                pass
        have = self._pcm_first + self._n_pcm
        if have < self._need_samples():
            return False
        if self.total_samples is None and have < self._need_samples() + self._ahead * EMB_HOP:
            return False  # still gathering the lookahead: its windows come with it, or at finish()
        if self.embeddings < self._first_embedding() + WINDOW_EMBEDDINGS:
            self._advance()
        return self.embeddings >= self._first_embedding() + WINDOW_EMBEDDINGS

    def take(self, out: np.ndarray) -> int:
        """Write the next window's features into out; return its start in mel frames."""
        first = self._first_embedding()
        row = first % self._slots
        out[:] = self._ring[row:row + WINDOW_EMBEDDINGS].reshape(-1)
        self.window += 1
        return first * EMB_STRIDE

    def finish(self) -> None:
        """End of stream: windows that start inside it run on into silence."""
        if self.total_samples is None:
            self.total_samples = self.samples_in
