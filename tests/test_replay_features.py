"""What a user of a batch tool expects from `kws-stream --file` (issue 13): inputs from
folders, lists and stdin; progress and a summary; window scores and plots; status events
on stdout; CSV ids that never collide; and a replay that never collides with a daemon.
Everything through the real CLI in a subprocess."""
import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from kws_stream import KwsModel, plot

ROOT = Path(__file__).resolve().parent.parent
POS = ROOT / "models" / "demo_positive.opus"
NEG = ROOT / "models" / "demo_negative.opus"


def kws(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "kws_stream.cli", *map(str, args)], capture_output=True,
                          timeout=180, input=stdin, cwd=cwd)


def json_lines(stdout: bytes) -> list[dict]:
    lines = stdout.decode().splitlines()
    return [json.loads(line) for line in lines]  # every line must be JSON


def detections(stdout: bytes) -> list[dict]:
    return [e for e in json_lines(stdout) if e["type"] == "detection"]


def pcm(path: Path, *ffmpeg_args: str) -> bytes:
    return subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), *ffmpeg_args, "-"], check=True,
                          capture_output=True, timeout=60).stdout


def wav_bytes(path: Path) -> bytes:
    """The file as a WAV whose header holds its true size (ffmpeg writing to a pipe cannot)."""
    out = io.BytesIO()
    sf.write(out, sf.read(path)[0], 48000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_folders_lists_and_unique_csv_ids(tmp_path):
    for name, src in (("d1/call.opus", POS), ("d2/call.opus", NEG), ("d2/deep/other.opus", NEG)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / name)
    (tmp_path / "d2" / "notes.txt").write_text("not audio")
    r = kws("--file", tmp_path / "d1", tmp_path / "d2", "--csv", tmp_path / "out.csv", "--quiet", "--pub", "none")
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows == ["id,label,score"] + [f"{i},{label},{s}" for i, label, s in
                                         zip(["d1/call", "d2/call", "other"], [1, 0, 0],
                                             [row.split(",")[2] for row in rows[1:]])]
    listing = tmp_path / "calls.txt"
    listing.write_text(f"# two calls\n{tmp_path / 'd1' / 'call.opus'}\n\n{tmp_path / 'd2' / 'deep' / 'other.opus'}\n")
    r = kws("--file", f"@{listing}", "--csv", tmp_path / "list.csv", "--quiet")
    assert r.returncode == 0, r.stderr
    assert [row.split(",")[0] for row in (tmp_path / "list.csv").read_text().splitlines()[1:]] == ["call", "other"]
    shutil.copy(POS, tmp_path / "d1" / "call.wav")  # stems and relative stems collide: suffixes; the same file: #2
    again = tmp_path / "d1" / "call.opus"
    r = kws("--file", again, tmp_path / "d1" / "call.wav", again, "--csv", tmp_path / "same.csv", "--quiet")
    assert r.returncode == 0, r.stderr
    ids = [row.split(",")[0] for row in (tmp_path / "same.csv").read_text().splitlines()[1:]]
    assert ids == ["call.opus", "call.wav", "call.opus#2"]
    r = kws("--file", f"@{tmp_path / 'missing.txt'}")
    assert r.returncode == 2 and b"cannot read the list of files" in r.stderr and b"Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = kws("--file", tmp_path / "empty", tmp_path / "d1", "--quiet")  # a folder without audio fails like a bad file
    assert r.returncode == 1 and b"empty: is a directory with no audio files in it" in r.stderr


def test_an_unwritable_output_is_refused_before_any_audio_is_read(tmp_path):
    for flag, target in (("--csv", tmp_path / "no" / "such" / "dir" / "out.csv"), ("--csv", tmp_path),
                         ("--scores", tmp_path / "missing" / "s.jsonl"), ("--plot", POS)):
        r = kws("--file", tmp_path / "not-read.opus", flag, target)
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.decode().strip().splitlines()
        assert str(target) in line and "not-read" not in line  # the audio was never opened


@pytest.mark.parametrize("how", ["s16le-8k", "f32le", "wav-auto", "wav-given", "wav-float", "wav-24bit-3ch",
                                 "wav-u8", "wav-f64"])
def test_stdin_finds_what_the_file_finds(how):
    """ffmpeg writes float, 24-bit and 3+ channel WAVs with an extensible header: all taken."""
    want = detections(kws("--file", POS).stdout)
    args = {"s16le-8k": (("-f", "s16le", "-ac", "1", "-ar", "8000"), ("--rate", "8000")),
            "f32le": (("-f", "f32le", "-ac", "1", "-ar", "16000"), ("--format", "f32le")),
            "wav-auto": (("-f", "wav",), ()),
            "wav-given": (("-f", "wav", "-ac", "2"), ("--format", "wav")),
            "wav-float": (("-c:a", "pcm_f32le", "-f", "wav"), ()),
            "wav-24bit-3ch": (("-c:a", "pcm_s24le", "-ac", "3", "-f", "wav"), ()),
            "wav-u8": (("-c:a", "pcm_u8", "-f", "wav"), ()),
            "wav-f64": (("-c:a", "pcm_f64le", "-ar", "44100", "-f", "wav"), ())}[how]
    r = kws("--file", "-", *args[1], stdin=pcm(POS, *args[0]))
    assert r.returncode == 0, r.stderr
    got = detections(r.stdout)
    assert len(got) == len(want) >= 1 and got[0]["stream"] == "stdin"
    assert abs(got[0]["start"] - want[0]["start"]) < 0.01 and abs(got[0]["score"] - want[0]["score"]) < 0.02


def test_bad_stdin_is_one_line():
    for data, args, reason in ((b"", (), "stdin: no audio samples"), (b"RIFF\x10", (), "not a PCM WAV stream"),
                               (b"\x00\x01" * 8000 + b"\x07", (), "truncated: 1 bytes"),
                               (pcm(POS, "-f", "wav"), ("--format", "s16le"), "stdin: holds a WAV header"),
                               (POS.read_bytes(), (), "stdin: holds Ogg audio"),  # auto takes WAV or raw PCM only
                               (pcm(POS, "-f", "flac"), (), "stdin: holds FLAC audio"),
                               (b"hello\n", (), "stdin: holds text"),
                               (wav_bytes(POS)[:100_000], (), "truncated: the WAV header promises")):
        r = kws("--file", "-", *args, stdin=data)
        lines = [ln for ln in r.stderr.decode().splitlines() if "error" in ln]
        assert r.returncode == 1 and len(lines) == 1 and reason in lines[0], r.stderr
        assert b"Traceback" not in r.stderr
    r = kws("--file", "-", POS)
    assert r.returncode == 2 and b"must be the only input" in r.stderr


def test_a_named_pipe_is_read_as_a_stream(tmp_path):
    """`--file <(ffmpeg ... -f wav -)`: a pipe has no size and cannot seek, so it is read as stdin is."""
    want = detections(kws("--file", POS).stdout)
    fifo = tmp_path / "call.wav"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-y", "-i", str(POS), "-f", "wav", str(fifo)])
    r = kws("--file", fifo)
    writer.wait(timeout=60)
    assert r.returncode == 0, r.stderr
    got = detections(r.stdout)
    assert len(got) == len(want) >= 1 and got[0]["stream"] == str(fifo)
    assert abs(got[0]["start"] - want[0]["start"]) < 0.01 and abs(got[0]["score"] - want[0]["score"]) < 0.02
    r = kws("--file", "/dev/null")
    assert r.returncode == 1 and b"/dev/null: no audio samples" in r.stderr
    # worker processes cannot open the caller's pipe: with one among the inputs the replay takes one job
    writer = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-y", "-i", str(POS), "-f", "wav", str(fifo)])
    r = kws("--file", fifo, NEG, "--jobs", "2")
    writer.wait(timeout=60)
    assert r.returncode == 0 and b"--jobs 1: " in r.stderr, r.stderr
    assert len(detections(r.stdout)) == len(want)


def test_a_second_signal_ends_a_read_that_waits_for_a_writer(tmp_path):
    """Opening a named pipe waits for its writer, where the first signal's flag is never
    looked at; the second signal ends the process."""
    fifo = tmp_path / "nobody.wav"
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--file", str(fifo)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    time.sleep(3.0)  # started, and waiting in open()
    p.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert p.poll() is None  # the first asks the replay to stop after what it is reading
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGTERM and b"Traceback" not in err, err
    assert "kws-stream: a second SIGTERM: ended at once, without the replay's totals\n" in err.decode()


def test_a_failed_file_ends_its_stream_with_the_reason(tmp_path):
    """Each file gets a stream-end, so a subscriber that tracks streams sees every one close:
    a file that fails part-way gets its error, then a stream-end with reason "error" and
    what was read before the cut."""
    cut = tmp_path / "cut.wav"
    data = pcm(POS, "-f", "wav")  # a WAV to a pipe has no data size: give it one, then cut
    x, rate = sf.read(io.BytesIO(data))
    sf.write(cut, x, rate, subtype="PCM_16")
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    r = kws("--file", POS, cut, "--events", "all")
    assert r.returncode == 1, r.stderr
    events = json_lines(r.stdout)
    (error,) = [e for e in events if e["type"] == "error"]
    ends = [e for e in events if e.get("state") == "stream-end"]
    assert [e.get("reason") for e in ends] == [None, "error"]
    assert ends[1]["stream"] == error["stream"] == str(cut) and "truncated" in error["message"]
    assert events.index(error) < events.index(ends[1])
    assert 0 < ends[1]["audio_seconds"] < ends[0]["audio_seconds"] and ends[1]["windows"] > 0


def test_scores_hold_every_window_and_the_events_all_option(tmp_path):
    out = tmp_path / "s.jsonl"
    r = kws("--file", POS, NEG, "--scores", out, "--events", "all")
    assert r.returncode == 0, r.stderr
    events = json_lines(r.stdout)
    states = [e.get("state") for e in events if e["type"] == "status"]
    assert states == ["started", "stream-end", "stream-end", "finished"]
    windows = {e["stream"]: e["windows"] for e in events if e.get("state") == "stream-end"}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(lines[0]) == {"stream", "start", "end", "score"}
    for stream, n in windows.items():
        mine = [w for w in lines if w["stream"] == stream]
        assert len(mine) == n and all(0.0 <= w["score"] <= 1.0 and w["end"] > w["start"] for w in mine)
    best = max(w["score"] for w in lines if w["stream"] == str(POS))
    assert best == pytest.approx([e for e in events if e.get("stream") == str(POS) and e["type"] == "status"][0]
                                 ["max_score"], abs=1e-6)


def test_a_file_that_fails_before_any_audio_gets_no_plot(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    r = kws("--file", tmp_path / "empty.wav", POS, "--plot", tmp_path / "plots")
    assert r.returncode == 1 and b"empty.wav: empty file" in r.stderr
    assert [p.name for p in (tmp_path / "plots").glob("*.png")] == [f"{POS.stem}.png"]


def test_the_plot_shows_scores_threshold_and_detection(tmp_path):
    import matplotlib.image
    r = kws("--file", POS, "--plot", tmp_path / "plots", "--scores", tmp_path / "s.jsonl")
    assert r.returncode == 0, r.stderr
    (det,) = detections(r.stdout)
    assert det["threshold"] == round(KwsModel().info.threshold, 6) != KwsModel().info.threshold  # printed as scores
    windows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    (png,) = (tmp_path / "plots").glob("*.png")
    img = (matplotlib.image.imread(png)[:, :, :3] * 255).round().astype(int)
    assert img.shape == (400, 1000, 3)
    threshold = KwsModel().info.threshold
    xmax = max(w["end"] for w in windows)
    col = lambda t: int(1000 * (plot.LEFT + plot.WIDTH * t / xmax))  # noqa: E731
    left, bottom, width, height = plot.SCORE_BOX
    row = lambda y: int(400 * (1 - (bottom + height * (y + 0.02) / 1.04)))  # noqa: E731

    def share(color, rows, cols, tol=40):
        patch = img[rows[0]:rows[1], cols[0]:cols[1]].reshape(-1, 3)
        return float((np.abs(patch - np.array(color)).max(axis=1) <= tol).mean())

    red, orange_on_white, blue = (224, 0, 0), (255, 219, 166), (31, 95, 191)
    quiet_cols = (col(1.0), col(det["start"] - 1.0))
    assert share(red, (row(threshold) - 2, row(threshold) + 3), quiet_cols, tol=60) > 0.1  # the dashed threshold
    band_cols = (col(det["start"]) + 3, col(det["end"]) - 3)
    h = min(20, abs(row(threshold) - row(0.5)) - 4)  # rows clear of the threshold line's antialiased edge
    assert h >= 8, "the threshold sits too close to 0.5 for this check"
    assert share(orange_on_white, (row(0.5) - h, row(0.5) + h), band_cols) > 0.5  # the detection's window
    assert share(orange_on_white, (row(0.5) - h, row(0.5) + h), quiet_cols) == 0.0
    assert share(blue, (row(0.0) - 3, row(0.0) + 4), quiet_cols) > 0.2  # low scores before the phrase
    top = max(windows, key=lambda w: w["score"])
    assert share(blue, (row(top["score"]) - 4, row(top["score"]) + 5), (col(top["end"]) - 4, col(top["end"]) + 5)) > 0.1
    assert share((119, 119, 119), (int(400 * (1 - plot.WAVE_BOX[1] - plot.WAVE_BOX[3] / 2)) - 5,
                                   int(400 * (1 - plot.WAVE_BOX[1] - plot.WAVE_BOX[3] / 2)) + 5), quiet_cols) > 0.2


def test_a_replay_publishes_only_when_asked_and_never_collides_with_a_daemon():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    try:
        sock.bind("tcp://127.0.0.1:5556")  # where a running daemon publishes by default
    except zmq.ZMQError:
        sock.close(0)
        pytest.skip("port 5556 is taken on this machine; the case is the same")
    try:
        r = kws("--file", POS)
        assert r.returncode == 0 and len(detections(r.stdout)) == 1, r.stderr
    finally:
        sock.close(0)


def test_progress_on_a_terminal_and_clean_json_on_a_pipe(tmp_path):
    files = []
    for i in range(12):
        files.append(tmp_path / f"c{i}.opus")
        shutil.copy(POS if i % 3 == 0 else NEG, files[-1])
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    p = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "--file", *map(str, files)], stdout=subprocess.PIPE,
                         stderr=slave, env=dict(os.environ, COLUMNS="120", TQDM_MININTERVAL="0"))  # however fast the run
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output from the replay within 60 s"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read()
    assert p.wait(60) == 0
    os.close(master)
    text = err.decode(errors="replace")
    assert re.search(r"\d+/12 \[", text) and "h audio" in text and "x real time" in text, text  # tqdm's bar
    assert re.search(r"files 12, audio 0\.\d\d h, detections 4, failed 0, \d+x real time", text), text
    assert len(detections(out)) == 4  # stdout is a pipe: JSON lines only
    r = kws("--file", *files)  # stderr a pipe too: no bar, the summary line only
    assert r.returncode == 0 and "/12 [" not in r.stderr.decode()
    assert len(r.stderr.decode().strip().splitlines()) == 1


