"""The runtime's resampler: band-limited, chunk-invariant, delay-free; and the daemon's imports."""
import subprocess
import sys

import numpy as np
import pytest

from kws_stream.resample import Resampler, resample

RATES = [8000, 11025, 22050, 24000, 32000, 44100, 48000, 12345]


def tone(freq, rate, seconds=1.0, to=None):
    t = np.arange(int(seconds * rate)) / rate if to is None else np.arange(to) / rate
    return np.sin(2 * np.pi * freq * t)


def level_db(x):
    return 10 * np.log10(np.mean(x ** 2) / 0.5 + 1e-30)


@pytest.mark.parametrize("rate", RATES)
def test_chunks_of_any_size_give_the_whole_signal_and_its_length(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate)
    whole = resample(x, rate, 16000)
    assert whole.size == -(-x.size * 16000 // rate)
    r, parts, i = Resampler(rate, 16000), [], 0
    for size in list(rng.integers(0, 3000, 20)) + [1, 1, 7]:
        parts.append(r(x[i:i + size]))
        i += size
    parts.append(r(x[i:], last=True))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 12345])
@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tones_in_the_passband_arrive_unchanged_and_on_time(rate, freq):
    y = resample(tone(freq, rate, 2.0), rate, 16000)
    want = np.sin(2 * np.pi * freq * np.arange(y.size) / 16000)  # output n belongs to time n / 16000
    inner = slice(1600, y.size - 1600)  # away from the zeros before and after the signal
    assert level_db(y[inner] - want[inner]) < -80


@pytest.mark.parametrize("freq", [8600.0, 9000.0, 12000.0, 20000.0])
def test_tones_above_the_new_nyquist_do_not_fold_back(freq):
    y = resample(tone(freq, 48000, 2.0), 48000, 16000)
    assert level_db(y[1600:-1600]) < -85


def test_the_band_edge_of_48_to_16_khz():
    gains = [level_db(resample(tone(f, 48000, 2.0), 48000, 16000)[1600:-1600]) for f in (7000.0, 7300.0, 7500.0)]
    assert gains[0] > -0.05 and gains[1] > -0.5 and -3 < gains[2] < -1


def test_upsampling_keeps_a_constant_rejects_images_and_the_same_rate_passes_through():
    y = resample(np.full(8000, 0.25), 8000, 16000)
    np.testing.assert_allclose(y[200:-200], 0.25, atol=1e-9)
    up = resample(tone(3000.0, 8000, 2.0), 8000, 16000)  # the image of 3 kHz would sit at 5 kHz
    spectrum = np.abs(np.fft.rfft(up[1600:-1600] * np.hanning(up.size - 3200)))
    freqs = np.fft.rfftfreq(up.size - 3200, 1 / 16000)
    assert spectrum[np.abs(freqs - 5000) < 50].max() < 1e-4 * spectrum.max()
    x = np.arange(5.0)
    assert Resampler(16000, 16000)(x) is x
    np.testing.assert_array_equal(resample(np.arange(5, dtype=np.int16), 16000, 16000), x)  # always float64


def test_bad_calls_say_what_is_wrong():
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 16000)
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        Resampler(48000, 16000)(np.zeros((10, 2)))
    r = Resampler(48000, 16000)
    r(np.zeros(100), last=True)
    with pytest.raises(ValueError, match="ended"):
        r(np.zeros(100))
    r.reset()
    assert r(np.ones(48000), last=True).size == 16000


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_every_way_of_computing_gives_the_same_samples(rate):
    """One call (a loop over phases, or correlations for small ratios) against 10 ms
    chunks (each output gathered with its own phase)."""
    x = np.random.default_rng(1).standard_normal(rate // 2)
    r, i, parts, hop = Resampler(rate, 16000), 0, [], rate // 100
    while i < x.size:
        parts.append(r(x[i:i + hop], last=i + hop >= x.size))
        i += hop
    np.testing.assert_allclose(np.concatenate(parts), resample(x, rate, 16000), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rate", [16001, 96001, 47999])
def test_rates_with_many_phases_interpolate_them_accurately_in_bounded_memory(rate):
    y = resample(tone(1000.0, rate, 1.0), rate, 16000)
    want = np.sin(2 * np.pi * 1000.0 * np.arange(y.size) / 16000)
    assert level_db(y[1600:-1600] - want[1600:-1600]) < -80


def test_the_live_daemon_loads_no_file_decoder_and_no_other_resampler():
    code = ("import sys, kws_stream.cli, kws_stream.service; "
            "print(sorted(m for m in ('soundfile', 'soxr', 'torch', 'zmq.auth.thread') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
