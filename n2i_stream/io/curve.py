"""ZeroMQ CURVE for the service's sockets: key files, a server context and a client context.

CURVE (RFC 26, ZMTP 3) encrypts a connection and authenticates its ends by their key pairs.
The service's key pair is a ``zmq.auth`` secret key file; clients are let in when their public
key file sits in the ``authorized_keys`` directory (checked by a ZAP handler thread), or — with
no such directory — whenever they know the server's public key. Every socket made from
:attr:`CurveServer.context` is a CURVE server; every socket made from :func:`client_context`'s
context a CURVE client, so the socket classes themselves need no change. In-process sockets
(``inproc://``) never run a handshake, so the wake-up sockets of those classes work unchanged.

Key layout written by :func:`generate_keys` (``n2i-stream config keys DIR``)::

    DIR/server.key, DIR/server.key_secret        the service's pair (secret: mode 0600)
    DIR/clients/NAME.key, NAME.key_secret       one pair per client, to hand out
    DIR/authorized/NAME.key                     the public keys the service lets in
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import ConfigError

__all__ = ["CurveServer", "KeyFiles", "client_context", "generate_keys", "read_key_pair"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`generate_keys` wrote the keys."""

    server_public: Path
    server_secret: Path
    authorized: Path
    clients: dict[str, Path]  # client name -> its secret key file


def generate_keys(
    directory: str | os.PathLike[str],
    *,
    clients: tuple[str, ...] = ("client",),
    server: str = "server",
    overwrite: bool = False,
) -> KeyFiles:
    """Write a server key pair and one pair per client, authorising every client (see the module
    docstring for the layout). Refuses to replace existing keys unless ``overwrite``."""
    root = Path(directory)
    names = [server, *clients]
    if len(set(names)) != len(names) or not all(n and "/" not in n for n in names):
        raise ConfigError(f"key names must be distinct, non-empty file names, got {names}")
    targets = [root / f"{server}.key", root / f"{server}.key_secret"]
    targets += [root / "authorized" / f"{c}.key" for c in clients]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"keys exist already ({', '.join(existing)}); choose another directory")
    for sub in (root, root / "clients", root / "authorized"):
        sub.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(root, server)
    os.chmod(secret, 0o600)
    client_secrets = {}
    for name in clients:
        c_public, c_secret = zmq.auth.create_certificates(root / "clients", name)
        os.chmod(c_secret, 0o600)
        shutil.copyfile(c_public, root / "authorized" / f"{name}.key")
        client_secrets[name] = Path(c_secret)
    return KeyFiles(Path(public), Path(secret), root / "authorized", client_secrets)


def read_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys of a ``zmq.auth`` key file (secret None in a public file)."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable ZeroMQ key file: {exc}") from exc
    if public is None:
        raise ConfigError(f"{path}: holds no public key")
    return public, secret


class CurveServer:
    """A ZMQ context whose sockets are CURVE servers with the key pair in ``secret_key``.

    With ``authorized_keys`` (a directory of client ``.key`` files) a ZAP handler lets in only
    those clients. Close the sockets made from :attr:`context` first, then :meth:`close`.
    """

    def __init__(
        self,
        secret_key: str | os.PathLike[str],
        *,
        authorized_keys: str | os.PathLike[str] | None = None,
    ) -> None:
        public, secret = read_key_pair(secret_key)
        if secret is None:
            raise ConfigError(f"{secret_key}: holds no secret key (use the .key_secret file)")
        if authorized_keys is not None and not Path(authorized_keys).is_dir():
            raise ConfigError(f"authorized_keys {authorized_keys}: not a directory")
        self.public_key = public
        self.context = zmq.Context()
        self.context.setsockopt(zmq.CURVE_SERVER, 1)
        self.context.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.context.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self._auth: ThreadAuthenticator | None = None
        if authorized_keys is not None:
            self._auth = ThreadAuthenticator(self.context, log=log)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(authorized_keys))
            log.info("CURVE: clients in %s are let in", authorized_keys)

    def close(self) -> None:
        """Stop the ZAP handler and terminate the context (its sockets must be closed)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if not self.context.closed:
            self.context.term()

    def __enter__(self) -> CurveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_context(
    server_public_key: str | os.PathLike[str], client_secret_key: str | os.PathLike[str]
) -> zmq.Context:
    """A new ZMQ context whose sockets are CURVE clients of the server with that public key
    (e.g. for :class:`~n2i_stream.service.control.ControlClient`); terminate it when done."""
    server_public, _ = read_key_pair(server_public_key)
    public, secret = read_key_pair(client_secret_key)
    if secret is None:
        raise ConfigError(f"{client_secret_key}: holds no secret key (use the .key_secret file)")
    ctx = zmq.Context()
    ctx.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return ctx
