"""A daemon's start, once its configuration is checked: the listening sockets, the record
directory, the TLS files loaded once, the runtime directory's lock, the umask and the process
title. Everything that touches the machine happens here, where the daemon starts (serve, pool,
display --web), never while a configuration is checked (which SIGHUP repeats).

Each failure is one line (:class:`StartError`), printed by ``camstream`` with exit code 2.
"""
from __future__ import annotations

import errno
import os
import socket
import ssl
from pathlib import Path

UMASK = 0o007  # recordings readable by the service's group (sockets: camstream.rundir)


class StartError(Exception):
    """The daemon cannot start here (a port in use, a runtime directory taken); one line."""


def listen(ip: str, port: int) -> socket.socket:
    """A listening TCP socket on ``ip:port``, inheritable so that children serve it."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartError(f"cannot listen on {ip}:{port}: the port is in use "
                             "(another camstream? choose one with -p PORT)") from None
        raise StartError(f"cannot listen on {ip}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def claim_runtime_dir(path: str) -> int:
    """Create or check the runtime directory and lock it (camstream.rundir): the lock's fd."""
    from camstream.bus import worker_frames
    from camstream.rundir import RuntimeDirError, claim
    try:
        return claim(path, worker_frames(9999))
    except RuntimeDirError as e:
        raise StartError(str(e)) from None


def make_record_dir(record_dir: str, given: str) -> None:
    """Create ``--record``'s directory (``given`` as the user wrote it) and check that the
    daemon may write there."""
    try:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartError(f"--record {given}: {e.strerror}") from None
    if not os.access(record_dir, os.W_OK):
        raise StartError(f"--record {given}: not writable")


def load_tls(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server's TLS context from ``--certfile``/``--keyfile``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise StartError(f"--certfile/--keyfile: cannot load them: {e}") from None
    return context


def become(title: str, log_level: str) -> None:
    """Take the daemon's process title, logging and umask."""
    import setproctitle

    from camstream.proc import setup_logging
    setproctitle.setproctitle(f"camstream: {title}")
    setup_logging(log_level)
    os.umask(UMASK)


def notifier():
    """The systemd notifier of this service (nothing outside systemd)."""
    from camstream.supervisor.notify import Notifier
    return Notifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
