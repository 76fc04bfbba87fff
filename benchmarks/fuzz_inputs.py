"""Fuzz the file source and the config parser with atheris for a bounded time.

Every input must give audio (or a score) or the module's own one-line error
(AudioError, ConfigError); any other exception, or a hang past --timeout, is a crash.

    python benchmarks/fuzz_inputs.py audio --seconds 120
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
    from kws_stream import config as kws_config
    from kws_stream.audio import AudioError, iter_file

TMP = Path(tempfile.mkdtemp(prefix="kws-fuzz-"))


def seeds(kind: str) -> list[bytes]:
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


def config_target(data: bytes) -> None:
    path = TMP / "config.toml"
    path.write_bytes(data)
    try:
        kws_config.load(path)
    except kws_config.ConfigError as e:
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
    target = audio_target if kind == "audio" else config_target
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=2048", str(corpus)],
                  target)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
