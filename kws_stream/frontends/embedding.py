"""The speech-embedding front end: openWakeWord's mel spectrogram and Google's
speech_embedding network, shipped in `kws_stream.models` (see models/THIRD_PARTY.md for
where they come from and how they were changed): the network as ONNX files, the mel
spectrogram as its window and filterbank.

Audio is scaled to the 16-bit range (as openWakeWord feeds it), turned into 32-band mel
frames (512-sample frames, 160-sample hop, no padding, so every frame depends on its own
samples only) and mapped to x/10 + 2. The packaged mel network is a windowed DFT written as
two convolutions, a power spectrum, a filterbank and dB floors; numpy computes the same
here with a real FFT and the network's own window and filterbank (`MEL_WEIGHTS`, written
from it by kws_train.split_embedding), each frame on its own, so any chunking gives the same
values. They are within 1e-5 of the same computed in float64; the network's float32 DFT
errs more (6e-5 on a pure tone, 5e-4 on a constant offset). In one-second chunks it costs
about half the network's CPU (benchmarks/bench_mel.py). Every 8 mel frames a 96-dim
embedding is taken of the last 76. The network is shipped in four parts cut at its
time-strided pools (kws_train.split_embedding); a stream keeps the few input rows each
part's next run still needs, so every row of every layer is computed once, whatever the
chunking (running the whole network once per window, as before, recomputed the 76-frame
receptive field of each window's first embedding). A window is WINDOW_EMBEDDINGS
consecutive embeddings (2.46 s), flattened time-major. Streaming gives the values of a
whole-file pass: the mel frames exactly, the embeddings to float rounding (onnxruntime
may round a part's convolutions differently for another number of rows).
"""
from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources

import numpy as np

from ..onnxfile import open_session, sha256_hex
from .base import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, WINDOW_HOPS
from .gate import SpeechGate

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
WINDOW_MEL = (WINDOW_EMBEDDINGS - 1) * EMB_STRIDE + EMB_FRAMES  # 244 mel frames under a window
FEATURE_SIZE = WINDOW_EMBEDDINGS * EMB_DIM  # 2112
EMBEDDINGS_PER_SECOND = SAMPLE_RATE / EMB_HOP  # 12.5

MEL_FILE = "oww_melspectrogram.onnx"  # the source of MEL_WEIGHTS, not loaded
MEL_WEIGHTS = ("oww_melspectrogram_window.npy", "oww_melspectrogram_filters.npy")  # (512,), (257, 32) float32
MEL_FLOOR_DB = 80.0  # a frame's values are floored at its own maximum minus this, and at 0 dB
MEL_CHUNK = 64  # mel frames per FFT batch: 0.31 ms per second of audio here, 0.60 at 256 (out of the caches)
EMBEDDING_FILE = "oww_embedding.onnx"  # the whole network: the source of the parts, not loaded
EMBEDDING_PARTS = tuple(f"oww_embedding_part{i}.onnx" for i in range(1, 5))
ROWS_PART = "oww_embedding_part3a.onnx"  # part 3 up to its frequency-only pool (EmbeddingRowsFrontEnd)
SHA256 = {MEL_WEIGHTS[0]: "a5c519e248a8a191e755ba27e7cb52f280f69c66cade9a7641a5b1d477b160a5",
          MEL_WEIGHTS[1]: "65e9e696738d9eb53b1d8a16a747a95fb200b6dc8c098ac2cd90cceefc3b967a",
          EMBEDDING_PARTS[0]: "c2cb804f4bda5cedb0f8eb76c844acba84e133838efac5ff8d81e6981b0a61b8",
          EMBEDDING_PARTS[1]: "6b23915a94bbe7bf5241c5c1fa5fee892744725f3e0602d88550ce5af2247998",
          EMBEDDING_PARTS[2]: "f0b26a71dfe2f0d88f07cb4148bd9b8dff6cc966d299fca20a56ee2c7727331a",
          EMBEDDING_PARTS[3]: "b60eadfd545e9ca65b67cd4b2b6ee79126e18adcfd90dd2c55030e71734c7e6d",
          ROWS_PART: "be49fe3ed3a0ff3268ba78e661c867977c03201d777829f8aa24e7264f3609c7"}
