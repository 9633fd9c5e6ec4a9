"""Whether a connecting tcp socket reaches its peer, told in the log.

A ZeroMQ socket that connects to a dead endpoint, or whose CURVE handshake the server refuses,
waits in silence forever: ZeroMQ retries without a word. :class:`Reach` reads the socket's
monitor events (ZeroMQ's socket monitor, an inproc PAIR) and turns them into a line each:
connected, handshake refused, connection lost, and after ``patience`` seconds without a
handshake what is likely wrong. Used by ``camstream worker`` on its frame pipeline.
"""
from __future__ import annotations

import logging
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("camstream.reach")

EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
          | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the server's key check",
          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "a protocol error",
          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail given"}
KEY_HINT = ("this machine's public key is not in the server's authorized/ (copy it there and "
            "restart the server), or the server.key in --curve-keys is not that server's")


class Reach:
    """Watch ``sock`` (already connecting to ``endpoint``); call :meth:`read` when
    :attr:`monitor` is readable and :meth:`tick` now and then."""

    def __init__(self, sock: zmq.Socket, endpoint: str, patience: float = 5.0) -> None:
        self.endpoint = endpoint
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.patience = patience
        self.since = time.monotonic()
        self.tcp = False          # a tcp connection is up (ZeroMQ reconnects by itself)
        self.shaken = False       # the CURVE handshake succeeded on it
        self.ever_shaken = False
        self.failures_said: set[int] = set()
        self.warned = False       # the "nothing after patience seconds" line, once per outage

    def read(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            self.take(event)

    def take(self, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.tcp = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            log.info("%s %s: handshake done", "reached" if not self.ever_shaken
                     else "reached again", self.endpoint)
            self.shaken = self.ever_shaken = True
            self.warned = False
        elif event in FAILED:
            if event not in self.failures_said:  # ZeroMQ retries every few seconds
                self.failures_said.add(event)
                log.warning("the CURVE handshake with %s failed (%s): %s", self.endpoint,
                            FAILED[event], KEY_HINT)
        elif event == zmq.EVENT_DISCONNECTED:
            if self.shaken:
                log.warning("lost the connection to %s; reconnecting", self.endpoint)
                self.since = time.monotonic()
            self.tcp = self.shaken = False

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.shaken or self.warned or now - self.since < self.patience:
            return
        self.warned = True
        if self.tcp or self.failures_said:
            log.warning("no handshake with %s after %.0f s, though it accepts connections: "
                        "%s", self.endpoint, self.patience, KEY_HINT)
        else:
            log.warning("no connection to %s after %.0f s: is 'camstream serve "
                        "--worker-endpoint' or 'camstream pool' running there, on that port, "
                        "and does a firewall let it through? (retrying)", self.endpoint,
                        self.patience)

    def close(self) -> None:
        self.monitor.close(linger=0)
