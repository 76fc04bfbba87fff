"""One options model: the command line and the TOML file are checked by the same rules,
the README's table is the declaration's, and `kws_train` is what `pip install` installs."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

from kws_stream import cli, options
from modelkit import burst_signal

ROOT = Path(__file__).resolve().parent.parent


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def bad_values(o: options.Option) -> list[str]:
    """Values that break o's rule, as command-line text (the file gets the same value)."""
    if o.type is bool:
        return []
    out = []
    if o.type in (int, float):
        out.append("many")
        if o.low is not None:
            out.append(str(o.low - 1))
        if o.high is not None:
            out.append(str(o.high + 1))
        if o.type is float:
            out.append("nan")
    if o.choices:
        out.append("loud")
    if o.check is not None:
        out += ["zz", "tcp://127.0.0.1:99999"]
    return out


def as_file_value(o: options.Option, text: str):
    """The TOML value a user would write for the same text."""
    if o.type is int and text.lstrip("-").isdigit():
        return int(text)
    if o.type is float:
        try:
            value = float(text)
        except ValueError:
            return text
        return value if value == value else text  # TOML has nan, json.dumps would not write it
    return text


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(argv)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


CASES = [(o, text) for o in options.OPTIONS if o.in_file for text in bad_values(o)]


@pytest.mark.parametrize("option,text", CASES, ids=[f"{o.key}={t}" for o, t in CASES])
def test_every_option_is_refused_the_same_way_from_the_command_line_and_the_file(option, text, tmp_path, capsys):
    from_cli = error_of([option.flag, text], capsys)
    config = tmp_path / "config.toml"
    value = [text] if option.many else as_file_value(option, text)
    config.write_text(f"{option.key} = {'nan' if text == 'nan' else toml_value(value)}\n")
    from_file = error_of(["--config", str(config)], capsys)
    prefix_cli, prefix_file = f"kws-stream: error: {option.flag} ", f"kws-stream: error: {config}: {option.key} "
    assert from_cli.startswith(prefix_cli) and from_file.startswith(prefix_file), (from_cli, from_file)
    reason_cli, reason_file = from_cli[len(prefix_cli):], from_file[len(prefix_file):]
    if option.type in (int, float) and text == "many":  # the file holds a string, the command line a word
        assert reason_cli.startswith("must be ") and reason_file.startswith("must be ")
    else:
        assert reason_cli == reason_file


def test_every_option_has_a_rule_or_is_free_text():
    """No numeric option without bounds: each has the range it is checked against."""
    for o in options.OPTIONS:
        if o.type in (int, float):
            assert o.low is not None and o.high is not None, o.key


GOOD = {"device": "pulse", "realtime": False, "jobs": "3", "status_interval": "2.5", "model": "m.onnx",
        "model_sha256": "ab" * 32, "threshold": "0.7", "gate_margin": "12", "cascade": False, "hop_seconds": "0.5", "refractory": "1", "pub": "ipc:///tmp/x",
        "curve_secret": "s.key_secret", "curve_clients": "keys", "allow_remote": True, "drain_seconds": "2",
        "csv": "out.csv", "quiet": True, "log_level": "debug", "format": "f32le", "rate": "8000",
        "scores": "s.jsonl", "plot": "plots", "events": "all", "rtp": "127.0.0.1:40000", "rtp_timeout": "2",
        "max_streams": "50", "rtp_l16": ["96/16000", "97"], "rtp_opus": ["111"]}
TOGETHER = {"curve_secret": {"curve_clients": "keys"}, "curve_clients": {"curve_secret": "s.key_secret"}}
SOURCE_ARGS = {"file": ["--file", "x.wav"], "stdin": ["--file", "-"], "rtp": ["--rtp", "127.0.0.1:40000"], "device": []}


def source_args(o: options.Option) -> list[str]:
    """A source the option acts on, unless the option is itself a source."""
    return [] if o.sources is None or o.key in ("device", "rtp") else SOURCE_ARGS[o.sources[0]]


