"""The seed's log-mel front end: a batch function and an incremental extractor.

Every number here is the seed notebook's (see SEED.md). The sample rate, hop and window
length are shared by all front ends and live in `base`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .base import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, WINDOW_HOPS

WINDOW_MS = 25.0
N_MELS = 48
F_MIN = 50.0
F_MAX = 7800.0
LOG_EPS = 1e-12
NORM_EPS = 1e-5
POOL_BINS = 50
N_CHANNELS = 3  # mel, delta, delta-delta

FRAME_LENGTH = int(SAMPLE_RATE * WINDOW_MS / 1000)  # 400 samples
N_FFT = 2 ** (int(math.floor(math.log2(FRAME_LENGTH))) + 1)  # 512
N_BINS = N_FFT // 2 + 1  # 257
WINDOW_FRAMES = WINDOW_HOPS  # 250 mel frames, one per hop
FEATURE_SHAPE = (N_CHANNELS, N_MELS, POOL_BINS)
FEATURE_SIZE = N_CHANNELS * N_MELS * POOL_BINS  # 7200


def hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (np.exp(np.asarray(m, dtype=np.float64) / 1127.0) - 1.0)


@lru_cache(maxsize=None)
def hann_window(length: int = FRAME_LENGTH) -> np.ndarray:
    """Symmetric Hann window, w[m] = (1 - cos(2 pi m / (L - 1))) / 2."""
    m = np.arange(length, dtype=np.float64)
    w = (1.0 - np.cos(2.0 * np.pi * m / (length - 1))) / 2.0
    w.flags.writeable = False
    return w


@lru_cache(maxsize=None)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) HTK-scale triangles with the seed's area normalisation."""
    freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bank = np.zeros((n_mels, freqs.size), dtype=np.float64)
    for i in range(n_mels):
        f_l, f_c, f_r = edges[i], edges[i + 1], edges[i + 2]
        left = (freqs >= f_l) & (freqs <= f_c)
        right = (freqs >= f_c) & (freqs <= f_r)
        bank[i, left] = (freqs[left] - f_l) / (f_c - f_l)
        bank[i, right] = (f_r - freqs[right]) / (f_r - f_c)
    df = sample_rate / n_fft
    area = bank.sum(axis=1) * df / 2.0
    bank *= (2.0 / np.maximum(area, 1e-12))[:, None]
    bank.flags.writeable = False
    return bank


