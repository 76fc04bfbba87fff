"""Fuzz the file source and the config parser with atheris for a bounded time.

Every input must give audio (or a score) or the module's own one-line error
(AudioError, ConfigError); any other exception, or a hang past --timeout, is a crash.

    python benchmarks/fuzz_inputs.py audio --seconds 120
    python benchmarks/fuzz_inputs.py ogg --seconds 120      # Ogg Opus page streams
    python benchmarks/fuzz_inputs.py config --seconds 120
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np
import soundfile as sf

with atheris.instrument_imports():
    from kws_stream import options as kws_options
    from kws_stream import ogg
    from kws_stream.audio import AudioError, iter_file

TMP = Path(tempfile.mkdtemp(prefix="kws-fuzz-"))


def opus_seeds() -> list[bytes]:
    """Ogg Opus page streams: whole files, cut ones and two chained streams."""
    out = []
    for seconds, rate in ((0.5, 16000), (3.0, 48000), (1.0, 8000)):
        t = np.arange(int(seconds * rate)) / rate
        buf = io.BytesIO()
        sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="OGG", subtype="OPUS")
        out.append(buf.getvalue())
    out += [out[1][:len(out[1]) // 2], out[0] + out[2]]
    return out


def seeds(kind: str) -> list[bytes]:
    if kind == "ogg":
        return opus_seeds()
    if kind == "config":
        return [b'device = "pulse"\nhop_seconds = 0.5\n', b'model = "/x.onnx"\nthreshold = 0.7\nquiet = true\n']
    x = np.sin(np.arange(8000) / 5.0) * 0.3
    out = []
    for fmt, sub in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("WAV", "FLOAT")):
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format=fmt, subtype=sub)
        out.append(buf.getvalue())
    return out


def audio_target(data: bytes) -> None:
    path = TMP / "input.bin"
    path.write_bytes(data)
    try:
        for block in iter_file(path):
            assert block.ndim == 1 and block.dtype == np.float64
    except AudioError as e:
        assert "\n" not in str(e)


def ogg_target(data: bytes) -> None:
    """The page scanner never raises, and a file it calls whole or cut reads as audio or
    fails with one line."""
    path = TMP / "input.opus"
    path.write_bytes(b"OggS" + data[4:] if len(data) >= 4 else data)
    reason = ogg.problem(path) if ogg.is_ogg(path) else None
    assert reason is None or (reason and "\n" not in reason)
    audio_target(path.read_bytes())


def config_target(data: bytes) -> None:
    path = TMP / "config.toml"
    path.write_bytes(data)
    try:
        kws_options.read_file(path)
    except kws_options.OptionError as e:
        assert "\n" not in str(e).strip()


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "audio"
    seconds = "60"
    if "--seconds" in sys.argv:
        seconds = sys.argv[sys.argv.index("--seconds") + 1]
    corpus = TMP / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, s in enumerate(seeds(kind)):
        (corpus / f"seed{i}").write_bytes(s)
    target = {"audio": audio_target, "ogg": ogg_target, "config": config_target}[kind]
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=2048", str(corpus)],
                  target)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