def test_good_values_mean_the_same_from_the_command_line_and_the_file(tmp_path):
    assert set(GOOD) == {o.key for o in options.OPTIONS if o.in_file}
    for key, text in GOOD.items():
        o = options.BY_KEY[key]
        given = {key: text, **TOGETHER.get(key, {})}
        argv, lines = [], []
        for k, v in given.items():
            ok = options.BY_KEY[k]
            if ok.type is bool:
                argv.append(ok.flag if v else f"--no-{ok.flag[2:]}")
            else:
                argv += [ok.flag, *(v if ok.many else [v])]
            lines.append(f"{k} = {toml_value(as_file_value(ok, v) if ok.type is not bool and not ok.many else v)}")
        config = tmp_path / f"{key}.toml"
        config.write_text("\n".join(lines) + "\n")
        src = source_args(o)
        from_cli, from_file = vars(cli.parse_args(argv + src)), vars(cli.parse_args(["--config", str(config)] + src))
        assert from_cli.pop("origin") == {} and from_file.pop("origin")[key] == str(config)
        assert from_cli == from_file, key
        assert from_cli[key] == (o.from_text(text) if o.type in (int, float) else text), key


NOT_HERE = [(["--jobs", "2"], "--jobs applies to --file only, not to live capture (--device)"),
            (["--rtp", "127.0.0.1:40000", "--csv", "o.csv"], "--csv applies to --file only, not to --rtp"),
            (["--file", "a.wav", "--rtp-timeout", "3"], "--rtp-timeout applies to --rtp only, not to --file"),
            (["--file", "a.wav", "--format", "s16le"], "--format applies to --file - only, not to --file"),
            (["--file", "a.wav", "--status-interval", "3"],
             "--status-interval applies to live capture (--device) or --rtp only, not to --file"),
            (["--rtp", "127.0.0.1:40000", "--no-realtime"], "--realtime applies to --file only, not to --rtp"),
            (["--rtp", "127.0.0.1:40000", "--rtp-l16", "96", "--rtp-opus", "111", "96"],
             "--rtp-l16 and --rtp-opus name payload type 96 more than once"),
            (["--file", "a.wav", "--list-devices"],
             "--list-devices lists the input devices and exits; it takes no --file or --rtp"),
            (["--file", "a.wav", "--pub", "none", "--curve-secret", "k", "--curve-clients", "d"],
             "--curve-secret encrypts published events, and without --pub ENDPOINT none are published")]


@pytest.mark.parametrize("argv,error", NOT_HERE, ids=[a[-2] for a, _ in NOT_HERE])
def test_an_option_given_for_another_source_is_a_usage_error(argv, error, capsys):
    assert error_of(argv, capsys) == f"kws-stream: error: {error}"


def test_a_config_file_may_hold_settings_for_other_sources(tmp_path):
    """One file serves the daemon and a replay: what does not act on the source is unused."""
    config = tmp_path / "config.toml"
    config.write_text('status_interval = 3.0\njobs = 2\nrtp_timeout = 2.0\ncsv = "o.csv"\n')
    assert cli.parse_args(["--config", str(config), "--file", "a.wav"]).jobs == 2
    assert cli.parse_args(["--config", str(config)]).status_interval == 3.0


def test_argparse_errors_are_one_line(capsys):
    for argv in (["--bogus"], ["--jobs"], ["listen", "--count", "0"]):
        line = error_of(argv, capsys)
        assert line.startswith("kws-stream") and "error: " in line and line.endswith("--help)"), line


