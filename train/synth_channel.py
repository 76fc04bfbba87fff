"""Telephone channels and acoustic scenes for synthetic calls.

Everything here works on float64 mono 16 kHz arrays and keeps time alignment, so the
word bounds of a call stay exact through every effect.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from kws_stream.frontends import SAMPLE_RATE
from kws_stream import resample as resample_module
from kws_stream.resample import resample

from .synth_tts import CACHE, save_atomically

SHARED_NOISE = Path(os.environ.get("KWS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "noise"
PKGS = CACHE / "pkgs"  # Debian packages unpacked by `apt-get download` + `dpkg-deb -x`
NARROW_RATE = 8000
CODECS = ("pcm", "ulaw", "alaw", "gsm", "opus-lowrate")  # the first five; pcm is wideband only
# More narrowband codecs through Debian's ffmpeg: (encoder arguments, container, bitrates to draw from).
FFMPEG_CODECS = {
    "g726": (["-c:a", "g726"], "wav", ("16k", "24k", "32k", "40k")),
    "ima-adpcm": (["-c:a", "adpcm_ima_wav"], "nut", ("",)),
    "speex": (["-c:a", "libspeex"], "nut", ("6k", "8k", "11k", "15k")),
    "g723": (["-c:a", "g723_1"], "nut", ("6.3k",)),
    "codec2": (["-c:a", "libcodec2"], "codec2", ("3200", "2400", "1600")),
}
NARROW_CODECS = CODECS[1:] + ("g726", "ima-adpcm", "speex")  # drawn for narrowband calls in training
HELDOUT_CODECS = ("g723", "codec2")  # never in training: they measure codec generalisation


# Debian packages with real recordings and music (DATA.md), fetched into the cache on first use.
SOURCE_PACKAGES = ("ktuberling-data", "klettres-data", "tuxpaint-stamps-default", "hedgewars-data",
                   "asterisk-core-sounds-en-wav", "asterisk-core-sounds-es-wav", "asterisk-core-sounds-fr-wav",
                   "asterisk-core-sounds-it-wav", "asterisk-moh-opsound-wav")


def fetch_sources(packages=SOURCE_PACKAGES) -> list[str]:
    """`apt-get download` and unpack the packages not in the cache yet; return the ones
    that could not be fetched (the corpus is then made without them)."""
    missing = []
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        stamp = PKGS / ".fetched" / pkg
        if stamp.exists():
            continue
        try:
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True, timeout=900)
            for deb in sorted(debs.glob(f"{pkg}_*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(PKGS)], check=True, capture_output=True)
                deb.unlink()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError):
            missing.append(pkg)
            continue
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    sound_files.cache_clear()
    return missing


def load_16k(path: str | Path, max_seconds: float = 120.0) -> np.ndarray:
    with sf.SoundFile(str(path)) as f:
        x = f.read(int(max_seconds * f.samplerate), dtype="float64", always_2d=True).mean(axis=1)
        rate = f.samplerate
    return resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x


CLIP_CACHE_VERSION = 1  # raise when load_16k changes what it makes


@lru_cache(maxsize=1)
def _clip_recipe() -> str:
    """What a cached recording depends on besides the file: load_16k, the resampler's source,
    the decoder and numpy."""
    resampler = hashlib.sha256(Path(resample_module.__file__).read_bytes()).hexdigest()
    return f"{CLIP_CACHE_VERSION}|{resampler}|{sf.__libsndfile_version__}|{np.__version__}"


def cached_16k(path: str) -> np.ndarray:
    """`load_16k(path)`, kept on disk under the cache (read-only, memory-mapped): decoding and
    resampling a long recording costs a third of a second, and a corpus draws the same few
    hundred recordings thousands of times. The key holds the file's size and time and
    _clip_recipe(), so a changed file, resampler or decoder is read anew; the values are
    load_16k's to the bit."""
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{_clip_recipe()}".encode()).hexdigest()
    cached = CACHE / "clips" / key[:2] / (key + ".npy")
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(cached, load_16k(path))
    return np.load(cached, mmap_mode="r")


