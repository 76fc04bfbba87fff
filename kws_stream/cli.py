"""`kws-stream`: the command line. argparse lives here and in options.py, nowhere else.

`kws-stream [options]` runs the detector (live, or over files with --file);
`kws-stream listen` prints a running detector's events; `kws-stream keys` makes a
CurveZMQ key pair.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from typing import Callable

from . import __version__, options, plot, security
from .audio import StdinFormat
from .events import (DEFAULT_ENDPOINT, TOPIC_PREFIX, TOPICS, PublishError, check_endpoint_syntax, is_loopback,
                     open_publisher, started_event)
from .listen import full_topic, listen
from .mic import DeviceError, NoSuchDevice, check_input, list_devices
from .model import KwsModel, ModelError
from .spotter import SpotterConfig

log = logging.getLogger("kws_stream")

EXIT_OK, EXIT_FAILED_INPUT, EXIT_USAGE = 0, 1, 2


COMMANDS = ("listen", "keys")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (it prints the whole usage first by default), no
    abbreviated options (a prefix that works today may become ambiguous), and the word a
    user mistyped named: argparse reads a stray word as a command, so for `--threshhold 0.5`
    it would only say that 0.5 is not a command."""

    argv: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        command = self._command()
        prog = f"{self.prog} {command}" if command and not self.prog.endswith(command) else self.prog
        if (word := re.match(r"argument \{listen,keys\}: invalid choice: '?(.*?)'? \(choose from", message)):
            message = self._stray(word.group(1))  # a word stood where a command may
        self.exit(EXIT_USAGE, f"{prog}: error: {message} (see {prog} --help)\n")

    def _value_of_option(self, i: int) -> bool:
        """Whether argv[i] follows an option that takes a value (and so is that value)."""
        action = self._option_string_actions.get(self.argv[i - 1].split("=", 1)[0]) if i > 0 else None
        return action is not None and action.nargs != 0 and "=" not in self.argv[i - 1]

    def _command(self) -> str | None:
        """The command given, if any: the first word that is no option's value."""
        words = [a for i, a in enumerate(self.argv) if not a.startswith("-") and not self._value_of_option(i)]
        return words[0] if words and words[0] in COMMANDS else None

    def _stray(self, word: str) -> str:
        """What to say of a word argparse took for a command: an unknown option before it,
        which would have taken it as its value, or the word itself."""
        for i in (i for i, a in enumerate(self.argv) if a == word and i > 0):
            before = self.argv[i - 1].split("=", 1)[0]
            if before.startswith("--") and before not in self._option_string_actions:
                return f"unrecognized option {before}"
        return (f"unexpected argument {word!r}: the commands are {' and '.join(COMMANDS)}; "
                f"a recording is replayed with --file {word}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kws-stream",
        description="Detect «не слышу» / «не слышно» in audio and publish events over ZeroMQ. Without a "
                    "command it runs the detector: live from an input device, or over recordings with --file.")
    p.add_argument("--version", action="version", version=f"kws-stream {__version__}")
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"TOML file of options (default {options.DEFAULT_CONFIG} when it exists); the command line "
                        "overrides it")
    options.add_to_parser(p)
    sub = p.add_subparsers(dest="command", title="commands", metavar="{listen,keys}")
    lp = sub.add_parser("listen", help="print a running kws-stream's events as JSON lines",
                        description="Print a kws-stream's events as JSON lines.")
    lp.add_argument("--connect", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                    help=f"the daemon's PUB endpoint (default {DEFAULT_ENDPOINT})")
    lp.add_argument("--topic", action="append", default=[], metavar="T",
                    help="topic to receive, e.g. detection or kws.detection (repeatable; default: everything)")
    lp.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    lp.add_argument("--curve-secret", dest="listen_secret", metavar="CLIENT.key_secret",
                    help="this subscriber's CurveZMQ key pair")
    lp.add_argument("--curve-server", metavar="SERVER.key", help="the daemon's public key")
    kp = sub.add_parser("keys", help="make a CurveZMQ key pair", description="Make a CurveZMQ key pair.")
    kp.add_argument("--out", required=True, metavar="DIR", help="directory for NAME.key and NAME.key_secret")
    kp.add_argument("--name", default="server", help="file name stem (default: server)")
    kp.add_argument("--force", action="store_true", help="replace existing key files of that name")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Formatter(logging.Formatter):
    """One line per record. No timestamp: journald adds its own under systemd, and the
    CLI's error lines stay short."""

    def format(self, record: logging.LogRecord) -> str:
        if os.environ.get("JOURNAL_STREAM"):
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return f"kws-stream: {record.levelname.lower()}: {record.getMessage()}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Stop:
    """Set by SIGTERM/SIGINT; the work loops check it between blocks. With `second_ends`
    (a replay), a second signal ends the process at once (128 + signal, cleanup handlers
    still run): a read that waits for a writer that never comes (a named pipe, stdin)
    cannot check the flag. The live loops never wait long, and exit 0 however often told."""

    def __init__(self, second_ends: bool = False):
        self.requested = False
        self.signal = 0
        self.second_ends = second_ends

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and self.second_ends:
            try:  # never raised out of the read it interrupts (a stderr nobody reads, or closed)
                os.write(sys.stderr.fileno(), f"kws-stream: a second {signal.Signals(signum).name}: ended at once, "
                                              "without the replay's totals\n".encode())
            except (OSError, AttributeError, ValueError):
                pass
            raise SystemExit(128 + signum)
        self.requested = True
        self.signal = signum


