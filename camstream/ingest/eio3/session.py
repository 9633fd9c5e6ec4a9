"""One Engine.IO 3 / Socket.IO 4 session, sans I/O: packets and the clock in, packets and events
out (as the ``websockets`` library's protocol layer is).

A :class:`Session` never reads, writes, sleeps or reads a clock: the transport
(camstream.ingest.eio3.transport) gives it each packet a client sent with the time it came
(:meth:`Session.receive`), sends what it queues in :attr:`Session.outgoing`, and acts on the
events it returns: an event for the handlers, the namespace left or joined again, the session
closed. The heartbeat (a client silent for pingInterval + pingTimeout is dropped) and the
websocket upgrade (:class:`Upgrade`) are decided here, so both are unit tests with a clock
that is a plain float (tests/unit/test_eio3_session.py).
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass

from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG
from socketio.packet import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    CONNECT_ERROR,
    DISCONNECT,
    EVENT,
    Packet,
)

from camstream.ingest.eio3.codec import ProtocolError, add_attachment, decode_sio, encode_sio
from camstream.ingest.limits import IncompleteEvents

UPGRADE_TIMEOUT = 10.0      # seconds from websocket probe to upgrade (as engine.io 3)
MAX_PING_DATA = 64          # characters of a ping's data (clients send none, or "probe")


# -- what a session tells its transport ---------------------------------------------------------

@dataclass(frozen=True)
class EventReceived:
    """A complete Socket.IO event for the handlers; answer with :meth:`Session.ack` when
    ``ack_id`` is not None."""
    name: str
    args: tuple
    ack_id: int | None


@dataclass(frozen=True)
class NamespaceLeft:
    """The client sent ``41``: it left the default namespace (not the connection)."""


@dataclass(frozen=True)
class RejoinRequested:
    """A CONNECT after ``41``: admit the connection again (:meth:`Session.rejoined`)."""


@dataclass(frozen=True)
class Closed:
    """The session is closed; ``goodbye`` False: no close packet (the client reconnects)."""
    reason: str
    goodbye: bool


# -- the upgrade from long polling to a websocket -----------------------------------------------

class Upgrade:
    """The probe over a new websocket: ``2probe`` answered ``3probe`` (and the held long poll
    released with a noop), then upgrade ``5``, all within UPGRADE_TIMEOUT."""

    def __init__(self, now: float, timeout: float = UPGRADE_TIMEOUT) -> None:
        self.deadline = now + timeout
        self.probed = False
        self.done = False

    def remaining(self, now: float) -> float:
        """Seconds left to finish; 0 once the upgrade is abandoned for lateness."""
        return max(0.0, self.deadline - now)

    def receive(self, message, now: float) -> tuple[list, list]:
        """One websocket message during the upgrade: ``(to the websocket, to the polling
        queue)``. ProtocolError for anything else, or when it is too late."""
        if now >= self.deadline:
            raise ProtocolError("websocket upgrade took too long")
        if not self.probed:
            if message != "2probe":
                raise ProtocolError("websocket upgrade without 2probe")
            self.probed = True
            return ["3probe"], [(NOOP, None)]  # the client pauses polling: let it finish
        if message != "5":
            raise ProtocolError("websocket probe not followed by upgrade")
        self.done = True
        return [], []


# -- the session ---------------------------------------------------------------------------------

class Session:
    """One Engine.IO 3 client's protocol state: the handshake, the heartbeat clock, the
    Socket.IO packet awaiting attachments, the namespace, the upgrade, the close.

    :param now: the time of the handshake (seconds, any monotonic clock).
    :param websocket: the session starts over a websocket (no upgrade offered).
    :param incomplete: the bytes held for events awaiting attachments, all sessions together.
    :param hits: the counter of what limits stopped (/healthz ``limits``).
    """

    def __init__(self, sid: str, now: float, ping_interval: float, ping_timeout: float,
                 incomplete: IncompleteEvents, hits: collections.Counter | None = None,
                 websocket: bool = False) -> None:
        self.sid = sid
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.incomplete = incomplete
        self.hits = hits if hits is not None else collections.Counter()
        self.outgoing: list[tuple[int, object]] = []  # (type, data), for the transport to send
        self.over_websocket = False  # the transport is a websocket now (use_websocket)
        self.upgrade: Upgrade | None = None
        self.joined = True      # in the default namespace (Socket.IO 4 joins it unasked)
        self.closed = False
        self.closed_at = 0.0
        self.last_seen = now
        self.pending: Packet | None = None  # a binary packet waiting for its attachments
        self.send(OPEN, json.dumps({
            "sid": sid, "upgrades": [] if websocket else ["websocket"],
            "pingInterval": round(ping_interval * 1000),
            "pingTimeout": round(ping_timeout * 1000)}, separators=(",", ":")))

    @property
    def key(self) -> tuple[str, str]:
        """The session's key in the incomplete-events budget."""
        return ("eio3", self.sid)

    # -- the handshake's second half ------------------------------------------------------------

    def accept(self) -> None:
        """Socket.IO 4: the default namespace connected, unasked."""
        self.send_sio(Packet(CONNECT))

    def refuse(self, now: float) -> Closed | None:
        """The handlers refused the connection (e.g. too many from its address)."""
        self.send_sio(Packet(CONNECT_ERROR, data="connection refused"))
        return self.close("connection refused", now)

    def rejoined(self, ok: bool) -> None:
        """The answer to :class:`RejoinRequested`: unanswered when admitted, as socket.io 2
        does for the default namespace (its ``40`` went with the handshake)."""
        if ok:
            self.joined = True
        else:
            self.send_sio(Packet(CONNECT_ERROR, data="connection refused"))

    # -- sending ---------------------------------------------------------------------------------

    def send(self, ptype: int, data=None) -> None:
        if not self.closed:
            self.outgoing.append((ptype, data))

    def send_sio(self, pkt: Packet) -> None:
        for ptype, data in encode_sio(pkt):
            self.send(ptype, data)

    def emit(self, event: str, *args) -> None:
        """An event to this client."""
        self.send_sio(Packet(EVENT, data=[event, *args]))

    def ack(self, ack_id: int, result) -> None:
        """The answer to an :class:`EventReceived` that asked for one."""
        self.send_sio(Packet(ACK, id=ack_id, data=[] if result is None else [result]))

    def disconnect(self, now: float) -> Closed | None:
        """Say goodbye (Socket.IO then Engine.IO) and close: the client takes it as "sent
        away" and does not reconnect."""
        if self.closed:
            return None
        self.send_sio(Packet(DISCONNECT))
        return self.close("server disconnect", now)

    def take_outgoing(self) -> list[tuple[int, object]]:
        """What the transport is to send now, in order."""
        out, self.outgoing = self.outgoing, []
        return out

    # -- the clock --------------------------------------------------------------------------------

    def deadline(self) -> float:
        """When the client is dropped unless it sends something (any packet counts)."""
        return self.last_seen + self.ping_interval + self.ping_timeout

    def timed_out(self, now: float) -> bool:
        return not self.closed and now >= self.deadline()

    def expire(self, now: float) -> Closed | None:
        """Close the session if the client was silent too long."""
        if not self.timed_out(now):
            return None
        return self.close(f"ping timeout ({self.ping_interval + self.ping_timeout:g} s "
                          "without a packet)", now)

    # -- the upgrade ------------------------------------------------------------------------------

    def use_websocket(self) -> None:
        """From now on packets go over a websocket (a polling client's queue is flushed)."""
        self.over_websocket = True

    def may_upgrade(self) -> bool:
        """A websocket with this sid may start the probe: not closed, not one already, not
        probing already."""
        return not self.closed and not self.over_websocket and self.upgrade is None

    def begin_upgrade(self, now: float) -> Upgrade:
        self.upgrade = Upgrade(now)
        return self.upgrade

    def end_upgrade(self, upgraded: bool) -> None:
        """The probe finished (``upgraded``: from now on the websocket is the transport)."""
        self.upgrade = None
        if upgraded and not self.closed:
            self.use_websocket()

    # -- closing ----------------------------------------------------------------------------------

    def close(self, reason: str, now: float, goodbye: bool = True) -> Closed | None:
        """Close once, whoever asks. A polling client is told on its pending or next poll:
        with ``goodbye`` a close packet (as the reference), without a noop that releases the
        poll. None when it was closed already."""
        if self.closed:
            return None
        if not self.over_websocket:
            self.outgoing.append((CLOSE, None) if goodbye else (NOOP, None))
        self.closed = True
        self.closed_at = now
        self.pending = None
        self.incomplete.done(self.key)
        return Closed(reason, goodbye)

    # -- receiving --------------------------------------------------------------------------------

    def receive(self, ptype: int, data, now: float) -> list:
        """One Engine.IO packet from the client (any transport): the events it makes.
        ProtocolError for what the revision does not allow (the transport closes)."""
        self.last_seen = now
        if ptype == MESSAGE:
            return self._message(data, now)
        if ptype == PING:
            if data and len(data) > MAX_PING_DATA:
                self.hits["ping_too_big"] += 1
                raise ProtocolError(f"a ping of {len(data)} bytes (at most {MAX_PING_DATA})")
            self.send(PONG, data or None)
            return []
        if ptype == CLOSE:
            closed = self.close("client disconnect", now, goodbye=False)
            return [closed] if closed else []
        if ptype != NOOP:
            raise ProtocolError(f"unexpected engine.io packet type {ptype}")
        return []

    def _message(self, data, now: float) -> list:
        if self.pending is not None:
            if isinstance(data, str):
                raise ProtocolError("text message while a binary attachment was expected")
            reason = self.incomplete.add(self.key, len(data))
            if reason:
                self.hits["incomplete_bytes"] += 1
                raise ProtocolError(reason)
            if not add_attachment(self.pending, data):
                return []
            pkt, self.pending = self.pending, None
            self.incomplete.done(self.key)
            return self._sio(pkt, now)
        if not isinstance(data, str):
            raise ProtocolError("binary message without a packet announcing it")
        pkt = decode_sio(data)
        if pkt.attachment_count:
            self.pending = pkt
            self.incomplete.start(self.key)  # --incomplete-timeout
            return []
        return self._sio(pkt, now)

    def _sio(self, pkt: Packet, now: float) -> list:
        """One complete Socket.IO packet."""
        kind = pkt.packet_type
        if (pkt.namespace or "/") != "/":
            if kind == CONNECT:  # only the default namespace exists here
                self.send_sio(Packet(CONNECT_ERROR, data="Invalid namespace",
                                     namespace=pkt.namespace))
            return []  # as socket.io 2: packets for a namespace not joined are ignored
        if not self.joined:  # after the client's 41: only a CONNECT means something
            return [RejoinRequested()] if kind == CONNECT else []
        if kind in (EVENT, BINARY_EVENT):
            data = pkt.data
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                raise ProtocolError("event without a name")
            return [EventReceived(data[0], tuple(data[1:]), pkt.id)]
        if kind == DISCONNECT:  # the namespace, not the connection (as socket.io 2)
            self.joined = False
            return [NamespaceLeft()]
        if kind not in (CONNECT, ACK, BINARY_ACK):  # already connected; never asks for acks
            raise ProtocolError(f"unexpected socket.io packet type {kind}")
        return []