def n_frames_for(n_samples: int) -> int:
    """ceil((N - 400) / 160) + 1 frames; a signal shorter than one frame still gives one."""
    return max(1, -(-(n_samples - FRAME_LENGTH) // HOP_LENGTH) + 1)


class MelScratch:
    """Preallocated work arrays for turning up to `capacity` frames into log-mel."""

    def __init__(self, capacity: int):
        self.padded = np.zeros((capacity, N_FFT), dtype=np.float64)  # windowed frame + zero tail
        self.spectrum = np.empty((capacity, N_BINS), dtype=np.complex128)
        self.power = np.empty((capacity, N_BINS), dtype=np.float64)
        self.imag = np.empty((capacity, N_BINS), dtype=np.float64)


def frames_to_mel(frames: np.ndarray, out: np.ndarray, scratch: MelScratch | None = None) -> np.ndarray:
    """Log-mel of (k, FRAME_LENGTH) frames, written into out[:, :k] of shape (N_MELS, >= k)."""
    k = frames.shape[0]
    scratch = scratch or MelScratch(k)
    padded, spectrum = scratch.padded[:k], scratch.spectrum[:k]
    power, imag = scratch.power[:k], scratch.imag[:k]
    np.multiply(frames, hann_window(), out=padded[:, :FRAME_LENGTH])
    np.fft.rfft(padded, axis=-1, out=spectrum)
    np.square(spectrum.real, out=power)  # |X|^2 = re^2 + im^2
    np.square(spectrum.imag, out=imag)
    power += imag
    power /= N_FFT
    dst = out[:, :k]
    np.matmul(mel_filterbank(), power.T, out=dst)
    dst += LOG_EPS
    np.log(dst, out=dst)
    return dst


def log_mel(signal: np.ndarray) -> np.ndarray:
    """The seed's log-mel of a whole 16 kHz mono signal: (N_MELS, n_frames) float64."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"log_mel expects mono audio of shape (n,), got {signal.shape}")
    n_frames = n_frames_for(signal.size)
    padded = np.zeros((n_frames - 1) * HOP_LENGTH + FRAME_LENGTH, dtype=np.float64)
    padded[:signal.size] = signal
    frames = np.lib.stride_tricks.sliding_window_view(padded, FRAME_LENGTH)[::HOP_LENGTH]
    out = np.empty((N_MELS, n_frames), dtype=np.float64)
    return frames_to_mel(frames, out)


def window_at(mel: np.ndarray, start: int, frames: int = WINDOW_FRAMES, pad_value: float | None = None) -> np.ndarray:
    """The seed's window_mel: `frames` columns from `start`, padded with mel.min() past the end."""
    window = mel[:, start:start + frames]
    if window.shape[1] == frames:
        return window
    out = np.full((mel.shape[0], frames), mel.min() if pad_value is None else pad_value, dtype=mel.dtype)
    out[:, :window.shape[1]] = window
    return out


class WindowFeatures:
    """Model input from a (N_MELS, WINDOW_FRAMES) log-mel window, with reused buffers.

    Deltas inside the window, average pooling into POOL_BINS bins, per-row
    normalisation, flattened to FEATURE_SIZE float32 values (SEED.md). The pooled
    deltas are computed without materialising them: a bin [a, b) of d1 sums to
    m[b-1] - m[a-1] (to m[b-1] - m[0] for a = 0, as d1[0] = 0), and of d2 to
    d1[b-1] - d1[a-1], so only the mel columns around the bin edges are needed.
    """

    def __init__(self, window_frames: int = WINDOW_FRAMES, pool_bins: int = POOL_BINS):
        self.window_frames = window_frames
        edges = np.linspace(0, window_frames, pool_bins + 1).astype(int)
        if np.any(np.diff(edges) < 1):
            raise ValueError(f"{pool_bins} bins do not fit {window_frames} frames")
        self._starts = edges[:-1]
        self._counts = np.diff(edges).astype(np.float64)
        last, before = edges[1:] - 1, np.maximum(edges[:-1] - 1, 0)
        # Columns m[b-1], m[a-1], m[b-2], m[a-2], clipped at 0 so that d1[0] comes out as 0.
        self._cols = np.concatenate([last, before, np.maximum(last - 1, 0), np.maximum(before - 1, 0)])
        self._edge = np.empty((N_MELS, 4, pool_bins), dtype=np.float64)
        self._pooled = np.empty((N_CHANNELS, N_MELS, pool_bins), dtype=np.float64)
        self._square = np.empty_like(self._pooled)
        self._mu = np.empty((N_CHANNELS, N_MELS, 1), dtype=np.float64)
        self._sigma = np.empty((N_CHANNELS, N_MELS, 1), dtype=np.float64)

    def __call__(self, mel_window: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the flattened features of mel_window into out (FEATURE_SIZE,) float32."""
        pooled, edge = self._pooled, self._edge
        np.add.reduceat(mel_window, self._starts, axis=-1, out=pooled[0])
        np.take(mel_window, self._cols, axis=1, out=edge.reshape(N_MELS, -1))
        last, before, last1, before1 = edge[:, 0], edge[:, 1], edge[:, 2], edge[:, 3]
        np.subtract(last, before, out=pooled[1])
        np.subtract(last, last1, out=pooled[2])  # d1[b-1]
        np.subtract(before, before1, out=last1)  # d1[a-1]
        pooled[2] -= last1
        pooled /= self._counts
        # (x - mean) / (std + eps), std as numpy computes it: sqrt(mean((x - mean)^2)).
        np.mean(pooled, axis=-1, keepdims=True, out=self._mu)
        pooled -= self._mu
        np.square(pooled, out=self._square)
        np.mean(self._square, axis=-1, keepdims=True, out=self._sigma)
        np.sqrt(self._sigma, out=self._sigma)
        self._sigma += NORM_EPS
        pooled /= self._sigma
        np.copyto(out.reshape(pooled.shape), pooled, casting="same_kind")
        return out


@lru_cache(maxsize=1)
def _shared_features() -> WindowFeatures:
    return WindowFeatures()


def _mask(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """SpecAugment on a (N_MELS, WINDOW_FRAMES) window: twice, up to 15 frames and up to 5
    mel bands set to the window's mean."""
    w = w.copy()
    fill = float(w.mean())
    for _ in range(2):
        t = int(rng.integers(0, 16))
        t0 = int(rng.integers(0, WINDOW_FRAMES - t + 1))
        w[:, t0:t0 + t] = fill
        f = int(rng.integers(0, 6))
        f0 = int(rng.integers(0, w.shape[0] - f + 1))
        w[f0:f0 + f, :] = fill
    return w


def window_features(mel_window: np.ndarray) -> np.ndarray:
    """Convenience form of WindowFeatures for one window: (FEATURE_SIZE,) float32."""
    out = np.empty(FEATURE_SIZE, dtype=np.float32)
    return WindowFeatures(mel_window.shape[1])(mel_window, out)


class SeedFrontEnd:
    """Incremental log-mel extractor and window builder for the seed's features.

    Audio arrives in chunks of any size. Mel frames are computed once, in batches, and
    a window is computed the moment its last sample arrives; the last WINDOW_FRAMES
    frames live in a preallocated ring. A window is due every `hop_frames` frames.
    `finish()` ends the stream the way the seed's batch procedure ends a file: the
    last frames are zero-padded and the windows running past the end are padded with
    the stream's minimum mel value.

    Use: `n = accept(audio)` consumes up to the next due window; while `ready()`,
    `take(out)` writes one window's features; feed `audio[n:]` next.
    """

    name = "seed-logmel-v1"
    feature_size = FEATURE_SIZE
    feature_shape = FEATURE_SHAPE
    sample_rate = SAMPLE_RATE
    hop_length = HOP_LENGTH
    window_frames = WINDOW_FRAMES
    window_samples = (WINDOW_FRAMES - 1) * HOP_LENGTH + FRAME_LENGTH
    frame_rate = FRAMES_PER_SECOND
    gates = False  # no speech gate: every window is scored
    skipped = False
    tail = WINDOW_FRAMES // 2  # the seed scores windows starting up to half a window before the end
    reach = 0

    @staticmethod
    def load() -> None:
        """Nothing to load: the seed's front end is plain numpy."""

    # -- batch view -------------------------------------------------------------

    @classmethod
    def file_frames(cls, signal: np.ndarray) -> np.ndarray:
        """(N_MELS, n_frames) float32 log-mel of a whole signal."""
        return log_mel(signal).astype(np.float32)

    @classmethod
    def features(cls, frames: np.ndarray, start: int, out: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """The window at `start` of file_frames' output, padded like the seed's window_mel;
        with rng, two time and two mel bands are masked first (SpecAugment)."""
        w = window_at(frames, start).astype(np.float64)
        if rng is not None:
            w = _mask(rng, w)
        return _shared_features()(w, out)

    @staticmethod
    def band_hz() -> None:
        return None  # pooled channels of mel bands, not frames of them

    @classmethod
    def start_limit(cls, n_frames: int) -> int:
        return n_frames  # every window starting inside the stream, padded past its end

    @classmethod
    def window_frame(cls, k: int, hop_frames: int) -> int:
        return k * hop_frames  # batch frames are the stream's 10 ms frames

    def __init__(self, hop_frames: int = FRAMES_PER_SECOND, batch_frames: int = FRAMES_PER_SECOND):
        if not 1 <= hop_frames <= WINDOW_FRAMES:
            raise ValueError(f"hop_frames must be in 1..{WINDOW_FRAMES}, got {hop_frames}")
        self.hop_frames = hop_frames
        batch = max(1, batch_frames)
        # PCM not yet turned into frames: the overlap of the next frame plus one batch.
        self._pcm = np.zeros(FRAME_LENGTH + (batch - 1) * HOP_LENGTH, dtype=np.float64)
        self._scratch = MelScratch(batch)
        self._fresh = np.empty((N_MELS, batch), dtype=np.float64)
        # Mirrored ring: frame f sits at columns f % W and f % W + W, so a window is a view.
        self._ring = np.empty((N_MELS, 2 * WINDOW_FRAMES), dtype=np.float64)
        self._padded = np.empty((N_MELS, WINDOW_FRAMES), dtype=np.float64)
        self._features = WindowFeatures()
        self.reset()

    def reset(self) -> None:
        self._n_pcm = 0  # valid samples at the start of self._pcm
        self.samples_in = 0  # samples accepted since reset
        self.frames = 0  # mel frames computed since reset
        self.next_window = 0  # start frame of the next window
        self.mel_min = math.inf
        self.total_frames = None  # known once the stream is finished

    # -- audio in ---------------------------------------------------------------

    def accept(self, audio: np.ndarray) -> int:
        """Take samples until the next window is complete; return how many were taken."""
        if self.total_frames is not None:
            raise RuntimeError("accept() after finish(); call reset() first")
        if self.store(audio):
            return audio.size
        taken = 0
        while taken < audio.size and not self._complete():
            # Absolute sample index at which the pending window's last frame is in.
            need = (self.next_window + WINDOW_FRAMES - 1) * HOP_LENGTH + FRAME_LENGTH
            have = self.frames * HOP_LENGTH + self._n_pcm
            n = min(self._pcm.size - self._n_pcm, audio.size - taken, need - have)
            self._pcm[self._n_pcm:self._n_pcm + n] = audio[taken:taken + n]
            self._n_pcm += n
            taken += n
            if self._n_pcm == self._pcm.size or have + n == need:
                self._compute_frames()
        self.samples_in += taken
        return taken

    def store(self, audio: np.ndarray) -> bool:
        """The common 10 ms hop: keep audio (True) only when the pending window still lacks
        samples after it and the buffer has room; else take nothing (False): accept() works."""
        n, held = audio.size, self._n_pcm
        due = (self.next_window + WINDOW_FRAMES - self.frames - 1) * HOP_LENGTH + FRAME_LENGTH - held
        if self.total_frames is not None or n >= due or held + n >= self._pcm.size:
            return False
        self._pcm[held:held + n] = audio
        self._n_pcm = held + n
        self.samples_in += n
        return True

    def _complete(self) -> bool:
        end = self.next_window + WINDOW_FRAMES
        if self.total_frames is not None:
            end = min(end, self.total_frames)
        return self.frames >= end

    def _compute_frames(self) -> None:
        """Turn the complete frames in the PCM buffer into ring columns, never
        running past the pending window's last frame (the ring holds one window)."""
        n = 0 if self._n_pcm < FRAME_LENGTH else (self._n_pcm - FRAME_LENGTH) // HOP_LENGTH + 1
        n = min(n, self.next_window + WINDOW_FRAMES - self.frames)
        if n <= 0:
            return
        span = (n - 1) * HOP_LENGTH + FRAME_LENGTH
        frames = np.lib.stride_tricks.sliding_window_view(self._pcm[:span], FRAME_LENGTH)[::HOP_LENGTH]
        self._store(frames_to_mel(frames, self._fresh, self._scratch))
        consumed = n * HOP_LENGTH
        left = self._n_pcm - consumed
        self._pcm[:left] = self._pcm[consumed:self._n_pcm]
        self._n_pcm = left

    def _store(self, mel: np.ndarray) -> None:
        k = mel.shape[1]
        self.mel_min = min(self.mel_min, float(mel.min()))
        col = self.frames % WINDOW_FRAMES
        first = min(k, WINDOW_FRAMES - col)
        for base in (0, WINDOW_FRAMES):
            self._ring[:, base + col:base + col + first] = mel[:, :first]
            self._ring[:, base:base + k - first] = mel[:, first:]
        self.frames += k

    # -- windows out ------------------------------------------------------------

    def ready(self) -> bool:
        """True when the next window can be taken."""
        if self.total_frames is not None:
            if self.next_window >= self.total_frames:
                return False
            self._compute_frames()
        return self._complete()

    def take(self, out: np.ndarray) -> int:
        """Write the next window's features into out; return the window's start frame."""
        start = self.next_window
        col = start % WINDOW_FRAMES
        window = self._ring[:, col:col + WINDOW_FRAMES]
        valid = self.frames - start
        if valid < WINDOW_FRAMES:  # only after finish(): pad like the seed's window_mel
            self._padded[:, :valid] = window[:, :valid]
            self._padded[:, valid:] = self.mel_min
            window = self._padded
        self._features(window, out)
        self.next_window += self.hop_frames
        return start

    def finish(self) -> None:
        """End of stream: zero-pad the last frame like the seed and allow padded windows."""
        if self.total_frames is not None:
            return
        self.total_frames = n_frames_for(self.samples_in) if self.samples_in else 0
        end = (self.total_frames - 1) * HOP_LENGTH + FRAME_LENGTH if self.samples_in else 0
        pad = end - (self.frames * HOP_LENGTH + self._n_pcm)
        if pad > 0:
            if self._n_pcm + pad > self._pcm.size:
                raise RuntimeError("finish() before the due windows were taken")
            self._pcm[self._n_pcm:self._n_pcm + pad] = 0.0
            self._n_pcm += pad