class Outlet:
    """Where events go: published, and the chosen types also printed on stdout as JSON
    lines. A closed stdout (`| head -1`) turns printing off, once; publishing goes on."""

    def __init__(self, publisher, quiet: bool, which: str = "detections"):
        self.publisher = publisher
        self.quiet = quiet
        self.printed = {"detection"} if which == "detections" else {"detection", "status", "error"}

    def __getattr__(self, name: str):  # dropped, sent, drain_exhausted, endpoint: the publisher's
        return getattr(self.publisher, name)

    def publish(self, event: dict) -> bool:
        if not self.quiet and event["type"] in self.printed:
            self._print(event)
        return self.publisher.publish(event)

    def _print(self, event: dict) -> None:
        try:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        except BrokenPipeError:
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
            os.close(devnull)
            log.warning("stdout was closed; detections are no longer printed (events and --csv go on)")


class Progress:
    """A progress bar on stderr while a replay runs, only on a terminal and only when tqdm
    is installed: files done, audio hours, times real time, and the ETA."""

    def __init__(self, total: int):
        self.total, self._bar, self._audio, self._began = total, None, 0.0, time.monotonic()

    def __enter__(self) -> Progress:
        if sys.stderr.isatty() and self.total > 1:
            try:
                from tqdm import tqdm
            except ImportError:
                return self
            self._bar = tqdm(total=self.total, unit="file", file=sys.stderr, dynamic_ncols=True, leave=False)
        return self

    def update(self, result) -> None:
        if self._bar is None:
            return
        self._audio += result.audio_seconds
        speed = self._audio / max(time.monotonic() - self._began, 1e-9)
        self._bar.set_postfix_str(f"{self._audio / 3600:.2f} h audio, {speed:.0f}x real time", refresh=False)
        self._bar.update(1)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line over the config file over the defaults, validated once."""
    parser = build_parser()
    _Parser.argv = list(argv)
    given = parser.parse_args(argv)
    if given.command is not None:
        return given
    cli = {k: v for k, v in vars(given).items() if k in options.BY_KEY}
    path = getattr(given, "config", None) or (options.DEFAULT_CONFIG if options.DEFAULT_CONFIG.exists() else None)
    try:
        file_values = options.read_file(path) if path is not None else {}
        args = options.merge(cli, file_values, path)
        options.check_together(args, cli)
    except options.OptionError as e:
        parser.exit(EXIT_USAGE, f"kws-stream: error: {e}\n")
    args.command = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "listen":
        return run_listen(args)
    if args.command == "keys":
        return run_keys(args)
    setup_logging(args.log_level)
    if args.list_devices:
        try:
            print(list_devices())
        except DeviceError as e:
            log.error("%s", e)
            return EXIT_USAGE
        return EXIT_OK
    stop = Stop(second_ends=args.file is not None)
    stop.install()
    if args.file is not None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a replay has no model to reload: SIGHUP is ignored
        problem = check_replay(args)
        if problem is not None:
            log.error("%s", problem)
            return EXIT_USAGE
    try:
        model = KwsModel(args.model, expect_sha256=args.model_sha256)
    except ModelError as e:
        origin = args.origin.get("model")
        log.error("model %s%s", e, f" (from {origin}: model)" if origin else "")
        return EXIT_USAGE
    if args.gate_margin and not model.front_end_class.gates:
        log.warning("--gate-margin: %s reads front end %s, which has no speech gate; every window is scored",
                    model.path, model.info.front_end)
    endpoint = args.pub or ("none" if args.file else DEFAULT_ENDPOINT)  # a replay publishes only when asked
    curve = None
    try:
        if args.curve_secret:
            curve = security.CurveServer(args.curve_secret, args.curve_clients)
        publisher = Outlet(open_publisher(endpoint, args.allow_remote, curve, args.drain_seconds if args.file else 0.0),
                           args.quiet, args.events)
    except (PublishError, security.KeyMaterialError) as e:
        log.error("%s", e)
        if curve is not None:
            curve.stop()
        return EXIT_USAGE
    config = SpotterConfig(hop_seconds=args.hop_seconds, threshold=args.threshold, refractory_seconds=args.refractory,
                           gate_margin_db=args.gate_margin, cascade=args.cascade)
    try:
        prepare = run_files if args.file else run_rtp if args.rtp else run_device
        run = prepare(args, model, config, publisher, stop)
        if isinstance(run, int):  # the source could not be opened: no `started` without a `stopped`
            return run
        publisher.publish(started_event(model.info.name, model.info.version, model.sha256, publisher.endpoint,
                                        config.gate_for(model)))
        return run()
    finally:
        publisher.close()
        if curve is not None:
            curve.stop()


def check_replay(args) -> str | None:
    """Expand --file's inputs in place and check that its outputs can be written; the
    problem, or None. (The replay modules load here, so a live daemon never holds them.)"""
    from .audio import STDIN, AudioError, is_stream, soundfile
    from .replay import InputError, check_writable, expand_inputs
    try:
        args.file = expand_inputs(args.file)
        if any(path != STDIN for path in args.file):
            soundfile()
        if args.jobs > 1 and (pipes := [p for p in args.file if is_stream(p)]):
            log.warning("--jobs 1: %s is a pipe, which worker processes cannot open", pipes[0])
            args.jobs = 1
        for path, folder in ((args.csv, False), (args.scores, False), (args.plot, True)):
            if path:
                check_writable(path, folder)
        if args.plot:
            plot.require()
    except (InputError, AudioError, OSError, plot.PlotError) as e:
        return str(e)
    return None


# Each source's run_*: checks what can be checked before the `started` event and returns the
# run itself, or an exit code when the source cannot be had.
Run = Callable[[], int]


def run_files(args, model: KwsModel, config: SpotterConfig, publisher, stop: Stop) -> Run:
    from .replay import ReplayJob
    job = ReplayJob(args.file, model, config, publisher, args.jobs, args.realtime, args.csv, args.scores, args.plot,
                    StdinFormat(args.format, args.rate))
    return lambda: _replay(args, job, stop)


def _replay(args, job, stop: Stop) -> int:
    began = time.monotonic()
    with Progress(len(args.file)) as progress:
        totals = job.run(stop, progress.update)
    wall = time.monotonic() - began
    log.info("files %d, audio %.2f h, detections %d, failed %d, %.0fx real time (%.1f s)", totals.files,
             totals.audio_seconds / 3600, totals.detections, totals.failed, totals.audio_seconds / max(wall, 1e-9),
             wall)
    if stop.requested:
        log.warning("interrupted after %d finished files%s", len(job.rows),
                    f"; {args.csv} holds them" if args.csv else "")
        return 128 + stop.signal
    return EXIT_FAILED_INPUT if totals.failed else EXIT_OK


def run_device(args, model: KwsModel, config: SpotterConfig, publisher, stop: Stop) -> Run | int:
    """From a shell, a device that matches nothing is a usage error (a typo, said at once).
    Under systemd (NOTIFY_SOCKET) it is not: a sound server may come up after the service, so
    the daemon starts, says the device failed, and retries as for a device that vanishes."""
    from .service import Daemon
    try:
        check_input(args.device)
    except DeviceError as e:  # PortAudio missing is never waited for: no package installs itself
        if not (isinstance(e, NoSuchDevice) and os.environ.get("NOTIFY_SOCKET")):
            log.error("%s", e)
            return EXIT_USAGE
        log.warning("%s; retrying until it appears", e)
    daemon = Daemon(model, config, publisher, args.device, stop, status_interval=args.status_interval,
                    model_path=args.model, model_sha256=args.model_sha256)
    return daemon.run


def run_rtp(args, model: KwsModel, config: SpotterConfig, publisher, stop: Stop) -> Run | int:
    from .rtp import RtpService
    from .service import Notifier
    host, _, port = args.rtp.rpartition(":")
    host = host.strip("[]")
    if not args.allow_remote and not is_loopback(host):
        log.error("--rtp %s is not a loopback address; add --allow-remote to take calls from the network", args.rtp)
        return EXIT_USAGE
    try:
        service = RtpService(model, config, publisher, host, int(port), stop, timeout=args.rtp_timeout,
                             max_streams=args.max_streams, l16=args.rtp_l16, opus=args.rtp_opus,
                             status_interval=args.status_interval, notifier=Notifier(), model_path=args.model,
                             model_sha256=args.model_sha256)
    except (OSError, RuntimeError, ValueError) as e:
        log.error("%s", e)
        return EXIT_USAGE
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the service takes it (a reload) in run()
    return service.run


def run_listen(args) -> int:
    try:
        check_endpoint_syntax(args.connect)
        # a daemon may bind to none or to any port (*); listen connects to one
        connectable = args.connect != "none" and args.connect.rpartition(":")[2] != "*"
    except PublishError:
        connectable = False
    if not connectable:
        print(f"kws-stream listen: error: --connect {args.connect}: give the daemon's tcp://HOST:PORT or ipc://PATH",
              file=sys.stderr)
        return EXIT_USAGE
    if unknown := [t for t in args.topic if not any(full.startswith(full_topic(t)) for full in TOPICS)]:
        print(f"kws-stream listen: error: --topic {unknown[0]}: no event has that topic; the topics are "
              f"{', '.join(t[len(TOPIC_PREFIX):] for t in TOPICS)} (or a prefix of one)", file=sys.stderr)
        return EXIT_USAGE
    configure = None
    if args.listen_secret or args.curve_server:
        try:
            if not (args.listen_secret and args.curve_server):
                raise security.KeyMaterialError("--curve-secret and --curve-server go together")
            configure = security.client_configure(args.listen_secret, args.curve_server)
        except security.KeyMaterialError as e:
            print(f"kws-stream listen: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    return listen(args.connect, args.topic, configure=configure, count=args.count)


def run_keys(args) -> int:
    try:
        public, secret = security.generate(args.out, args.name, args.force)
    except security.KeyMaterialError as e:
        print(f"kws-stream keys: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"public key {public} (give it to the other side), secret key {secret} (keep it here)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
