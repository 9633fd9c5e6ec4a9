"""Ingest's event handlers, apart from any transport: ``Conn``, the one event table, logins and
the frame handler.

Both protocol revisions (camstream.ingest.eio4 through python-socketio, camstream.ingest.eio3
for the Android app) end here, each connection as a :class:`Conn`. Nothing here does I/O of
its own or imports gevent: what blocks or waits (hashing a password, a pause, a disconnect
later) is passed in, and the transports yield after each message, so the handlers run, and are
tested, without a server.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable

from camstream import wire
from camstream.config import Config
from camstream.ingest.ledger import UNAUTHENTICATED, ClientCounts, Ledger
from camstream.ingest.limits import (
    ConnectionCount,
    FrameRate,
    IncompleteEvents,
    LoginThrottle,
    transport_cap,
)
from camstream.users import Users, UsersError, check_name

log = logging.getLogger("camstream.ingest")

DEFAULT_REPLY_EVENT = "onAuthentication"
REFUSED_LOGIN_GRACE = 0.5  # seconds between a refused login's reply and the disconnect
UNHANDLED = object()       # on_event's answer to an unknown event: no ack, as the reference
# the events of the table whose handler sends the ack itself, when the frame leaves its mailbox
# (``on_frame(conn, args, ack)``): a transport passes it the ack rather than acking the return
ACKED_LATER = frozenset({"frame"})
# what an event of the table is answered when its connection is unknown to ingest
NOT_CONNECTED = {"authenticate": False,
                 "frame": {"accepted": False, "seq": 0, "reason": "not connected"}}


class Conn:
    """One client connection, whichever protocol revision it speaks.

    ``sid`` is the transport's session id: with long polling, it is the connection's only
    credential, so it never leaves ingest (not in a log line at INFO, not on the bus).
    ``number`` names the connection everywhere else."""

    __slots__ = ("sid", "number", "address", "name", "counts", "emit", "disconnect", "logged",
                 "rate")

    def __init__(self, sid: str, address: str, emit, disconnect) -> None:
        self.sid = sid
        self.number = "?"  # given by Handlers.connect
        self.address = address
        self.name: str | None = None
        self.counts: ClientCounts | None = None
        self.emit = emit              # emit(event, *args) to this client only
        self.disconnect = disconnect  # disconnect() this client
        self.logged: set[str] = set()
        self.rate: FrameRate | None = None

    @property
    def label(self) -> str:
        """How log lines name the connection."""
        return f"connection {self.number} from {self.address}"


def call_inline(fn: Callable, *args):
    """The default way to run a blocking call (a password hash): right here."""
    return fn(*args)


class Handlers:
    """The event handlers, protocol-agnostic: both socket.io revisions call these.

    :param dispatcher: takes the frames (``open``, ``offer``, ``close``: camstream.ingest.dispatch).
    :param publish: sends one bus message (multipart) on the event bus.
    :param later: ``later(seconds, fn)`` runs ``fn`` after a delay, without blocking.
    :param blocking: ``blocking(fn, *args)`` runs a CPU-heavy call (the password hash).
    :param pause: ``pause(seconds)`` waits, letting other connections run.
    """

    def __init__(self, config: Config, users: Users, ledger: Ledger, dispatcher,
                 publish: Callable[[list], None], later: Callable[[float, Callable], object],
                 blocking: Callable = call_inline,
                 pause: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.users = users
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.publish = publish
        self.later = later
        self.blocking = blocking
        self.pause = pause
        self.unauthenticated = ledger.client(UNAUTHENTICATED)
        self.conns: dict[str, Conn] = {}
        self.numbered: dict[str, Conn] = {}  # the same, by connection number
        self.numbers = itertools.count(1)
        self.connections = ConnectionCount(config.max_connections_per_ip)
        ledger.connection_limits.append(self.connections)  # refusals in /healthz
        self.throttle = LoginThrottle()
        # the largest message either transport takes (a websocket message, a polling body)
        self.max_message = transport_cap(config.max_frame_bytes)
        self.incomplete = IncompleteEvents(self.max_message, config.max_incomplete_bytes,
                                           config.incomplete_timeout)
        self.draining = False
        # the one event table: event name -> handler(conn, args) -> the ack's data
        self.events: dict[str, Callable[[Conn, tuple], object]] = {
            "authenticate": self.on_authenticate,
            "receiveImage": self.on_receive_image,
            "frame": self.on_frame,
        }

    # -- connections -------------------------------------------------------------------------

    def connect(self, conn: Conn) -> bool:
        """Admit a connection, unless its address holds too many already (or we are stopping)."""
        if self.draining:
            return False
        if not self.connections.acquire(conn.address):
            if self.connections.first_refusal(conn.address):  # once per address, not per try
                log.warning("refusing connections from %s: it has %d open "
                            "(--max-connections-per-ip)", conn.address, self.connections.limit)
            return False
        conn.number = str(next(self.numbers))
        self.conns[conn.sid] = conn
        self.numbered[conn.number] = conn
        log.info("%s", conn.label)
        log.debug("connection %s is transport session %s", conn.number, conn.sid)
        return True

    def disconnect(self, conn: Conn, reason: str = "") -> None:
        if self.conns.pop(conn.sid, None) is None:
            return
        self.numbered.pop(conn.number, None)
        self.connections.release(conn.address)
        if conn.name:
            self._leave(conn)
        log.info("%s closed%s", conn.label, f" ({reason})" if reason else "")

    def login(self, conn: Conn, username, password) -> bool:
        """Check credentials (any, without --auth) and attach the connection to its stream."""
        try:
            name = check_name(username)
        except UsersError as e:
            log.warning("login refused from %s: %s", conn.address, e)
            return False
        if self.config.auth and not self.check_password(conn.address, name, password):
            return False
        if conn.sid not in self.conns:  # it left while the password was being checked
            return False
        if conn.name:
            self._leave(conn)
        conn.name = name
        conn.counts = self.ledger.client(name)
        conn.rate = FrameRate(self.config.max_fps)
        self.ledger.joined(name)
        self.dispatcher.open(conn.number, name, conn.counts)
        self.publish(wire.Event(name, "join").pack())
        log.info("%s logged in as %r", conn.label, name)
        return True

    def login_wait(self, address: str, username) -> float:
        """Seconds before a login from ``address`` as ``username`` is checked again (0 without
        --auth, where nothing is throttled)."""
        if not self.config.auth:
            return 0.0
        return math.ceil(self.throttle.wait(address, str(username)) * 10) / 10

    def check_password(self, address: str, name: str, password) -> bool:
        """The users file's verdict, through the login throttle (camstream.ingest.limits): the
        attempt is counted before the password is hashed (``blocking``: off the event loop)."""
        refused, slow = self.throttle.begin(address, name)
        if refused:
            self.ledger.limit_hits["login_throttled"] += 1
            log.warning("login refused for user %r from %s: too many failed logins, "
                        "next try in %.1f s", name, address, refused)
            return False
        ok = False
        try:
            if slow:
                self.pause(slow)  # failures for this name from anywhere: slowed, not refused
            ok = self.blocking(self.users.verify, name, password)
        finally:
            self.throttle.end(address, name, ok)
        if not ok:
            log.warning("login failed for user %r from %s", name, address)
        return ok

    def _leave(self, conn: Conn) -> None:
        self.dispatcher.close(conn.number)
        left = self.ledger.left(conn.name)
        if not left:
            self.publish(wire.Event(conn.name, "leave").pack())
        conn.name = None

    # -- events ------------------------------------------------------------------------------

    def on_event(self, conn: Conn, event: str, args: tuple):
        """One event from a client, through the event table: the ack's data, or UNHANDLED for
        an event nobody handles (logged once per connection; never acked, even when asked,
        as the reference server: no handler, no answer)."""
        handler = self.events.get(event)
        if handler is None:
            self.on_unknown(conn, event)
            return UNHANDLED
        return handler(conn, args)

    def on_authenticate(self, conn: Conn, args: tuple) -> bool:
        """The prototype's ``authenticate(username, password, replyEvent)``: reply to that
        client only; on failure disconnect it shortly after the reply."""
        if len(args) not in (2, 3):
            self._log_once(conn, "auth-args", "authenticate needs (username, password, "
                           "replyEvent), got %d arguments", len(args))
            return False
        reply = args[2] if len(args) == 3 and isinstance(args[2], str) else DEFAULT_REPLY_EVENT
        ok = self.login(conn, args[0], args[1])
        conn.emit(reply, ok)
        if not ok:
            self.later(REFUSED_LOGIN_GRACE, conn.disconnect)
        return ok

    def on_receive_image(self, conn: Conn, args: tuple) -> None:
        """The prototype's ``receiveImage(jpeg)``: a frame, acked with nothing."""
        self.on_frame(conn, args)

    def on_frame(self, conn: Conn, args: tuple, ack=None) -> dict | None:
        """``frame(meta, jpeg)`` with an ack, or the prototype's ``receiveImage(jpeg)``.
        With ``ack`` (a callable), the ack is deferred: an accepted frame's goes out when it
        leaves the mailbox (backpressure: camstream.ingest.dispatch), a refusal's at once."""
        counts = conn.counts or self.unauthenticated
        counts.received += 1
        seq = counts.received
        reason = self._check(conn, args)
        if reason:
            counts.refuse(reason)
            self._log_once(conn, reason, "refusing frames from %s: %s",
                           conn.name or conn.address, reason)
            result = {"accepted": False, "seq": seq, "reason": reason}
            if ack is None:
                return result
            ack(result)
            return None
        jpeg = args[-1]
        header = wire.Header(conn.name, conn.number, seq, time.time_ns(), len(jpeg)).pack()
        if ack is None:
            self.dispatcher.offer(conn.number, header, jpeg, seq)
            return {"accepted": True, "seq": seq, "dropped": counts.dropped}
        self.dispatcher.offer(conn.number, header, jpeg, seq, lambda: ack(
            {"accepted": True, "seq": seq, "dropped": counts.dropped}))
        return None

    def _check(self, conn: Conn, args: tuple) -> str:
        if conn.name is None:
            return "unauthenticated"
        if self.draining:
            return "shutting down"
        if not args or len(args) > 2 or (len(args) == 2 and not isinstance(args[0], dict)):
            return "malformed: expected frame(meta: object, jpeg: bytes) or receiveImage(jpeg)"
        jpeg = args[-1]
        if not isinstance(jpeg, (bytes, bytearray)):
            return f"not bytes: the frame arrived as {type(jpeg).__name__}"
        if not jpeg:
            return "empty frame"
        if len(jpeg) > self.config.max_frame_bytes:
            return "too large"
        if not conn.rate.allow():
            return "rate limited"
        return ""

    def on_unknown(self, conn: Conn, event: str) -> None:
        self._log_once(conn, f"event {event}", "ignoring unknown event %r from %s", event,
                       conn.name or conn.address)

    def _log_once(self, conn: Conn, kind: str, msg: str, *args) -> None:
        if kind not in conn.logged and len(conn.logged) < 32:
            conn.logged.add(kind)
            log.warning(msg, *args)

    # -- users -------------------------------------------------------------------------------

    def reload_users(self) -> None:
        """SIGHUP: read the users file again; disconnect the users who were removed."""
        try:
            users = Users.load(self.config.users_file, missing_ok=not self.config.auth)
        except UsersError as e:
            log.error("users not reloaded: %s", e)
            return
        self.users = users
        log.info("users reloaded from %s: %d users", self.config.users_file, len(users))
        if self.config.auth:
            for conn in list(self.conns.values()):
                if conn.name and conn.name not in users:
                    log.info("disconnecting %r: no longer a user", conn.name)
                    conn.disconnect()