@lru_cache(maxsize=None)
def sound_files(kind: str) -> tuple[str, ...]:
    """Third-party recordings by kind; an empty tuple when a source is not fetched."""
    patterns = {
        "ambient": [str(SHARED_NOISE / "ambient" / "*.ogg"), str(SHARED_NOISE / "background" / "*.flac")],
        "music": [str(PKGS / "usr/share/asterisk/moh/*.wav"), str(PKGS / "usr/share/games/hedgewars/Data/Music/*.ogg")],
        "foreign": [str(PKGS / f"usr/share/asterisk/sounds/{lang}_*/**/*.wav") for lang in ("en", "es", "fr", "it")],
        "russian": [str(PKGS / "usr/share/tuxpaint/stamps/**/*_desc_ru.ogg"),
                    str(PKGS / "usr/share/ktuberling/sounds/ru/*.ogg"),
                    str(PKGS / "usr/share/klettres/ru/**/*.ogg"),
                    str(PKGS / "usr/share/games/hedgewars/Data/Sounds/voices/Default_ru/*.ogg")],
        "ir": [str(SHARED_NOISE / "ir" / "*.wav")],
    }[kind]
    return tuple(sorted(f for p in patterns for f in glob.glob(p, recursive=True)))


def excerpt(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, str] | None:
    """n samples of a random recording of `kind`, looped if it is short."""
    files = sound_files(kind)
    if not files:
        return None
    path = files[rng.integers(len(files))]
    x = cached_16k(path)
    if x.size == 0:
        return None
    if x.size < n:
        x = np.tile(x, n // x.size + 1)
    start = rng.integers(x.size - n + 1)
    return x[start:start + n].copy(), Path(path).name


REAL_SPEECH_SOURCES = ("/tuxpaint/", "/ktuberling/")  # sentences and words; klettres' letters are too short
FRAME = SAMPLE_RATE // 50  # 20 ms
SILENT_LEVEL = 1e-4  # a speech level below this is no speech


def real_speech_files(half: str) -> tuple[str, ...]:
    """Real Russian speech to put around a synthetic phrase: the spoken tuxpaint
    descriptions and ktuberling words; `train` is three files of every four (in sorted
    order), `heldout` the fourth, so a validation corpus can use recordings training never
    puts around a phrase (the speakers are the same one or two, and training's calls of
    real speech alone draw from every file)."""
    files = [f for f in sound_files("russian") if any(s in f for s in REAL_SPEECH_SOURCES)]
    return tuple(f for i, f in enumerate(files) if (i % 4 == 3) == (half == "heldout"))


def check_real_speech() -> None:
    """Both sources must be there: the halves are cut by position, so a missing one would move them."""
    files = sound_files("russian")
    missing = [s.strip("/") for s in REAL_SPEECH_SOURCES if not any(s in f for f in files)]
    if missing:
        raise ValueError(f"--real-context needs the Russian recordings of {', '.join(missing)} "
                         "(fetched with apt-get download; run without --no-fetch)")


def real_clip(path: str) -> np.ndarray:
    """A recording without its leading and trailing silence (20 ms frames 40 dB below its loudest)."""
    x = cached_16k(path)
    n = x.size // FRAME
    energy = (x[:n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max(initial=0.0) * 1e-4)  # none when silent or shorter than a frame
    if loud.size == 0:
        return x
    return x[loud[0] * FRAME:(loud[-1] + 1) * FRAME]


def speech_level(x: np.ndarray) -> float:
    """RMS over the louder half of 20 ms frames: a level that pauses do not dilute."""
    if x.size == 0:
        return 0.0
    n = max(x.size // FRAME, 1)
    energy = (np.resize(x, n * FRAME).reshape(n, FRAME) ** 2).mean(axis=1)
    return float(np.sqrt(np.mean(np.sort(energy)[n // 2:])) + 1e-9)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return x / (np.std(x) + 1e-12)


def tones(rng: np.random.Generator, n: int) -> tuple[np.ndarray, str]:
    """Russian ringback (425 Hz, 0.8 s on 3.2 s off), busy (425 Hz, 0.4/0.4) or DTMF digits."""
    t = np.arange(n) / SAMPLE_RATE
    kind = ("ringback", "busy", "dtmf")[rng.integers(3)]
    if kind == "dtmf":
        lows, highs = (697, 770, 852, 941), (1209, 1336, 1477)
        x = np.zeros(n)
        pos = int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
        while pos < n:
            length = int(rng.uniform(0.07, 0.2) * SAMPLE_RATE)
            seg = t[:min(length, n - pos)]
            x[pos:pos + seg.size] = np.sin(2 * np.pi * rng.choice(lows) * seg) + np.sin(2 * np.pi * rng.choice(highs) * seg)
            pos += length + int(rng.uniform(0.05, 0.6) * SAMPLE_RATE)
        return 0.3 * x, kind
    on, off = (0.8, 3.2) if kind == "ringback" else (0.4, 0.4)
    gate = (t % (on + off)) < on
    return 0.3 * np.sin(2 * np.pi * 425 * t) * gate, kind


def scale_to_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    active = speech[np.abs(speech) > 0.01 * (np.abs(speech).max() + 1e-12)]
    p_s = np.mean(active ** 2) if active.size else 1e-6
    p_n = np.mean(noise ** 2) + 1e-12
    return noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))


@lru_cache(maxsize=1)
def room_irs() -> tuple[np.ndarray, ...]:
    """The measured impulse responses plus a fixed set simulated with pyroomacoustics,
    each aligned so that its direct path is at sample 0 (word bounds do not move)."""
    irs = [load_16k(p, 2.0) for p in sound_files("ir")]
    try:
        import pyroomacoustics as pra
    except ImportError:
        pra = None
    if pra is not None:
        rng = np.random.default_rng(1234)
        for _ in range(12):
            dims = rng.uniform([3, 3, 2.4], [8, 7, 3.5])
            absorption = rng.uniform(0.1, 0.6)
            room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=12)
            room.add_source(rng.uniform([0.5, 0.5, 1.0], dims - 0.5))
            room.add_microphone(rng.uniform([0.5, 0.5, 1.0], dims - 0.5))
            room.compute_rir()
            irs.append(np.asarray(room.rir[0][0], dtype=np.float64))
    out = []
    for ir in irs:
        ir = ir[int(np.argmax(np.abs(ir))):][:SAMPLE_RATE]
        out.append(ir / (np.abs(ir).max() + 1e-12))
    return tuple(out)


def reverberate(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    n = x.size + ir.size - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:x.size]
    return y * (np.abs(x).max() / (np.abs(y).max() + 1e-12))


def mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    y = np.round(np.clip(y, -1, 1) * 127) / 127
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def a_law(x: np.ndarray, a: float = 87.6) -> np.ndarray:
    ax = np.abs(np.clip(x, -1, 1))
    y = np.where(ax < 1 / a, a * ax / (1 + np.log(a)), (1 + np.log(np.maximum(a * ax, 1e-12))) / (1 + np.log(a)))
    y = np.round(y * 127) / 127
    inv = np.where(y < 1 / (1 + np.log(a)), y * (1 + np.log(a)) / a, np.exp(y * (1 + np.log(a)) - 1) / a)
    return np.sign(x) * inv


def _through_sox(x: np.ndarray, rate: int, fmt: list[str]) -> np.ndarray:
    """Encode and decode with sox (GSM); returns x unchanged length."""
    raw = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    common = ["-t", "raw", "-r", str(rate), "-e", "signed", "-b", "16", "-c", "1"]
    enc = subprocess.run(["sox", *common, "-", *fmt, "-"], input=raw, capture_output=True, check=True).stdout
    dec = subprocess.run(["sox", *fmt, "-", *common, "-"], input=enc, capture_output=True, check=True).stdout
    y = np.frombuffer(dec, dtype="<i2").astype(np.float64) / 32767
    return np.pad(y, (0, max(0, x.size - y.size)))[:x.size]


OPUS_SERIAL = 0x6B7773  # a fixed Ogg serial number: the same call gives the same bytes


def opus_bytes(x: np.ndarray, rate: int, bitrate_kbps: float | None = None, complexity: int = 5) -> bytes:
    """Ogg/Opus of x with opusenc (libsndfile's encoder is ten times slower here)."""
    raw = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    cmd = ["opusenc", "--quiet", "--raw", "--raw-rate", str(rate), "--raw-chan", "1", "--raw-bits", "16",
           "--serial", str(OPUS_SERIAL), "--comp", str(complexity)]
    if bitrate_kbps is not None:
        cmd += ["--bitrate", f"{bitrate_kbps:.1f}"]
    return subprocess.run(cmd + ["-", "-"], input=raw, capture_output=True, check=True).stdout


def _through_opus(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    data = opus_bytes(x, rate, bitrate_kbps=float(rng.uniform(6, 12)))
    y, got_rate = sf.read(io.BytesIO(data), dtype="float64")
    if got_rate != rate:
        y = resample(y, got_rate, rate)
    return np.pad(y, (0, max(0, x.size - y.size)))[:x.size]


def telephone(x: np.ndarray, codec: str, rng: np.random.Generator) -> np.ndarray:
    """Down to 8 kHz with a 300-3400 Hz band, through a codec, and back up to 16 kHz."""
    y = resample(x, SAMPLE_RATE, NARROW_RATE)
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(y.size, 1 / NARROW_RATE)
    low = rng.uniform(200, 400)
    spec *= 1 / (1 + (low / np.maximum(f, 1)) ** 4)  # gentle high-pass
    y = np.fft.irfft(spec, y.size)
    y = encode(y, codec, NARROW_RATE, rng)
    return resample(y, NARROW_RATE, SAMPLE_RATE)[:x.size]


def encode(y: np.ndarray, codec: str, rate: int, rng: np.random.Generator) -> np.ndarray:
    if codec == "ulaw":
        return mu_law(y)
    if codec == "alaw":
        return a_law(y)
    if codec == "gsm":
        return _through_sox(y, NARROW_RATE, ["-t", "gsm", "-r", str(NARROW_RATE), "-c", "1"]) if rate == NARROW_RATE else y
    if codec == "opus-lowrate":
        return _through_opus(y, rate, rng)
    if codec in FFMPEG_CODECS:
        return _through_ffmpeg(y, codec, rng) if rate == NARROW_RATE else y
    return y


def _through_ffmpeg(y: np.ndarray, codec: str, rng: np.random.Generator) -> np.ndarray:
    """Encode and decode 8 kHz audio with ffmpeg; the codec's delay is measured by
    cross-correlation and removed, so word bounds stay put."""
    args, fmt, rates = FFMPEG_CODECS[codec]
    rate = rates[rng.integers(len(rates))]
    if rate:
        args = args + (["-mode", rate] if codec == "codec2" else ["-b:a", rate])
    raw = (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()
    pcm = ["-f", "s16le", "-ar", str(NARROW_RATE), "-ac", "1"]
    try:
        enc = subprocess.run(["ffmpeg", "-v", "error", *pcm, "-i", "-", *args, "-f", fmt, "-"], input=raw,
                             capture_output=True, check=True).stdout
        dec = subprocess.run(["ffmpeg", "-v", "error", "-f", fmt, "-i", "-", *pcm, "-"], input=enc,
                             capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"ffmpeg {codec}: {e.stderr.decode(errors='replace').strip()[-200:]}") from e
    z = np.frombuffer(dec, dtype="<i2").astype(np.float64) / 32767
    z = z[codec_delay(y, z):]
    return np.pad(z, (0, max(0, y.size - z.size)))[:y.size]


def codec_delay(x: np.ndarray, y: np.ndarray, max_lag: int = NARROW_RATE // 10) -> int:
    """Samples by which y lags x (0 to max_lag), by FFT cross-correlation."""
    n = min(x.size, y.size)
    size = 1 << (2 * n - 1).bit_length()
    c = np.fft.irfft(np.conj(np.fft.rfft(x[:n], size)) * np.fft.rfft(y[:n], size), size)
    return int(np.argmax(c[:max_lag + 1]))


def level_jumps(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three sudden gain changes of up to +-12 dB, as AGC and line switches make."""
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(x.size))
        x[at:] *= 10 ** (rng.uniform(-12, 12) / 20)
    return x


def packet_loss(x: np.ndarray, rng: np.random.Generator, rate: float, conceal: bool = False) -> np.ndarray:
    """Lose random 20 ms packets: zeros, or (conceal) the previous packet repeated and
    faded, as simple packet-loss concealment does."""
    packet = SAMPLE_RATE // 50
    lost = np.flatnonzero(rng.random(x.size // packet) < rate)
    fade = np.linspace(1.0, 0.3, packet)
    for i in lost:
        seg = slice(i * packet, (i + 1) * packet)
        x[seg] = x[(i - 1) * packet:i * packet] * fade if conceal and i > 0 else 0.0
    return x