ROW_DIM = 192  # a rows-front-end row: 96 channels x 2 frequency bins, every 40 ms
ROWS_PER_EMBEDDING = 2
TAIL_CONTEXT = 10  # rows under one embedding: the last five convolutions' context (8) plus the pool's pair
WINDOW_ROWS = ROWS_PER_EMBEDDING * (WINDOW_EMBEDDINGS - 1) + TAIL_CONTEXT  # 52 rows under a window's 22 embeddings
FILE_BLOCK = 4096  # mel frames per run in a whole-file pass (about 6 MB of activations)


class EmbeddingNets:
    """The mel spectrogram (numpy, from the packaged weights) and the embedding network's
    parts (onnxruntime sessions of `threads` threads over the packaged files). A part is
    loaded (and checked) when a front end first needs it, so a process holds only the parts
    its model reads."""

    def __init__(self, threads: int = 1):
        self.threads = threads
        self._window, filters = (_checked_array(name) for name in MEL_WEIGHTS)
        # The filterbank as its nonzero weights, band by band: summed with np.add.reduceat, not
        # a matrix product, which numpy hands to a BLAS whose threads spin on a busy core.
        bands, bins = np.nonzero(filters.T)  # sorted by band
        if np.unique(bands).size < filters.shape[1]:
            raise RuntimeError(f"{MEL_WEIGHTS[1]}: a mel band without weights; reinstall kws-stream")
        self._bins, self._weights = bins, filters[bins, bands]
        self._band_starts = np.searchsorted(bands, np.arange(filters.shape[1]))
        self._parts: dict[str, _Part] = {}

    def _part(self, name: str) -> "_Part":
        if name not in self._parts:
            self._parts[name] = _Part(open_session(_checked_bytes(name), self.threads))
        return self._parts[name]

    @property
    def parts(self) -> tuple["_Part", ...]:
        """Parts 1 to 4: the embedding front end's network."""
        return tuple(self._part(name) for name in EMBEDDING_PARTS)

    @property
    def rows_parts(self) -> tuple["_Part", ...]:
        """Parts 1, 2 and 3a: the rows front end's network."""
        return tuple(self._part(name) for name in (*EMBEDDING_PARTS[:2], ROWS_PART))

    def mel(self, pcm: np.ndarray) -> np.ndarray:
        """(n_frames, 32) mel frames of float audio in [-1, 1]; n_frames = (n - 512) // 160 + 1."""
        x = np.ascontiguousarray(pcm * PCM_SCALE, dtype=np.float32)
        n = max((x.size - MEL_FRAME) // MEL_HOP + 1, 0)
        frames = np.lib.stride_tricks.as_strided(x, (n, MEL_FRAME), (MEL_HOP * x.itemsize, x.itemsize), writeable=False)
        out = np.empty((n, N_BANDS), dtype=np.float32)
        for a in range(0, n, MEL_CHUNK):
            spec = np.fft.rfft(frames[a:a + MEL_CHUNK] * self._window)  # complex64 (numpy 1.x: complex128)
            power = spec.real * spec.real + spec.imag * spec.imag
            mel = np.add.reduceat(power[:, self._bins] * self._weights, self._band_starts, axis=1)
            db = 10.0 * np.log10(np.maximum(mel, np.float32(1e-10)))
            db = np.maximum(db, db.max(axis=1, keepdims=True) - np.float32(MEL_FLOOR_DB))
            out[a:a + MEL_CHUNK] = np.maximum(db, np.float32(0.0))
        return out / np.float32(10.0) + np.float32(2.0)


class _Part:
    """One part of the embedding network: unpadded convolutions that consume `context`
    input rows, then (but for the last part) a pool that strides `stride` rows in time."""

    def __init__(self, session):
        self.session = session
        (inp,) = session.get_inputs()
        self.input = inp.name
        self.axis = next(i for i, d in enumerate(inp.shape) if not isinstance(d, int))  # the free time axis
        meta = session.get_modelmeta().custom_metadata_map
        self.context = int(meta["time_context"])
        self.stride = int(meta["time_stride"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Run over the rows of x that give whole strides; return the output (None if
        there are too few rows) and the rows of x the next run still needs."""
        rows = x.shape[self.axis] - self.context
        use = rows - rows % self.stride  # pool pairs stay on the stream's even rows
        if use <= 0:
            return None, x
        (out,) = self.session.run(None, {self.input: self._rows(x, 0, use + self.context)})
        return out, self._rows(x, use, x.shape[self.axis]).copy()  # a few rows, never a view of the caller's array

    def _rows(self, x: np.ndarray, a: int, b: int) -> np.ndarray:
        index = [slice(None)] * x.ndim
        index[self.axis] = slice(a, b)
        return x[tuple(index)]


class EmbeddingStream:
    """Embeddings (or, with rows=True, the rows of part 3a) of mel frames pushed in chunks
    of any size. Each part of the network holds the input rows its next run needs, so each
    output comes out as soon as its mel frames are in, and no row of any layer is computed
    twice."""

    def __init__(self, nets: EmbeddingNets, rows: bool = False):
        self.nets = nets
        self.rows = rows
        self.parts = nets.rows_parts if rows else nets.parts
        self.width = ROW_DIM if rows else EMB_DIM
        self.reset()

    def reset(self) -> None:
        self._held: list[np.ndarray | None] = [None] * len(self.parts)

    def push(self, mel: np.ndarray) -> np.ndarray:
        """(count, width) outputs completed by these (n, 32) mel frames."""
        x = mel.astype(np.float32, copy=False)[None, :, :, None]
        for i, part in enumerate(self.parts):
            held = self._held[i]
            x = x if held is None else np.concatenate([held, x], axis=part.axis)
            x, self._held[i] = part.run(x)
            if x is None:
                return np.empty((0, self.width), dtype=np.float32)
        if self.rows:  # part 3a: (1, 96 channels, rows, 2 bins) -> (rows, 192), channel-major
            return np.ascontiguousarray(x[0].transpose(1, 0, 2)).reshape(x.shape[2], -1)
        return x


def _checked_bytes(name: str) -> bytes:
    try:
        data = resources.files("kws_stream.models").joinpath(name).read_bytes()
    except OSError as e:
        raise RuntimeError(f"{name}: cannot read the packaged front-end model ({e.strerror or e}); reinstall kws-stream") from e
    if sha256_hex(data) != SHA256[name]:
        raise RuntimeError(f"{name}: checksum mismatch; the packaged front-end model is damaged, reinstall kws-stream")
    return data


def _checked_array(name: str) -> np.ndarray:
    """A packaged .npy file, checked like the networks."""
    return np.load(io.BytesIO(_checked_bytes(name)), allow_pickle=False)


@lru_cache(maxsize=1)
def shared_nets() -> EmbeddingNets:
    return EmbeddingNets()


def n_embeddings_for(n_samples: int) -> int:
    """Embeddings a whole-file pass computes: the file followed by one window of silence."""
    return (n_samples + WINDOW_SAMPLES - EMB_SPAN) // EMB_HOP + 1


def file_embeddings(signal: np.ndarray, nets: EmbeddingNets | None = None, rows: bool = False) -> np.ndarray:
    """(n, 96) embeddings of a whole signal padded with one window of zeros, as a stream
    sees it after finish(). Window k of hop h embeddings starts at embedding
    window_start(k, h) and is valid while it starts inside the signal. With rows=True,
    the (2n + 8, 192) rows of part 3a under those n embeddings."""
    nets = nets or shared_nets()
    n = n_embeddings_for(signal.size)
    mel = nets.mel(_padded(signal))
    stream = EmbeddingStream(nets, rows)
    out = np.concatenate([stream.push(mel[a:a + FILE_BLOCK]) for a in range(0, mel.shape[0], FILE_BLOCK)])
    want = (ROWS_PER_EMBEDDING * (n - 1) + TAIL_CONTEXT, ROW_DIM) if rows else (n, EMB_DIM)
    if out.shape != want:  # every output whose mel frames exist, none more
        raise RuntimeError(f"embedding parts gave {out.shape[0]} rows for {want[0]}; "
                           "the packaged parts are inconsistent")
    return out


def _padded(signal: np.ndarray) -> np.ndarray:
    """The signal and the silence a stream runs on into after finish(), to the end of the
    last embedding a whole-file pass computes."""
    padded = np.zeros((n_embeddings_for(signal.size) - 1) * EMB_HOP + EMB_SPAN, dtype=np.float64)
    padded[:signal.size] = signal
    return padded


def window_start(k: int, hop_frames: int) -> int:
    """First embedding of window k when windows are due every hop_frames mel frames:
    the nominal start snapped down to the 80 ms embedding grid."""
    return (k * hop_frames) // EMB_STRIDE


def _mask(rng: np.random.Generator, w: np.ndarray, frames: int, dims: int) -> np.ndarray:
    """SpecAugment's idea on a window's frames (dimensions, W): set up to `frames` consecutive
    frames and up to `dims` dimensions to their mean over the window."""
    w = w.copy()
    fill = w.mean(axis=1, keepdims=True)
    t = int(rng.integers(0, frames + 1))
    t0 = int(rng.integers(0, w.shape[1] - t + 1))
    w[:, t0:t0 + t] = fill
    picked = rng.choice(w.shape[0], size=int(rng.integers(0, dims + 1)), replace=False)
    w[picked, :] = fill[picked]
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
    gates = True  # takes a SpeechGate: windows that hear no speech are skipped, their network work undone
    stops_at_rows = False  # frames are embeddings (True: part 3a's rows, EmbeddingRowsFrontEnd)
    row_dim = EMB_DIM
    rows_per_embedding = 1
    feature_size = FEATURE_SIZE
    feature_shape = (WINDOW_EMBEDDINGS, EMB_DIM)  # time-major
    mask_frames, mask_dims = 3, 9  # training's masking (features with rng): at most this many frames, dimensions
    sample_rate = SAMPLE_RATE
    hop_length = MEL_HOP
    window_frames = WINDOW_EMBEDDINGS
    window_samples = WINDOW_SAMPLES
    frame_rate = EMBEDDINGS_PER_SECOND
    tail = WINDOW_EMBEDDINGS - 1  # windows starting inside the stream run on into silence
    # an embedding hears 0.78 s, past its 80 ms slot: the window hears this many frames past its last
    reach = -(-(WINDOW_SAMPLES - WINDOW_EMBEDDINGS * EMB_HOP) // EMB_HOP)

    @staticmethod
    def load() -> None:
        """Load and check the networks once (raises RuntimeError naming a damaged file)."""
        shared_nets().parts

    # -- batch view -------------------------------------------------------------

    @classmethod
    def file_frames(cls, signal: np.ndarray) -> np.ndarray:
        """(row_dim, n) embeddings (or rows) of a whole signal, as a stream computes them."""
        return np.ascontiguousarray(file_embeddings(signal, rows=cls.stops_at_rows).T)

    @classmethod
    def features(cls, frames: np.ndarray, start: int, out: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """The window_frames embeddings (or rows, or mel frames) from `start`, flattened
        time-major; with rng, up to mask_frames of them and mask_dims dimensions are first set
        to their mean over the window."""
        w = frames[:, start:start + cls.window_frames]
        if rng is not None:
            w = _mask(rng, w, cls.mask_frames, cls.mask_dims)
        out[:] = np.ascontiguousarray(w.T).reshape(-1)
        return out

    @staticmethod
    def band_hz() -> np.ndarray | None:
        return None  # embeddings are not bands of a spectrum

    @classmethod
    def gated_windows(cls, signal: np.ndarray, gate: SpeechGate, hop_frames: int) -> list[tuple[int, bool]]:
        """The speech gate's batch view: (start in mel frames, skipped) of every window a
        stream of `signal` gives with this gate, without running the network."""
        hop = max(hop_frames, EMB_STRIDE)
        active = gate.push(shared_nets().mel(_padded(signal)))
        out, k = [], 0
        while window_start(k, hop) * EMB_HOP < signal.size:  # the windows that start inside it
            a = window_start(k, hop) * EMB_STRIDE
            out.append((a, not active[a:a + WINDOW_MEL].any()))
            k += 1
        return out

    @classmethod
    def start_limit(cls, n_frames: int) -> int:
        return n_frames - cls.window_frames + 1  # file_frames already holds the silence after the stream

    @classmethod
    def window_frame(cls, k: int, hop_frames: int) -> int:
        """The batch frame window k starts at when windows are due every hop_frames mel frames."""
        return cls.rows_per_embedding * window_start(k, max(hop_frames, EMB_STRIDE))

    def __init__(self, hop_frames: int = FRAMES_PER_SECOND, nets: EmbeddingNets | None = None,
                 gate: SpeechGate | None = None):
        if not 1 <= hop_frames <= WINDOW_HOPS:
            raise ValueError(f"hop_frames must be in 1..{WINDOW_HOPS}, got {hop_frames}")
        self.hop_frames = max(hop_frames, EMB_STRIDE)  # finer hops would repeat windows: 80 ms is the grid
        self.nets = nets or shared_nets()
        self.gate = gate
        self._pcm = np.zeros(WINDOW_SAMPLES + WINDOW_HOPS * MEL_HOP, dtype=np.float64)
        self._stream = self._new_stream()  # holds the rows its layers still need
        # mirrored ring of S = window_frames rows: output e at e % S and e % S + S, so a window is a view
        self._ring = np.zeros((2 * self.window_frames, self.row_dim), dtype=np.float32)  # the pending window
        self.reset()

    def _new_stream(self):
        return EmbeddingStream(self.nets, self.stops_at_rows)

    def reset(self) -> None:
        self.samples_in = 0
        self._pcm_first = 0  # absolute index of self._pcm[0]
        self._n_pcm = 0
        self._stream.reset()
        self.frames_out = 0  # the next embedding (or row) the stream gives: all before it are computed
        self.window = 0  # index of the next window
        self._need = self._need_samples()  # kept with self.window: checked on every 10 ms hop
        self.total_samples = None  # known once the stream is finished
        self.skipped = False  # whether the window take() last wrote was left out by the gate
        if self.gate is not None:
            self.gate.reset()
            # with a gate, mel frames wait here, with their activity, until a window needs them
            self._mel = np.empty((0, N_BANDS), dtype=np.float32)
            self._active = np.empty(0, dtype=bool)
            self._mel_first = 0  # absolute index of self._mel[0]
            self._fed = 0  # the next mel frame the stream takes

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
        if self.store(audio):
            return audio.size
        n = self._fill(audio)
        self.samples_in += n
        return n

    def store(self, audio: np.ndarray) -> bool:
        """The common 10 ms hop: keep audio (True) only when the pending window still lacks
        samples after it and the buffer has room; else take nothing (False): accept() works."""
        n, held = audio.size, self._n_pcm
        if self.total_samples is not None or self._pcm_first + held + n >= self._need or held + n >= self._pcm.size:
            return False
        self._pcm[held:held + n] = audio
        self._n_pcm = held + n
        self.samples_in += n
        return True

    def _fill(self, audio: np.ndarray | None) -> int:
        """Append samples (zeros if audio is None) up to what the pending window needs; never
        more, so that no embedding past the ring's reach is computed."""
        want = max(self._need - (self._pcm_first + self._n_pcm), 0)
        n = min(want if audio is None else min(audio.size, want), self._pcm.size - self._n_pcm)
        self._pcm[self._n_pcm:self._n_pcm + n] = 0.0 if audio is None else audio[:n]
        self._n_pcm += n
        if self._n_pcm == self._pcm.size:
            self._advance()  # frees PCM by turning it into mel frames and embeddings
        return n

    def _advance(self) -> None:
        """Turn held PCM into mel frames, and those into every embedding they complete (with
        a gate, only those the pending window needs, in ready())."""
        if self._n_pcm < MEL_FRAME:
            return
        n_frames = (self._n_pcm - MEL_FRAME) // MEL_HOP + 1
        mel = self.nets.mel(self._pcm[:(n_frames - 1) * MEL_HOP + MEL_FRAME])
        used = n_frames * MEL_HOP
        self._pcm[:self._n_pcm - used] = self._pcm[used:self._n_pcm]
        self._n_pcm -= used
        self._pcm_first += used
        if self.gate is None:
            self._push(mel)
        else:
            self._mel = np.concatenate([self._mel, mel])
            self._active = np.concatenate([self._active, self.gate.push(mel)])

    def _push(self, mel: np.ndarray) -> None:
        """Run the network over the next mel frames; keep the outputs in the ring."""
        emb = self._stream.push(mel)
        keep = emb[-self.window_frames:]  # rows before the last window's worth would be overwritten anyway
        rows = (self.frames_out + emb.shape[0] - keep.shape[0] + np.arange(keep.shape[0])) % self.window_frames
        self._ring[rows] = self._ring[rows + self.window_frames] = keep
        self.frames_out += emb.shape[0]

    def _gated_window(self) -> bool:
        """With a gate: whether the pending window hears no active frame; if it hears one,
        run the network over the mel frames it still needs. After a gap (skipped windows)
        the stream starts afresh at the window's first frame: the same outputs, to float
        rounding, as running on through the gap, for less work."""
        first = self._first_embedding() * EMB_STRIDE  # the window's first mel frame
        span = slice(first - self._mel_first, first + WINDOW_MEL - self._mel_first)
        if not self._active[span].any():
            return True
        if first > self._fed:
            self._stream.reset()
            self._fed = first
            self.frames_out = self.rows_per_embedding * self._first_embedding()
        self._push(self._mel[self._fed - self._mel_first:])
        self._fed = self._mel_first + self._mel.shape[0]
        return False

    def _forget_mel(self) -> None:
        """Drop the mel frames before the next window: it reads its frames' activity, and
        the stream has taken the frames before it, or starts afresh there."""
        keep = min(self._first_embedding() * EMB_STRIDE, self._mel_first + self._mel.shape[0]) - self._mel_first
        self._mel, self._active = self._mel[keep:], self._active[keep:]
        self._mel_first += keep

    # -- windows out ------------------------------------------------------------

    def ready(self) -> bool:
        if self.total_samples is None and self._pcm_first + self._n_pcm < self._need:
            return False  # the usual hop: the pending window still lacks samples
        if not self._due():
            return False
        if self.total_samples is not None:  # the silence after the stream
            while self._fill(None):
                pass
        if self._pcm_first + self._n_pcm < self._need:
            return False
        if self.gate is not None:
            self._advance()
            self.skipped = self._gated_window()
            return True  # its mel frames are all in: it is skipped, or its outputs are computed
        last = self.rows_per_embedding * self._first_embedding() + self.window_frames
        if self.frames_out < last:
            self._advance()
        return self.frames_out >= last

    def take(self, out: np.ndarray) -> int:
        """Write the next window's features into out (unless the gate skips it: see
        `skipped`); return its start in mel frames."""
        first = self._first_embedding()
        if not self.skipped:  # never set without a gate
            row = self.rows_per_embedding * first % self.window_frames
            out[:] = self._ring[row:row + self.window_frames].reshape(-1)
        self.window += 1
        self._need = self._need_samples()
        if self.gate is not None:
            self._forget_mel()
        return first * EMB_STRIDE

    def finish(self) -> None:
        """End of stream: windows that start inside it run on into silence."""
        if self.total_samples is None:
            self.total_samples = self.samples_in


class EmbeddingRowsFrontEnd(EmbeddingFrontEnd):
    """The speech_embedding network stopped before its last five convolutions: part 3a's
    rows (96 channels x 2 frequency bins, every 40 ms), WINDOW_ROWS of them under a window's
    22 embeddings. A model on this front end carries the network's rest itself, so it may
    fine-tune it (kws_train.nets.EmbeddingTail); the stream, the window grid and the
    samples each window hears are EmbeddingFrontEnd's."""

    name = "oww-embedding-rows-v1"
    tail_parts = (EMBEDDING_PARTS[2], EMBEDDING_PARTS[3])  # the network's rest, from part 3a's output on
    rows_part = ROWS_PART
    stops_at_rows = True
    row_dim = ROW_DIM
    rows_per_embedding = ROWS_PER_EMBEDDING
    feature_size = WINDOW_ROWS * ROW_DIM  # 9984
    feature_shape = (WINDOW_ROWS, ROW_DIM)  # time-major; a row is channel-major (96, 2)
    window_frames = WINDOW_ROWS
    frame_rate = EMBEDDINGS_PER_SECOND * ROWS_PER_EMBEDDING
    tail = WINDOW_ROWS - 1
    reach = -(-(WINDOW_SAMPLES - WINDOW_ROWS * EMB_HOP // ROWS_PER_EMBEDDING) // (EMB_HOP // ROWS_PER_EMBEDDING))

    @staticmethod
    def load() -> None:
        shared_nets().rows_parts

    @staticmethod
    def network_bytes(name: str) -> bytes:
        """A packaged network file, checked (a model on this front end carries the tail's copy)."""
        return _checked_bytes(name)


class _MelStream:
    """The mel front end's stream: mel frames are its outputs, one per frame pushed."""

    def reset(self) -> None:
        pass

    @staticmethod
    def push(mel: np.ndarray) -> np.ndarray:
        return mel


class MelFrontEnd(EmbeddingFrontEnd):
    """openWakeWord's mel frames themselves (32 bands every 10 ms, x/10 + 2), WINDOW_MEL of
    them: the frames under the embedding front end's window, on its grid, so a model on them
    scores the windows an embedding model scores. A model on this front end carries its own
    network over the mel frames (kws_train.nets.MelStudent), so the front end costs the mel
    spectrogram alone. The speech gate works as on the embedding front ends."""

    name = "oww-mel-v1"
    row_dim = N_BANDS
    rows_per_embedding = EMB_STRIDE  # mel frames per embedding step: the window grid is the embeddings'
    feature_size = WINDOW_MEL * N_BANDS  # 7808
    feature_shape = (WINDOW_MEL, N_BANDS)  # time-major
    mask_frames, mask_dims = 3 * EMB_STRIDE, 3  # three embedding steps' frames, 3 of the 32 bands
    window_frames = WINDOW_MEL
    frame_rate = float(FRAMES_PER_SECOND)
    tail = WINDOW_MEL - 1
    reach = -(-(WINDOW_SAMPLES - WINDOW_MEL * MEL_HOP) // MEL_HOP)  # a frame hears 512 samples, 160 past its slot

    @staticmethod
    def load() -> None:
        shared_nets()

    @staticmethod
    def band_hz() -> np.ndarray:
        """Each band's centre frequency in Hz (its filter's weighted mean): the features'
        frequency axis, along which training may warp them (kws_train.data.BandWarp)."""
        filters = _checked_array(MEL_WEIGHTS[1]).astype(np.float64)  # (257, 32)
        hz = np.arange(filters.shape[0]) * (SAMPLE_RATE / 2) / (filters.shape[0] - 1)
        return hz @ filters / filters.sum(axis=0)

    def _new_stream(self):
        return _MelStream()

    @classmethod
    def file_frames(cls, signal: np.ndarray) -> np.ndarray:
        """(32, n) mel frames of a whole signal and the silence after it, as a stream computes them."""
        return np.ascontiguousarray(shared_nets().mel(_padded(signal)).T)
