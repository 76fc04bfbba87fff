"""Bad files: one line each on stderr naming the file and the reason; the rest still scored."""
import csv
import io
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from modelkit import burst_signal


def test_each_bad_file_is_one_line_and_the_others_are_scored(tmp_path, burst_model):
    x = burst_signal(10.0, [2.05])
    good = tmp_path / "good.opus"
    sf.write(good, x, 16000, format="OGG", subtype="OPUS")
    sf.write(tmp_path / "full.mp3", x, 16000, format="MP3")
    sf.write(tmp_path / "full.flac", x, 16000)
    sf.write(tmp_path / "full.wav", x, 16000, subtype="PCM_16")
    nan = x.copy()
    nan[40000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = x.copy()
    inf[1000] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 16000, subtype="FLOAT")
    mp3 = (tmp_path / "full.mp3").read_bytes()
    flac = (tmp_path / "full.flac").read_bytes()
    wav = (tmp_path / "full.wav").read_bytes()
    bad = {
        "missing.wav": None,
        "adir": "dir",
        "empty.wav": b"",
        "cut.mp3": mp3[:len(mp3) // 2],
        "cut.flac": flac[:len(flac) // 2],
        "cut.wav": wav[:len(wav) // 2 + 1],  # libsndfile reads it to its end without complaint
        "corrupt.opus": b"OggS" + bytes(range(256)) * 40,
        "notes.wav": "just some text\n".encode() * 50,
        "absurd-rate.wav": wav[:24] + (2**31 - 1).to_bytes(4, "little") + wav[28:],  # a header's sample rate
    }
    for name, content in bad.items():
        if content == "dir":
            (tmp_path / name).mkdir()
        elif content is not None:
            (tmp_path / name).write_bytes(content)
    paths = [str(good)] + [str(tmp_path / n) for n in bad] + [str(tmp_path / "nan.wav"), str(tmp_path / "inf.wav")]
    out = tmp_path / "scores.csv"
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", *paths, "--model", burst_model,
                        "--pub", "none", "--csv", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("kws-stream: error:")]
    expected = {"missing.wav": "no such file", "adir": "directory", "empty.wav": "empty", "cut.mp3": "truncated",
                "cut.wav": "truncated: the WAV header promises",
                "cut.flac": "decoding failed", "corrupt.opus": "", "notes.wav": "not readable audio",
                "nan.wav": "NaN or Inf", "inf.wav": "NaN or Inf", "absurd-rate.wav": "unsupported sample rate"}
    assert len(errors) == len(expected), r.stderr
    for name, reason in expected.items():
        (line,) = [e for e in errors if f"/{name}:" in e]
        assert reason in line, line
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    assert rows["good"]["label"] == "1"
    # events found before a file turned out bad are kept: the cut FLAC's burst is before the cut
    assert any('"stream": "%s"' % (tmp_path / "cut.flac") in line for line in r.stdout.splitlines())


@pytest.mark.parametrize("channels,declared", [(1, 0), (1, 0x7FFFF000), (1, 0x80000000), (1, 0xFFFFFFFF),
                                               (6, 0x7FFFF000 // 12 * 12)])  # -, sox, arecord, ffmpeg; sox, 6 ch
def test_a_wav_written_to_a_pipe_is_not_called_truncated(tmp_path, channels, declared):
    """Streaming writers cannot seek back to fill in the data size and leave a placeholder
    (sox rounds its own down to whole frames); as a file and on stdin."""
    from kws_stream.audio import StdinFormat, iter_stdin
    from kws_stream.wav import file_problem as wav_problem
    path = tmp_path / "piped.wav"
    sf.write(path, np.zeros((16000, channels)), 16000, subtype="PCM_16", format="WAV")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert wav_problem(path) is None
    assert wav_problem(tmp_path / "missing.wav") is None
    with open(path, "rb") as f:  # 6 channels: an extensible header
        assert sum(x.size for x in iter_stdin(f, StdinFormat())) == 16000


def test_the_audio_before_a_nan_or_a_decoding_error_is_all_scored(tmp_path, burst_model):
    """Files are decoded 2 s at a time; a block that holds a NaN or fails to decode still
    gives the audio before the fault (a phrase just before it is found), not its last whole block."""
    from kws_stream import KwsModel, SpotterConfig
    from kws_stream.audio import BLOCK_SECONDS
    from kws_stream.replay import scan_file
    model, cfg = KwsModel(burst_model), SpotterConfig(hop_seconds=0.1, threshold=0.8)
    x = burst_signal(13.0, [8.05], seed=5)  # the burst's best window ends near 9.3 s
    nan = x.copy()
    nan[int(9.6 * 16000)] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    r = scan_file(str(tmp_path / "nan.wav"), model, cfg)
    assert r.error == "NaN or Inf sample at 9.60 s" and r.audio_seconds == pytest.approx(9.6)
    assert len(r.detections) == 1
    sf.write(tmp_path / "whole.flac", x, 16000)
    flac = (tmp_path / "whole.flac").read_bytes()
    at = int(len(flac) * 0.77)
    for name, data in (("cut.flac", flac[:at]),  # the decoder can seek back after the error
                       ("spoilt.flac", flac[:at] + bytes(400) + flac[at + 400:])):  # it cannot: opened anew
        (tmp_path / name).write_bytes(data)
        r = scan_file(str(tmp_path / name), model, cfg)
        assert r.error.startswith("decoding failed after") and len(r.detections) == 1, name
        assert 9.4 < r.audio_seconds < 10.5 and r.audio_seconds % BLOCK_SECONDS > 0.1, name  # not a block's end


def test_a_wav_a_byte_short_is_truncated(tmp_path):
    """A WAV's data size is exact, so one missing byte is a cut, as a file and on stdin
    (compressed formats' frame counts may be estimates and get 1%)."""
    from kws_stream.wav import file_problem
    path = tmp_path / "w.wav"
    sf.write(path, np.zeros((16000, 2)), 16000, subtype="PCM_16")
    data = path.read_bytes()
    assert file_problem(path) is None
    for short in (1, 4, 64000):
        path.write_bytes(data[:-short])
        assert file_problem(path) == (f"truncated: the WAV header promises 1.00 s, the data holds "
                                      f"{(64000 - short) / 64000:.2f} s ({short} bytes short)")
        r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--file", "-"], input=data[:-short],
                           capture_output=True, timeout=60)
        reason = b"stdin: truncated" if short < 64000 else b"stdin: no audio samples"
        assert r.returncode == 1 and reason in r.stderr and b"Traceback" not in r.stderr


def test_any_finite_level_of_any_channel_count_is_clipped_not_refused(tmp_path):
    from kws_stream.audio import read_file
    x = np.full((16000, 2), 1e308)
    x[::2] *= -1
    sf.write(tmp_path / "huge.wav", x, 16000, subtype="DOUBLE")
    y = read_file(tmp_path / "huge.wav")
    assert np.isfinite(y).all() and np.abs(y).max() == 1.0


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(cid + len(data).to_bytes(4, "little") + data + b"\0" * (len(data) & 1) for cid, data in chunks)
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, extra: bytes = b"") -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra


@pytest.mark.parametrize("case", ["plain", "fmt18", "extensible", "odd-list-first", "odd-data", "u8-ends", "s24-ends"])
def test_the_wav_reader_takes_the_headers_writers_make(case):
    from kws_stream import wav
    samples = {"u8-ends": (bytes([0, 128, 255]), 8, [-1.0, 0.0, 127 / 128]),
               "s24-ends": (bytes.fromhex("000080 ffff7f 010000"), 24, [-1.0, 8388607 / 8388608, 1 / 8388608])}
    data, bits, want = samples.get(case, (struct.pack("<3h", -32768, 0, 16384), 16, [-1.0, 0.0, 0.5]))
    ext = struct.pack("<HHIH", 22, bits, 4, 1) + bytes(14)  # cbSize, valid bits, channel mask, PCM sub-format
    fmt = {"fmt18": fmt_chunk(1, 1, 8000, bits, b"\0\0"), "extensible": fmt_chunk(0xFFFE, 1, 8000, bits, ext)
           }.get(case, fmt_chunk(1, 1, 8000, bits))
    chunks = [(b"fmt ", fmt), (b"data", data)]
    if case == "odd-list-first":
        chunks.insert(0, (b"LIST", b"INFOabc"))
    if case == "odd-data":
        data, want = data[:1] + b"\x00", [-1.0]  # the u8 sample 0, padded
        chunks = [(b"fmt ", fmt_chunk(1, 1, 8000, 8)), (b"data", data[:1])]
    stream = io.BytesIO(riff(*chunks))
    header = wav.read_header(stream.read)
    assert (header.channels, header.rate) == (1, 8000)
    got = header.decoder()(stream.read(header.size))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad, reason", [
    (riff((b"data", b"\0\0"), (b"fmt ", fmt_chunk(1, 1, 8000, 16))), "data comes before its format"),
    (riff((b"fmt ", fmt_chunk(1, 1, 8000, 16)))[:30], "format chunk is cut short"),
    (riff((b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 4, 16)), (b"data", b"")), "frames of 4 bytes"),
    (riff((b"fmt ", fmt_chunk(1, 0, 8000, 16)), (b"data", b"")), "0 channel(s)"),
    (riff((b"fmt ", fmt_chunk(1, 1, 8000, 16)), (b"junk", bytes(1 << 20)), (b"data", b"")), "no data in its first"),
    (b"RIFF\x10", "RIFF/WAVE header is cut short"),
])
def test_the_wav_reader_refuses_a_bad_header_with_one_reason(bad, reason):
    from kws_stream import wav
    with pytest.raises(wav.WavError, match=re.escape(reason)):
        wav.read_header(io.BytesIO(bad).read)


def test_an_unknown_wav_sample_format_is_named():
    from kws_stream import wav
    header = wav.read_header(io.BytesIO(riff((b"fmt ", fmt_chunk(6, 1, 8000, 8)), (b"data", b""))).read)
    with pytest.raises(wav.WavError, match="8-bit format-6 samples"):
        header.decoder()
