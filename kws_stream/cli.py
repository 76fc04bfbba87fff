"""`kws-stream`: the command line. argparse lives here and nowhere else."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from . import __version__, config, security
from .config import DEFAULT_PATH as DEFAULT_CONFIG
from .listen import listen
from .mic import DeviceError, list_devices
from .events import DEFAULT_ENDPOINT, NullPublisher, Publisher, PublishError, error_event, status_event
from .model import KwsModel, ModelError
from .replay import replay
from .spotter import SpotterConfig

log = logging.getLogger("kws_stream")

EXIT_OK, EXIT_FAILED_INPUT, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kws-stream",
        description="Detect «не слышу» / «не слышно» in audio and publish events over ZeroMQ.")
    p.add_argument("--version", action="version", version=f"kws-stream {__version__}")
    p.add_argument("--config", metavar="PATH",
                   help=f"TOML file of options (default {DEFAULT_CONFIG} when it exists); the command line overrides it")
    src = p.add_argument_group("source (default: the default input device, as a daemon)")
    src.add_argument("--file", nargs="+", metavar="PATH", help="replay audio files through the streaming path")
    src.add_argument("--device", metavar="NAME|INDEX", help="capture from this input device (see --list-devices)")
    src.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    src.add_argument("--realtime", action="store_true", help="pace file replay at real time")
    src.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                     help="score files in N processes (same results as 1)")
    det = p.add_argument_group("detection")
    det.add_argument("--model", metavar="PATH", help="ONNX model (default: the packaged model)")
    det.add_argument("--model-sha256", metavar="HEX", help="refuse to start unless the model file has this SHA-256")
    det.add_argument("--threshold", type=_probability, metavar="X", help="detection threshold (default: the model's)")
    det.add_argument("--hop-seconds", type=float, default=SpotterConfig.hop_seconds, metavar="S",
                     help="score a window every S seconds of audio (0.01..2.5, default 1.0)")
    det.add_argument("--refractory", type=float, default=SpotterConfig.refractory_seconds, metavar="S",
                     help="seconds of audio after a detection in which no new one fires (default 2.5)")
    out = p.add_argument_group("output")
    out.add_argument("--pub", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                     help=f"ZeroMQ PUB endpoint, tcp:// or ipc://, or 'none' (default {DEFAULT_ENDPOINT})")
    out.add_argument("--curve-secret", metavar="SERVER.key_secret",
                     help="encrypt and authenticate events with CurveZMQ using this server key pair")
    out.add_argument("--curve-clients", metavar="DIR", help="public keys (*.key) of the subscribers allowed in")
    out.add_argument("--allow-remote", action="store_true",
                     help="allow --pub on a non-loopback tcp address (default: loopback and ipc only)")
    out.add_argument("--drain-seconds", type=float, default=5.0, metavar="S",
                     help="file replay: wait up to S seconds in all for slow subscribers instead of dropping "
                          "their events, and as long at exit for queued events to leave (default 5)")
    out.add_argument("--csv", metavar="OUT", help="write id,label,score per file (file replay)")
    out.add_argument("--quiet", action="store_true", help="do not print detections on stdout")
    out.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    out.add_argument("--status-interval", type=float, default=10.0, metavar="S",
                     help="seconds between heartbeat status events of the live daemon (default 10)")
    return p


def build_listen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kws-stream listen", description="Print a kws-stream's events as JSON lines.")
    p.add_argument("--connect", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help=f"the daemon's PUB endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--topic", action="append", default=[], metavar="T",
                   help="topic prefix to receive, e.g. kws.detection (repeatable; default: everything)")
    p.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    p.add_argument("--curve-secret", metavar="CLIENT.key_secret", help="this subscriber's CurveZMQ key pair")
    p.add_argument("--curve-server", metavar="SERVER.key", help="the daemon's public key")
    return p


def build_keys_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kws-stream keys", description="Make a CurveZMQ key pair.")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for NAME.key and NAME.key_secret")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.add_argument("--force", action="store_true", help="replace existing key files of that name")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
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
    """Set by SIGTERM/SIGINT; the work loops check it between blocks."""

    def __init__(self):
        self.requested = False
        self.signal = 0

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal = signum


def open_publisher(endpoint: str, allow_remote: bool = False, curve=None, drain_seconds: float = 0.0):
    if endpoint == "none":
        return NullPublisher()
    check_endpoint(endpoint, allow_remote)
    if curve is None:
        return Publisher(endpoint, drain_seconds=drain_seconds)
    return Publisher(endpoint, configure=curve.configure, context=curve.context, drain_seconds=drain_seconds)


def check_endpoint_syntax(endpoint: str) -> None:
    """tcp://HOST:PORT with PORT 1..65535 (or * for any), or ipc://PATH."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    if not endpoint.startswith("tcp://"):
        raise PublishError(f"--pub {endpoint}: give tcp://HOST:PORT, ipc://PATH or none")
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not host or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
        raise PublishError(f"--pub {endpoint}: the port must be 1..65535 or *")


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Bind only to loopback or ipc unless remote subscribers are asked for explicitly."""
    if not endpoint.startswith("tcp://") or allow_remote:
        return
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise PublishError(f"{endpoint} is not a loopback address; add --allow-remote to publish on it")


def write_csv_atomically(path: str, rows: list[tuple[str, int, float]]) -> None:
    """Write id,label,score rows to a temporary file beside `path`, then rename it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "score"])
            w.writerows((stem, label, f"{score:.6f}") for stem, label, score in rows)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def print_event(event: dict, args) -> None:
    """One JSON line on stdout; a closed stdout (`| head -1`) turns printing off, once."""
    try:
        print(json.dumps(event, ensure_ascii=False), flush=True)
    except BrokenPipeError:
        args.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        os.close(devnull)
        log.warning("stdout was closed; detections are no longer printed (events and --csv go on)")


