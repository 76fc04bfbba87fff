"""Russian speech synthesis for the corpus: RHVoice, espeak-ng and Festival, with a cache.

Every utterance is described by an `Utterance` (engine, voice, settings, text); its audio
is synthesised once, trimmed of leading and trailing silence, resampled to 16 kHz and
cached under ~/.cache/kws-stream/tts, so later corpora reuse it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kws_stream.frontends import SAMPLE_RATE
from kws_stream.resample import resample

CACHE = Path(os.environ.get("KWS_CACHE", Path.home() / ".cache" / "kws-stream"))

# RHVoice: only these voices may be used. The others are kept for an independent evaluation.
RHVOICE_ALLOWED = ("aleksandr", "aleksandr-hq", "anna", "arina", "artemiy", "evgeniy-rus", "pavel", "timofey",
                   "umka", "victoria", "vitaliy", "vitaliy-ng")
RHVOICE_RESERVED = ("elena", "irina", "tatiana", "mikhail", "vsevolod", "yuriy")
# Voices held out of `train` for `--split val`. Variants of one speaker stay on one side.
RHVOICE_VAL = ("arina", "timofey", "evgeniy-rus")
RHVOICE_TRAIN = tuple(v for v in RHVOICE_ALLOWED if v not in RHVOICE_VAL)
# Leave-voices-out folds over the twelve allowed voices (`kws-train folds`); fold 0 is RHVOICE_VAL.
FOLDS = (RHVOICE_VAL, ("aleksandr", "aleksandr-hq", "anna"), ("artemiy", "pavel", "umka"),
         ("victoria", "vitaliy", "vitaliy-ng"))

ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
                   "+klatt", "+klatt2", "+klatt3", "+croak", "+whisper")
FESTIVAL_VOICE = "msu_ru_nsh_clunits"

ENGINES = ("rhvoice", "espeak", "festival")
PACKAGES = {  # engine -> (program, what to install)
    "rhvoice": ("RHVoice-test", "apt-get install -t bookworm-backports rhvoice rhvoice-russian"),
    "espeak": ("espeak-ng", "apt-get install espeak-ng"),
    "festival": ("text2wave", "apt-get install festival festvox-ru"),
}


class MissingTool(RuntimeError):
    """A system program the generator needs is not installed."""


@dataclass(frozen=True)
class Utterance:
    engine: str
    voice: str
    rate: int  # engine units: RHVoice/espeak percent or words per minute
    pitch: int
    text: str

    def key(self) -> str:
        raw = f"{self.engine}|{self.voice}|{self.rate}|{self.pitch}|{self.text}"
        return hashlib.sha1(raw.encode()).hexdigest()


def check_engines(engines) -> None:
    for engine in engines:
        program, install = PACKAGES[engine]
        if shutil.which(program) is None:
            raise MissingTool(f"{engine}: {program} not found; install it with: {install}")


TTS_TIMEOUT = 120  # seconds for one utterance; a run that stalls (a paused or starved host) is tried once more


def _run(cmd: list[str], text: str, out: Path) -> None:
    try:
        for attempt in (1, 2):
            try:
                subprocess.run(cmd, input=text.encode(), check=True, capture_output=True, timeout=TTS_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                if attempt == 2:
                    raise RuntimeError(f"{cmd[0]} took over {TTS_TIMEOUT} s twice for {text!r}") from None
    except subprocess.CalledProcessError as e:
        reason = e.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {e.returncode}"]
        raise RuntimeError(f"{cmd[0]} failed: {reason[0]}") from e
    if not out.exists() or out.stat().st_size < 100:
        raise RuntimeError(f"{cmd[0]} wrote no audio for {text!r}")


def _synthesise(u: Utterance, out: Path) -> None:
    if u.engine == "rhvoice":
        if u.voice not in RHVOICE_ALLOWED:
            raise ValueError(f"RHVoice voice {u.voice!r} is not allowed (reserved for independent evaluation)")
        _run(["RHVoice-test", "-p", u.voice, "-r", str(u.rate), "-t", str(u.pitch), "-o", str(out)], u.text, out)
    elif u.engine == "espeak":
        _run(["espeak-ng", "-v", "ru" + u.voice, "-s", str(u.rate), "-p", str(u.pitch), "-w", str(out),
              "--stdin"], u.text, out)
    elif u.engine == "festival":
        _run(["text2wave", "-eval", f"(voice_{FESTIVAL_VOICE})", "-o", str(out)], u.text, out)
    else:
        raise ValueError(f"unknown engine {u.engine!r}")


def trim(x: np.ndarray, rel_db: float = -40.0, pad: int = 80) -> np.ndarray:
    """Cut leading and trailing silence: keep from the first to the last 10 ms frame
    within rel_db of the loudest one, plus `pad` samples."""
    hop = SAMPLE_RATE // 100
    n = x.size // hop
    if n == 0:
        return x
    energy = (x[:n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12
    loud = np.flatnonzero(10 * np.log10(energy / energy.max()) > rel_db)
    if loud.size == 0:
        return x[:0]
    return x[max(0, loud[0] * hop - pad):min(x.size, (loud[-1] + 1) * hop + pad)]


def speech(u: Utterance) -> np.ndarray:
    """The utterance as trimmed float32 mono at 16 kHz, from the cache when possible."""
    path = CACHE / "tts" / u.key()[:2] / (u.key() + ".npy")
    if path.exists():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        _synthesise(u, wav)
        x, rate = sf.read(wav, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        x = resample(x, rate, SAMPLE_RATE)
    x = trim(x)
    peak = np.abs(x).max() if x.size else 0.0
    x = (x / peak * 0.5 if peak > 0 else x).astype(np.float32)
    save_atomically(path, x)
    return x


def save_atomically(path: Path, x: np.ndarray) -> None:
    """np.save to a cache file whole or not at all: parallel workers may race on one entry."""
    tmp_path = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp_path, x)
    os.replace(tmp_path, path)
