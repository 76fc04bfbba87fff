"""CurveZMQ for the event stream: encrypted, and only for authorised subscribers.

The daemon holds a server key pair and a directory of the public keys of the clients it
accepts (`zmq.auth` certificate files). `kws-stream keys` makes key pairs.
"""
from __future__ import annotations

import logging
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class KeyMaterialError(Exception):
    """Key material that is missing, unreadable or too widely readable."""


def generate(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """A key pair: NAME.key (public, shareable) and NAME.key_secret (owner-only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    public, secret = zmq.auth.create_certificates(str(out), name)
    Path(secret).chmod(0o600)
    Path(public).chmod(0o644)
    return Path(public), Path(secret)


def _check_secret(path: Path) -> None:
    if not path.is_file():
        raise KeyMaterialError(f"{path}: no such key file")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(f"{path}: secret key is readable by others (mode {mode:o}); chmod 600 it")


def load_pair(secret_path: str | Path) -> tuple[bytes, bytes]:
    path = Path(secret_path)
    _check_secret(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyMaterialError(f"{path}: not a key file ({e})") from e
    if secret is None:
        raise KeyMaterialError(f"{path}: holds no secret key (give the .key_secret file)")
    return public, secret


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyMaterialError(f"{path}: not a public key file ({e})") from e
    return public


class CurveServer:
    """Authenticator thread plus the socket options of a CURVE server."""

    def __init__(self, secret_path: str | Path, clients_dir: str | Path, context: zmq.Context | None = None):
        self.public, self.secret = load_pair(secret_path)
        clients = Path(clients_dir)
        if not clients.is_dir() or not list(clients.glob("*.key")):
            raise KeyMaterialError(f"{clients}: no authorised client keys (*.key) in it")
        self.context = context or zmq.Context.instance()
        self.auth = ThreadAuthenticator(self.context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(clients))

    def configure(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def client_configure(secret_path: str | Path, server_public_path: str | Path):
    public, secret = load_pair(secret_path)
    server = load_public(server_public_path)

    def configure(sock: zmq.Socket) -> None:
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server

    return configure
