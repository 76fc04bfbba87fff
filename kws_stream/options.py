"""Every option of `kws-stream`, declared once.

The command-line parser, the TOML file check and the README's option table all follow
from OPTIONS. Values from the file and from the command line are merged first (the
command line wins) and then validated once, by the same code, so an option is accepted
or refused the same way wherever it was given; an error names where the value came from
(`--jobs` or `/etc/kws-stream/config.toml: jobs`).

    # /etc/kws-stream/config.toml
    device = "pulse"
    model = "/var/lib/kws-stream/model.onnx"
    pub = "ipc:///run/kws-stream/events"
    hop_seconds = 0.5
    status_interval = 10

Keys use underscores (`hop_seconds` for `--hop-seconds`).
"""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .events import DEFAULT_ENDPOINT, PublishError, check_endpoint_syntax
from .model import MAX_GATE_DB
from .spotter import SpotterConfig

DEFAULT_CONFIG = Path("/etc/kws-stream/config.toml")


class OptionError(Exception):
    """A value that breaks its option's rule; the message names the option and its source."""


@dataclass(frozen=True)
class Option:
    key: str  # the TOML key; the flag is --key with dashes
    type: type  # str, int, float or bool (a flag, with --no-KEY to turn it off)
    default: Any
    help: str
    group: str  # source, detection, output
    metavar: str | None = None
    low: float | None = None  # inclusive bounds
    high: float | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False  # a list: several values after the flag, a TOML array
    check: Callable[[Any], None] | None = None  # further rule: raises ValueError(reason)
    in_file: bool = True  # False: command line only
    sources: tuple[str, ...] | None = None  # where it has an effect (file, stdin, device, rtp); None: everywhere

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def from_text(self, text: str) -> Any:
        """A command-line string as this option's type; ValueError names the reason."""
        if self.type is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"must be a whole number, got {text!r}") from None
        if self.type is float:
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"must be a number, got {text!r}") from None
        return text

    def check_type(self, value: Any) -> Any:
        """A TOML value as this option's type (ints pass as floats; devices may be indices);
        ValueError quotes a wrong value as TOML writes it."""
        if self.many:
            ok = isinstance(value, list) and all(isinstance(v, str) or type(v) is int for v in value)
            if not ok:
                raise ValueError(f"must be a list of strings, got {_toml(value)}")
            return [str(v) for v in value]  # payload types may be written as numbers
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {_toml(value)}")
            return value
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be a whole number, got {_toml(value)}")
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number, got {_toml(value)}")
            return float(value)
        if self.type is str:
            if self.key == "device" and isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {_toml(value)}")
        return value

    def validate(self, value: Any) -> None:
        """Range, choices and the option's own rule; ValueError names the reason."""
        if value is None or self.type is bool:
            return
        if self.many:
            if self.check is not None:
                for item in value:
                    self.check(item)
            return
        if self.type in (int, float):
            if not math.isfinite(value):
                raise ValueError(f"must be a finite number, got {value}")
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                raise ValueError(f"must be within {_bounds(self)}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        if self.check is not None:
            self.check(value)


def _bounds(o: Option) -> str:
    if o.high is None:
        return f"{o.low:g}.." if o.type is float else f"{o.low}.."
    return f"{o.low:g}..{o.high:g}"


def _endpoint(value: str) -> None:
    try:
        check_endpoint_syntax(value)
    except PublishError as e:
        raise ValueError(str(e).split(": ", 1)[1]) from None


def _host_port(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65534:
        raise ValueError(f"must be HOST:PORT with PORT 1..65534 (RTCP takes PORT+1), got {value!r}")


def _payload_type(value: str) -> None:
    from .rtp import parse_payload_spec
    parse_payload_spec(value)


def _opus_type(value: str) -> None:
    from .rtp import parse_opus_spec
    parse_opus_spec(value)


def _sha256(value: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"must be 64 hexadecimal digits, got {value!r}")


_S = SpotterConfig()
OPTIONS: tuple[Option, ...] = (
    # source
    Option("device", str, None, "capture from this PortAudio input (`pulse`, `default`, `hw:1,0`, `3`); opened at "
           "16 kHz, or at its own rate and resampled (default: the default input)", "source", "NAME|INDEX",
           sources=("device",)),
    Option("file", str, None, "replay recordings (any format libsndfile reads, any rate from 1 to 768 kHz, any "
           "channel count) through the streaming path, as fast as possible; a directory is searched recursively for audio, "
           "@LIST reads paths from a file (one per line), - reads WAV or raw PCM from stdin, and a named pipe "
           "(`<(ffmpeg -i IN -f wav -)`) is read as stdin is", "source", "PATH",
           many=True, in_file=False),
    Option("format", str, "auto", "--file -: what stdin holds: wav (8, 16, 24 or 32-bit PCM, 32 or 64-bit "
           "float, any channel count), raw s16le, s32le or f32le (auto: WAV if it starts with a RIFF header; a "
           "stream that starts like Ogg, FLAC, MP3, MP4 or text is refused; else s16le)", "source", "FMT",
           choices=("auto", "wav", "s16le", "s32le", "f32le"), sources=("stdin",)),
    Option("rate", int, 16000, "--file -: sample rate of raw PCM on stdin, mono", "source", "HZ", low=4000,
           high=192000, sources=("stdin",)),
    Option("list_devices", bool, False, "list audio devices and exit", "source", in_file=False),
    Option("rtp", str, None, "watch calls arriving as RTP over UDP on HOST:PORT (RTCP on PORT+1), each sender "
           "(address and SSRC) its own stream; loopback unless --allow-remote", "source", "HOST:PORT",
           check=_host_port),
    Option("rtp_timeout", float, 5.0, "--rtp: a stream ends after this many seconds without packets (or on an "
           "RTCP BYE)", "source", "S", low=0.2, high=3600, sources=("rtp",)),
    Option("max_streams", int, 200, "--rtp: streams watched at once; new senders past it are refused with an "
           "error event", "source", "N", low=1, high=10000, sources=("rtp",)),
    Option("rtp_l16", str, [], "--rtp: dynamic payload types carrying L16 (16-bit big-endian PCM), as PT or "
           "PT/RATE (RATE 4000..48000 Hz, default 8000)", "source", "PT", many=True, check=_payload_type,
           sources=("rtp",)),
    Option("rtp_opus", str, [], "--rtp: dynamic payload types carrying Opus", "source", "PT", many=True,
           check=_opus_type, sources=("rtp",)),
    Option("realtime", bool, False, "pace file replay at real time (one file at a time: not with --jobs above 1)",
           "source", sources=("file",)),
    Option("jobs", int, 1, "score files in N worker processes; results identical to 1", "source", "N", low=1,
           high=256, sources=("file",)),
    Option("status_interval", float, 10.0, "seconds between heartbeat status events of the live daemon",
           "source", "S", low=0.1, high=3600, sources=("device", "rtp")),
    # detection
    Option("model", str, None, "ONNX model (default: the packaged kws-default.onnx)", "detection", "PATH"),
    Option("model_sha256", str, None, "refuse to start unless the model file has this SHA-256 (the started event "
           "reports it)", "detection", "HEX", check=_sha256),
    Option("threshold", float, None, "detection threshold (default: the one stored in the model)", "detection",
           "X", low=0.0, high=1.0),
    Option("gate_margin", float, None, "skip the windows that hear no speech: no mel band DB above its noise "
           "floor (default: the model's own; 0: score every window)", "detection", "DB", low=0.0, high=MAX_GATE_DB),
    Option("cascade", bool, True, "a model exported as a cascade scores a window with its whole ensemble only "
           "where its first member leaves the threshold within reach: the same detections for less CPU, other "
           "scores below the threshold (--no-cascade: every window in full)", "detection"),
    Option("hop_seconds", float, _S.hop_seconds, "score a window every S seconds of audio", "detection", "S",
           low=0.01, high=2.5),
    Option("refractory", float, _S.refractory_seconds, "seconds of audio after a detection in which no new one "
           "fires", "detection", "S", low=0.0, high=3600),
    # output
    Option("pub", str, None, f"ZeroMQ PUB endpoint, tcp://HOST:PORT or ipc://PATH, or none (default: "
           f"{DEFAULT_ENDPOINT} live; a file replay publishes only when this is given)", "output", "ENDPOINT",
           check=_endpoint),
    Option("curve_secret", str, None, "encrypt and authenticate events with CurveZMQ using this server key pair "
           "(with --curve-clients)", "output", "SERVER.key_secret"),
    Option("curve_clients", str, None, "directory of the public keys (*.key) of the subscribers allowed in",
           "output", "DIR"),
    Option("allow_remote", bool, False, "allow --pub on a non-loopback tcp address (default: loopback and ipc only)",
           "output"),
    Option("drain_seconds", float, 5.0, "file replay: wait up to S seconds in all for slow subscribers instead of "
           "dropping their events, and as long at exit for queued events to leave", "output", "S", low=0.0,
           high=3600, sources=("file",)),
    Option("csv", str, None, "write id,label,score per file (file replay): the file's stem (its path when stems "
           "collide), 0/1 as in the seed's submission, the highest window probability; a file that fails has no row "
           "(its error is on stderr and in an error event)", "output", "OUT",
           sources=("file",)),
    Option("scores", str, None, "write every scored window as a JSON line: stream, start, end, score (file "
           "replay)", "output", "OUT.jsonl", sources=("file",)),
    Option("plot", str, None, "write one PNG per file into DIR: the score over time, the threshold and the "
           "detections over the waveform (file replay; needs the plot extra)", "output", "DIR",
           sources=("file",)),
    Option("events", str, "detections", "what is printed on stdout: detections, or all events (status and errors "
           "too)", "output", "WHICH", choices=("detections", "all")),
    Option("quiet", bool, False, "print nothing on stdout: no detections, nor the status events of --events all",
           "output"),
    Option("log_level", str, "info", "how much goes to stderr", "output", "LEVEL",
           choices=("debug", "info", "warning", "error")),
)
BY_KEY = {o.key: o for o in OPTIONS}


def _toml(value: Any) -> str:
    """A value as TOML spells it: true, not Python's True."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, (int, float)) else str(value)  # inf, nan and dates as TOML has them


SOURCES = ("file", "device", "rtp")
GROUPS = {"source": "source (default: the default input device, as a daemon)", "detection": "detection",
          "output": "output"}


def add_to_parser(parser: argparse.ArgumentParser) -> None:
    """Every option as a flag. Defaults are left out (SUPPRESS), so the namespace holds
    only what the command line gave, to be merged over the file and the defaults."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for o in OPTIONS:
        notes = [_bounds(o)] if o.low is not None else []
        notes += [f"one of {', '.join(o.choices)}"] if o.choices else []
        notes += [f"default {o.default}"] if o.default not in (None, False) and not o.many else []
        help_text = o.help + (f" ({', '.join(notes)})" if notes else "")
        kw: dict[str, Any] = {"dest": o.key, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if o.type is bool:
            kw["action"] = argparse.BooleanOptionalAction if o.in_file else "store_true"
        else:
            kw["metavar"] = o.metavar
            if o.many:
                kw["nargs"] = "+"
        groups[o.group].add_argument(o.flag, **kw)


def read_file(path: str | Path) -> dict[str, Any]:
    """A config file's values, typed; OptionError with one line on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise OptionError(f"{path}: a directory, not a config file") from None
    except OSError as e:
        raise OptionError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise OptionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"{path}: not valid TOML ({e})") from None
    known = sorted(o.key for o in OPTIONS if o.in_file)
    out = {}
    for key, value in data.items():
        o = BY_KEY.get(key)
        if o is None or not o.in_file:
            raise OptionError(f"{path}: unknown key {key!r}; known: {', '.join(known)}")
        try:
            out[key] = o.check_type(value)
        except ValueError as e:
            raise OptionError(f"{path}: {key} {e}") from None
    return out


def merge(cli: dict[str, Any], file_values: dict[str, Any], file_path: str | Path | None) -> argparse.Namespace:
    """Defaults, then the file, then the command line; every value validated once, with
    its source named in the error. A source (--file, --device, --rtp) on the command line
    replaces the file's, and a replay publishes only on a --pub from the command line, so
    that the daemon's config never turns a replay into a second publisher on its endpoint."""
    values = {o.key: o.default for o in OPTIONS}
    sources = {}
    for key, value in file_values.items():
        values[key], sources[key] = value, f"{file_path}: {key}"
    for key, value in cli.items():
        o = BY_KEY[key]
        if not o.many and o.type in (int, float):
            try:
                value = o.from_text(value)
            except ValueError as e:
                raise OptionError(f"{o.flag} {e}") from None
        values[key], sources[key] = value, o.flag
    if any(k in cli for k in SOURCES):  # a source on the command line replaces the file's
        for k in SOURCES:
            if k not in cli and k in file_values:
                values[k] = BY_KEY[k].default
                sources.pop(k)
    if values["file"] and "pub" not in cli:  # a replay publishes only when the command line asks
        values["pub"] = None
    for o in OPTIONS:
        try:
            o.validate(values[o.key])
        except ValueError as e:
            raise OptionError(f"{sources.get(o.key, o.flag)} {e}") from None
    from_file = {k: str(file_path) for k in values if k in file_values and k not in cli}
    return argparse.Namespace(**values, origin=from_file)  # origin: the config file of each value it gave


SOURCE_NAMES = {"file": "--file", "stdin": "--file -", "device": "live capture (--device)", "rtp": "--rtp"}


def active_sources(args: argparse.Namespace) -> set[str]:
    if args.file:
        return {"file", "stdin"} if "-" in args.file else {"file"}
    return {"rtp"} if args.rtp else {"device"}


def named_twice(l16: Iterable[str], opus: Iterable[str]) -> str | None:
    """What is wrong when --rtp-l16 and --rtp-opus (PT or PT/RATE each) name a payload type twice."""
    pts = [s.partition("/")[0] for s in list(l16) + list(opus)]
    if twice := sorted({p for p in pts if pts.count(p) > 1}, key=int):
        return f"--rtp-l16 and --rtp-opus name payload type {', '.join(twice)} more than once"
    return None


def check_together(args: argparse.Namespace, given: Iterable[str] = ()) -> None:
    """Rules that involve more than one option. `given`: the keys set on the command line,
    each of which must act on the chosen source (a config file may hold settings for other
    sources; they are left unused)."""
    if sum(bool(x) for x in (args.file, args.device, args.rtp)) > 1:
        raise OptionError("give one source: --file, --device or --rtp")
    here = active_sources(args)
    for key in given:
        o = BY_KEY[key]
        if o.sources is not None and not here & set(o.sources):
            where = " or ".join(SOURCE_NAMES[s] for s in o.sources)
            raise OptionError(f"{o.flag} applies to {where} only, not to {SOURCE_NAMES[min(here)]}")
    if "file" in here and args.realtime and args.jobs > 1:
        raise OptionError("--realtime paces one stream at a time; it cannot be combined with --jobs above 1")
    if "rtp" in here and (twice := named_twice(args.rtp_l16, args.rtp_opus)):
        raise OptionError(twice)
    if bool(args.curve_secret) != bool(args.curve_clients):
        raise OptionError("--curve-secret and --curve-clients go together")
    if args.list_devices and here & {"file", "rtp"}:
        raise OptionError("--list-devices lists the input devices and exits; it takes no --file or --rtp")
    silent = args.pub.lower() == "none" if args.pub is not None else "file" in here  # a replay publishes on --pub only
    if args.curve_secret and "curve_secret" in given and silent:
        raise OptionError("--curve-secret encrypts published events, and without --pub ENDPOINT none are published")


def markdown_table() -> str:
    """The README's option table."""
    rows = ["| option | file key | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        flag = o.flag if o.type is bool else f"{o.flag} {o.metavar}{' ...' if o.many else ''}"
        if o.type is bool and o.in_file:
            flag += f"`, `--no-{o.flag[2:]}"
        key = f"`{o.key}`" if o.in_file else "(command line only)"
        meaning = o.help
        if o.low is not None:
            meaning += f"; {_bounds(o)}"
        if o.choices:
            meaning += f"; one of {', '.join(o.choices)}"
        if o.default not in (None, False, []):
            meaning += f"; default {o.default}"
        rows.append(f"| `{flag.replace('|', chr(92) + '|')}` | {key} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
