"""systemd's notify protocol: a datagram of ``KEY=value`` lines to $NOTIFY_SOCKET.

Documented in sd_notify(3); it is a few lines, so camstream speaks it directly. Without a
socket (not started by systemd with Type=notify) every call does nothing.
"""
from __future__ import annotations

import logging
import socket

log = logging.getLogger("camstream.notify")


class Notifier:
    def __init__(self, notify_socket: str | None, watchdog_usec: str | None = None) -> None:
        self.address = None
        if notify_socket:
            # an abstract socket is written with a leading '@' and is sent with a NUL
            self.address = "\0" + notify_socket[1:] if notify_socket[0] == "@" else notify_socket
        self.watchdog_interval = int(watchdog_usec) / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None

    def send(self, **fields: object) -> None:
        """``send(READY=1, STATUS="...")``: one datagram, keys as sd_notify spells them."""
        if self.address is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as e:  # systemd went away: nothing to tell, nothing to stop for
            log.debug("notify failed: %s", e)
