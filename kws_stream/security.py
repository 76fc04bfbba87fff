"""CurveZMQ for the event stream: encrypted, and only for authorised subscribers.

The daemon holds a server key pair and a directory of the public keys of the clients it
accepts (`zmq.auth` certificate files). `kws-stream keys` makes key pairs.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger(__name__)


class KeyMaterialError(Exception):
    """Key material that is missing, unreadable or too widely readable."""


def generate(out_dir: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """A key pair: NAME.key (public, shareable) and NAME.key_secret (owner-only).

    A directory that does not exist is created owner-only; one that exists keeps its
    mode. Existing key files are kept unless `force`; files are created anew with
    O_EXCL | O_NOFOLLOW, so a planted symlink is never written through.
    """
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise KeyMaterialError(f"--name {name!r}: give a plain file name (no '/', not empty, not starting with '.')")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KeyMaterialError(f"{out}: not a directory (--out names the directory for the key files)")
    if not out.is_dir():
        try:
            out.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise KeyMaterialError(f"{out}: cannot create the key directory ({e.strerror or e})") from e
    public_path, secret_path = out / f"{name}.key", out / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if os.path.lexists(path):
            if not force:
                raise KeyMaterialError(f"{path}: exists; give --force to replace it")
            try:
                path.unlink()
            except OSError as e:
                raise KeyMaterialError(f"{path}: cannot replace ({e.strerror or e})") from e
    public, secret = zmq.curve_keypair()
    _write_new(public_path, _cert(public), 0o644)
    _write_new(secret_path, _cert(public, secret), 0o600)
    return public_path, secret_path


def _cert(public: bytes, secret: bytes | None = None) -> str:
    """A certificate in the format zmq.auth reads."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate: keep it here" if secret else "Public Certificate"),
             "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as e:
        raise KeyMaterialError(f"{path}: cannot create ({e.strerror or e})") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        f.write(text)


def check_clients_dir(clients: Path) -> None:
    """Refuse a client-key directory, or key file, that others may write: anyone who can
    drop a key in it can subscribe."""
    if not clients.is_dir() or not list(clients.glob("*.key")):
        raise KeyMaterialError(f"{clients}: no authorised client keys (*.key) in it")
    for path in [clients, *clients.glob("*.key")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o022:
            raise KeyMaterialError(f"{path}: writable by group or others (mode {mode:o}); chmod go-w it")


def load_pair(secret_path: str | Path) -> tuple[bytes, bytes]:
    """A secret key file's pair; what the file is is checked before who may read it, so a
    public key given by mistake is named as such."""
    path = Path(secret_path)
    if not path.is_file():
        raise KeyMaterialError(f"{path}: no such key file")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyMaterialError(f"{path}: not a key file ({e})") from e
    if secret is None:
        raise KeyMaterialError(f"{path}: holds no secret key (give the .key_secret file)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(f"{path}: secret key is readable by others (mode {mode:o}); chmod 600 it")
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
        check_clients_dir(clients)
        self.context = context or zmq.Context.instance()
        from zmq.auth.thread import ThreadAuthenticator  # it loads asyncio and ssl: only with CURVE on
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