def run_files(args, model: KwsModel, publisher, stop: Stop) -> int:
    config = SpotterConfig(hop_seconds=args.hop_seconds, threshold=args.threshold, refractory_seconds=args.refractory)
    threshold = model.info.threshold if args.threshold is None else args.threshold

    def on_detection(event: dict) -> None:
        if not args.quiet:
            print_event(event, args)
        publisher.publish(event)

    failed, rows = 0, []
    totals = {"files": 0, "audio_seconds": 0.0, "detections": 0}
    for result in replay(args.file, model, config, jobs=args.jobs, realtime=args.realtime,
                         on_detection=on_detection, should_stop=stop):
        totals["files"] += 1
        totals["audio_seconds"] += result.audio_seconds
        totals["detections"] += len(result.detections)
        if result.error is not None:
            if result.error == "interrupted":
                break
            failed += 1
            log.error("%s: %s", result.path, result.error)
            publisher.publish(error_event(result.path, result.error))
            continue
        rows.append((result.stem, int(result.max_score >= threshold), result.max_score))
        publisher.publish(status_event("stream-end", stream=result.path, audio_seconds=round(result.audio_seconds, 3),
                                       windows=result.windows, detections=len(result.detections),
                                       max_score=round(result.max_score, 6)))
    if args.csv:
        try:
            write_csv_atomically(args.csv, rows)
        except OSError as e:
            log.error("%s: cannot write CSV (%s)", args.csv, e.strerror or e)
            failed += 1
    totals["audio_seconds"] = round(totals["audio_seconds"], 3)
    publisher.publish(status_event("finished", failed=failed, dropped=publisher.dropped, sent=publisher.sent,
                                   drain_exhausted=publisher.drain_exhausted, interrupted=stop.requested, **totals))
    if stop.requested:
        log.warning("interrupted after %d finished files%s", len(rows), f"; {args.csv} holds them" if args.csv else "")
        return 128 + stop.signal
    return EXIT_FAILED_INPUT if failed else EXIT_OK


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line over config file over defaults."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    path = known.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None:
        try:
            parser.set_defaults(**config.load(path))
        except config.ConfigError as e:
            parser.exit(EXIT_USAGE, f"kws-stream: error: {e}\n")
    args = parser.parse_args(argv)
    if args.file and args.device:
        parser.error("give --file or --device, not both")
    if not 0.01 <= args.hop_seconds <= 2.5:
        parser.error(f"--hop-seconds must be within 0.01..2.5, got {args.hop_seconds}")
    if args.refractory < 0:
        parser.error(f"--refractory must be >= 0, got {args.refractory}")
    if args.realtime and args.jobs > 1:
        parser.error("--realtime paces one stream at a time; it cannot be combined with --jobs above 1")
    if args.pub != "none":
        try:
            check_endpoint_syntax(args.pub)
        except PublishError as e:
            parser.error(str(e))
    if args.drain_seconds < 0:
        parser.error(f"--drain-seconds must be >= 0, got {args.drain_seconds}")
    if args.status_interval <= 0:
        parser.error(f"--status-interval must be > 0, got {args.status_interval}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["listen"]:
        return run_listen(build_listen_parser().parse_args(argv[1:]))
    if argv[:1] == ["keys"]:
        kargs = build_keys_parser().parse_args(argv[1:])
        try:
            public, secret = security.generate(kargs.out, kargs.name, kargs.force)
        except security.KeyMaterialError as e:
            print(f"kws-stream keys: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"public key {public} (give it to the other side), secret key {secret} (keep it here)")
        return EXIT_OK
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.list_devices:
        try:
            print(list_devices())
        except DeviceError as e:
            log.error("%s", e)
            return EXIT_USAGE
        return EXIT_OK
    stop = Stop()
    stop.install()
    if args.file:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a replay has no model to reload: SIGHUP is ignored
    try:
        model = KwsModel(args.model, expect_sha256=args.model_sha256)
    except ModelError as e:
        log.error("model %s", e)
        return EXIT_USAGE
    curve = None
    try:
        if args.curve_secret or args.curve_clients:
            if not (args.curve_secret and args.curve_clients):
                raise security.KeyMaterialError("--curve-secret and --curve-clients go together")
            curve = security.CurveServer(args.curve_secret, args.curve_clients)
        publisher = open_publisher(args.pub, args.allow_remote, curve, args.drain_seconds if args.file else 0.0)
    except (PublishError, security.KeyMaterialError) as e:
        log.error("%s", e)
        if curve is not None:
            curve.stop()
        return EXIT_USAGE
    try:
        publisher.publish(status_event("started", model=model.info.name, model_version=model.info.version,
                                       model_sha256=model.sha256, endpoint=publisher.endpoint))
        if args.file:
            return run_files(args, model, publisher, stop)
        return run_device(args, model, publisher, stop)
    finally:
        publisher.close()
        if curve is not None:
            curve.stop()


def run_listen(args) -> int:
    configure = None
    if args.curve_secret or args.curve_server:
        try:
            if not (args.curve_secret and args.curve_server):
                raise security.KeyMaterialError("--curve-secret and --curve-server go together")
            configure = security.client_configure(args.curve_secret, args.curve_server)
        except security.KeyMaterialError as e:
            print(f"kws-stream listen: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    return listen(args.connect, args.topic, configure=configure, count=args.count)


def run_device(args, model: KwsModel, publisher, stop: Stop) -> int:
    from .service import Daemon
    config = SpotterConfig(hop_seconds=args.hop_seconds, threshold=args.threshold, refractory_seconds=args.refractory)

    def echo(event: dict) -> None:
        if not args.quiet:
            print_event(event, args)

    daemon = Daemon(model, config, publisher, args.device, stop, status_interval=args.status_interval,
                    model_path=args.model, echo=echo, model_sha256=args.model_sha256)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