def test_readme_examples_run():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Examples \(run from the repository.*?```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) >= 5
    bin_dir = str(Path(sys.executable).parent)
    for command in commands:
        r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, capture_output=True, text=True,
                           timeout=180, env=dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"]))
        assert r.returncode == 0, (command, r.stderr)
        assert "Traceback" not in r.stderr
        if "--quiet" not in command:
            assert '"type": "detection"' in r.stdout, command


def test_a_cut_file_keeps_what_was_read_before_the_cut(tmp_path):
    """The file replay computes 20 s ahead; a file that fails part-way still has every
    window of what was read scored, and its detections kept."""
    import soundfile as sf
    from kws_stream import read_file
    x = np.concatenate([read_file(POS), np.zeros(16000 * 15)])  # the phrase at 10-12 s, the cut near 23 s
    whole = tmp_path / "whole.opus"
    sf.write(whole, x, 16000, format="OGG", subtype="OPUS")
    data = whole.read_bytes()
    cut = tmp_path / "cut.opus"
    cut.write_bytes(data[:int(len(data) * 0.85)])
    r = kws("--file", cut, "--scores", tmp_path / "s.jsonl")
    assert r.returncode == 1 and b"truncated" in r.stderr
    assert len(detections(r.stdout)) == 1
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) >= 10


def test_an_empty_list_is_a_usage_error_not_live_mode(tmp_path):
    empty = tmp_path / "calls.txt"
    empty.write_text("# nothing yet\n")
    r = kws("--file", f"@{empty}")
    assert r.returncode == 2 and b"no files to replay" in r.stderr and b"device" not in r.stderr


def test_an_empty_path_is_a_usage_error_not_the_working_directory(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"not audio")  # what a search of the working directory would find
    r = kws("--file", "", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1 and b"an empty or blank path" in r.stderr and b"a.wav" not in r.stderr


def test_key_names_stay_inside_the_key_directory(tmp_path):
    for name in ("../evil", "", ".hidden"):
        r = kws("keys", "--out", tmp_path / "keys", "--name", name)
        assert r.returncode == 2 and b"plain file name" in r.stderr
    assert not (tmp_path / "evil.key").exists()
