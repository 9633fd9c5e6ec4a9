"""CURVE keys for camstream's TCP endpoints: ZeroMQ's own encryption and authentication
(zmq.auth), so that nothing leaves the machine unauthenticated. ipc endpoints stay protected
by file permissions and never use these.

Layout of a keys directory, made by ``camstream keys generate DIR`` (zmq.auth certificate
files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the pair)::

    DIR/                      mode 0700
      server.key              the server's public key: every worker/ingest node needs a copy
      server.key_secret       the server's key pair (0600): stays on the machine that binds tcp
      worker.key              a client's public key
      worker.key_secret       a client's key pair (0600): copy to the machines that connect
      authorized/             the allow-list: public keys (*.key) of the clients admitted
        worker.key

The side that binds a tcp endpoint (``serve --worker-endpoint``, ``pool``) reads
``server.key_secret`` and ``authorized/``; the side that connects (``worker``, ``serve
--ingest-only``) reads ``server.key`` and ``worker.key_secret`` (or ``--key NAME``). A client
whose public key is not in ``authorized/`` completes no handshake and gets nothing.
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

log = logging.getLogger("camstream.keys")

SERVER = "server"
AUTHORIZED = "authorized"
ZAP_DOMAIN = "camstream"


class KeysError(Exception):
    """A keys directory that cannot be used; the message is one line for the user."""


def generate(directory: str, name: str = "worker") -> list[Path]:
    """Make the server pair (unless there is one) and the client pair ``name``, and admit the
    client's public key. Secret files are 0600, the directories 0700."""
    root = Path(directory)
    old = os.umask(0o077)
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / AUTHORIZED).mkdir(exist_ok=True)
        made = []
        for who in (SERVER, name):
            if (root / f"{who}.key_secret").exists():
                continue
            public, secret = zmq.auth.create_certificates(str(root), who)
            made += [Path(public), Path(secret)]
        shutil.copyfile(root / f"{name}.key", root / AUTHORIZED / f"{name}.key")
    finally:
        os.umask(old)
    os.chmod(root, 0o700)
    os.chmod(root / AUTHORIZED, 0o700)
    for path in root.glob("*.key_secret"):
        os.chmod(path, 0o600)
    return made


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, sec = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeysError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    if secret and sec is None:
        raise KeysError(f"{path}: holds no secret key")
    if secret and os.stat(path).st_mode & 0o077:
        raise KeysError(f"{path}: a secret key must not be readable by others (chmod 600)")
    return public, sec


@dataclass(frozen=True)
class Curve:
    """The keys one process uses: as the server (binds tcp) or as a client (connects)."""

    directory: str
    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def server(cls, directory: str) -> Curve:
        root = Path(directory)
        public, secret = _load(root / f"{SERVER}.key_secret", secret=True)
        if not (root / AUTHORIZED).is_dir():
            raise KeysError(f"{root / AUTHORIZED}: missing (the allow-list of public keys)")
        return cls(str(root), public, secret, public)

    @classmethod
    def client(cls, directory: str, name: str = "worker") -> Curve:
        root = Path(directory)
        public, secret = _load(root / f"{name}.key_secret", secret=True)
        server_public, _ = _load(root / f"{SERVER}.key", secret=False)
        return cls(str(root), public, secret, server_public)

    def serve_on(self, sock: zmq.Socket) -> None:
        """Make the endpoints ``sock`` binds from now on CURVE servers (endpoints bound
        before keep the NULL mechanism: libzmq copies a socket's options at each bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def connect_with(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public

    def authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """The ZAP handler of ``ctx``: admits the public keys in ``authorized/``. A plain
        thread (it works for a gevent process's context too, through a plain shadow)."""
        plain = ctx if type(ctx) is zmq.Context else zmq.Context.shadow(ctx.underlying)
        auth = ThreadAuthenticator(plain, log=logging.getLogger("camstream.zap"))
        auth.start()
        auth.configure_curve(domain=ZAP_DOMAIN, location=str(Path(self.directory) / AUTHORIZED))
        return auth


def require_tcp_keys(endpoints: list[str], keys_dir: str) -> None:
    """No unauthenticated TCP: a tcp endpoint without a keys directory is refused."""
    tcp = [e for e in endpoints if e and e.startswith("tcp://")]
    if tcp and not keys_dir:
        raise KeysError(f"{tcp[0]} needs CURVE keys: pass --curve-keys DIR "
                        "(make them with: camstream keys generate DIR)")
    bad = [e for e in endpoints if e and not e.startswith("tcp://")]
    if bad:
        raise KeysError(f"{bad[0]}: expected tcp://HOST:PORT")