def test_flags_set_in_the_file_can_be_turned_off(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("quiet = true\nrealtime = true\nallow_remote = true\n")
    args = cli.parse_args(["--config", str(config), "--file", "a.wav", "--no-quiet", "--no-realtime",
                           "--no-allow-remote"])
    assert (args.quiet, args.realtime, args.allow_remote) == (False, False, False)
    args = cli.parse_args(["--config", str(config)])
    assert (args.quiet, args.realtime, args.allow_remote) == (True, True, True)


def test_a_source_on_the_command_line_replaces_the_files(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('device = "pulse"\npub = "tcp://127.0.0.1:5556"\n')
    args = cli.parse_args(["--config", str(config), "--rtp", "127.0.0.1:40000"])
    assert (args.device, args.rtp, args.pub) == (None, "127.0.0.1:40000", "tcp://127.0.0.1:5556")
    args = cli.parse_args(["--config", str(config), "--file", "x.wav"])
    assert (args.device, args.file, args.pub) == (None, ["x.wav"], None)  # a replay publishes only when asked
    args = cli.parse_args(["--config", str(config), "--file", "x.wav", "--pub", "ipc:///tmp/k"])
    assert args.pub == "ipc:///tmp/k"
    assert cli.parse_args(["--config", str(config)]).device == "pulse"


def test_payload_types_may_be_numbers_in_the_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('rtp_l16 = [96, "97/16000"]\nrtp_opus = [111]\n')
    args = cli.parse_args(["--config", str(config)])
    assert (args.rtp_l16, args.rtp_opus) == (["96", "97/16000"], ["111"])


def test_the_readme_table_is_the_declaration():
    assert options.markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_help_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "kws_stream.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "listen" in r.stdout and "keys" in r.stdout and "--no-quiet" in r.stdout


def run(*args):
    return subprocess.run([sys.executable, "-m", "kws_stream.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_a_config_file_value_out_of_range_names_the_file_and_key(tmp_path, burst_model):
    wav = tmp_path / "b.wav"
    sf.write(wav, burst_signal(6.0, [2.05]), 16000)
    config = tmp_path / "config.toml"
    for text, reason in (("threshold = 7.5", "threshold must be within 0..1, got 7.5"),
                         ("jobs = -3", "jobs must be within 1..256, got -3")):
        config.write_text(text + "\n")
        r = run("--config", config, "--file", wav, "--model", burst_model)
        assert r.returncode == 2 and r.stderr.strip() == f"kws-stream: error: {config}: {reason}", r.stderr


def test_config_file_and_overrides(tmp_path, burst_model):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'model = "{burst_model}"\npub = "none"\nthreshold = 1.0\nquiet = false\n')
    wav = tmp_path / "b.wav"
    sf.write(wav, burst_signal(6.0, [2.05]), 16000)
    assert run("--config", cfg, "--file", wav).stdout == ""  # threshold 1.0 from the file
    assert '"detection"' in run("--config", cfg, "--file", wav, "--threshold", "0.5").stdout  # CLI wins
    cfg.write_text(f'model = "{burst_model}"\nthreshold = 0.5\nquiet = true\n')
    assert run("--config", cfg, "--file", wav).stdout == ""  # quiet from the file
    assert '"detection"' in run("--config", cfg, "--file", wav, "--no-quiet").stdout  # turned off on the command line
    for text, message in (('hop = 1\n', "unknown key 'hop'"), ('threshold = "high"\n', "threshold must be"),
                          ('model = [\n', "not valid TOML")):
        cfg.write_text(text)
        r = run("--config", cfg, "--file", wav)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    cfg.write_text('model = "/nonexistent.onnx"\n')
    r = run("--config", cfg, "--file", wav)
    assert r.returncode == 2 and r.stderr.strip() == (f"kws-stream: error: model /nonexistent.onnx: no such model file "
                                                      f"(from {cfg}: model)"), r.stderr
    for path, message in ((tmp_path / "missing.toml", "no such config file"), (tmp_path, "a directory, not a config")):
        r = run("--config", path, "--file", wav)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_wheel_installs_kws_train_and_no_top_level_train(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("kws_stream-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "kws_train" in tops and "kws_stream" in tops and "train" not in tops, tops
    assert "kws_train/nets.py" in zipfile.ZipFile(wheel).namelist()
    from kws_stream.frontends import embedding as emb  # every file the front ends load is packaged
    for name in (*emb.MEL_WEIGHTS, *emb.EMBEDDING_PARTS, emb.ROWS_PART, "kws-default.onnx"):
        assert f"kws_stream/models/{name}" in zipfile.ZipFile(wheel).namelist(), name
    assert "kws_train/cli:main" in "".join(zipfile.ZipFile(wheel).read(n).decode() for n in
                                           zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")
                                           ).replace(".cli:", "/cli:")
