"""The seed notebook's procedure, written plainly from SEED.md and independent of kws_stream.

A per-frame FFT loop, a per-filter loop for the mel bank, and a per-window loop of
feature extraction and model calls, as the notebook runs it. The parity tests compare
kws_stream against it, and benchmarks/bench_throughput.py times it.
"""
from __future__ import annotations

import math

import numpy as np


def seed_mel_filterbank(sr=16000, n_fft=512, n_mels=48, f_min=50.0, f_max=7800.0):
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_lo = 1127.0 * math.log(1 + f_min / 700.0)
    mel_hi = 1127.0 * math.log(1 + f_max / 700.0)
    mels = np.linspace(mel_lo, mel_hi, n_mels + 2)
    hz = [700.0 * (math.exp(m / 1127.0) - 1) for m in mels]
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        f_l, f_c, f_r = hz[i], hz[i + 1], hz[i + 2]
        for k, f in enumerate(freqs):
            if f_l <= f <= f_c:
                fb[i, k] = (f - f_l) / (f_c - f_l)
            if f_c <= f <= f_r:
                fb[i, k] = (f_r - f) / (f_r - f_c)
    df = freqs[1] - freqs[0]
    for i in range(n_mels):
        area = fb[i].sum() * df / 2
        fb[i] *= 2 / max(area, 1e-12)
    return fb


def seed_log_mel(signal, sr=16000, window_ms=25.0, hop_ms=10.0, n_mels=48, f_min=50.0, f_max=7800.0, eps=1e-12):
    L = int(sr * window_ms / 1000)
    H = int(sr * hop_ms / 1000)
    n_fft = 2 ** (int(math.floor(math.log2(L))) + 1)
    n = len(signal)
    n_frames = max(1, math.ceil((n - L) / H) + 1)
    padded = np.zeros((n_frames - 1) * H + L)
    padded[:n] = signal
    window = np.array([(1 - math.cos(2 * math.pi * m / (L - 1))) / 2 for m in range(L)])
    fb = seed_mel_filterbank(sr, n_fft, n_mels, f_min, f_max)
    out = np.zeros((n_mels, n_frames))
    for t in range(n_frames):
        frame = padded[t * H:t * H + L] * window
        power = np.abs(np.fft.rfft(frame, n_fft)) ** 2 / n_fft
        out[:, t] = np.log(fb @ power + eps)
    return out


def seed_window_mel(mel, start, target):
    pad_value = float(mel.min())
    end = start + target
    if end > mel.shape[1]:
        mel = np.pad(mel, ((0, 0), (0, end - mel.shape[1])), mode="constant", constant_values=pad_value)
    return mel[:, start:end]


def seed_deltas(m):
    d = np.zeros_like(m)
    d[:, 1:] = m[:, 1:] - m[:, :-1]
    return d


def seed_pool_time(x, out_t):
    t = x.shape[-1]
    edges = np.linspace(0, t, out_t + 1).astype(int)
    return np.concatenate([x[..., edges[i]:edges[i + 1]].mean(axis=-1, keepdims=True) for i in range(out_t)], axis=-1)


def seed_features(mel):
    d1 = seed_deltas(mel)
    d2 = seed_deltas(d1)
    x = seed_pool_time(np.stack([mel, d1, d2], axis=0), 50)
    mu = x.mean(axis=-1, keepdims=True)
    sigma = x.std(axis=-1, keepdims=True) + 1e-5
    return ((x - mu) / sigma).reshape(-1).astype(np.float32)


def seed_predict(signal, score_one, segment_seconds=2.5, hop_seconds=1.0):
    """The notebook's predict_file on a 16 kHz signal: every window probability, in order.

    `score_one(features (1, 7200) float32) -> probability` stands in for the torch model.
    """
    mel = seed_log_mel(signal)
    target = int(round(segment_seconds * 100))
    hop = max(1, int(round(hop_seconds * 100)))
    probs, start = [], 0
    while start < mel.shape[1]:
        feat = seed_features(seed_window_mel(mel, start, target))
        probs.append(float(score_one(feat[None, :])))
        if start + hop >= mel.shape[1] and start != 0:
            break
        start += hop
    return probs
