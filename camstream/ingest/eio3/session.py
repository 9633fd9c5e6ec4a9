"""The legacy protocol revision: Engine.IO 3 / Socket.IO protocol 4, beside python-socketio 5.

The AndroidCamStream app (Java ``io.socket:socket.io-client:1.0.0``) and the JS
socket.io-client 2.x speak Engine.IO 3 carrying Socket.IO protocol 4. python-socketio 5 answers
``EIO=3`` with HTTP 400, so :func:`wrap` puts this layer in front of it on the same port:
requests to ``/socket.io/`` with ``EIO=3`` are served here, everything else goes on to
python-socketio (and ingest's ``/healthz``, ``/metrics``). Both revisions end in the same
:class:`camstream.ingest.Ingest` methods, each legacy session getting its own ``Conn``.

Specifications:

- Engine.IO 3: https://github.com/socketio/engine.io-protocol/tree/v3
- Socket.IO 4: https://github.com/socketio/socket.io-protocol/tree/v4

Protocol facts this module relies on (and what differs from Engine.IO 4 / Socket.IO 5):

- Engine.IO packet = ``<type digit><data>``; types open 0, close 1, ping 2, pong 3, message 4,
  upgrade 5, noop 6 (the numbering of ``engineio.packet``). Binary data travels as a binary
  websocket message whose *first byte is the packet type* (``0x04``), unlike Engine.IO 4 where
  a binary message is the bare data. With ``b64=1`` (and whenever a text payload must carry
  binary) a binary packet is the text ``b4<base64>``: Engine.IO 4 writes ``b<base64>``.
- Polling payloads (Engine.IO 4 joins packets with ``\\x1e`` instead):
  text ``<length>:<packet>`` repeated, the length counted in UTF-16 code units (JS string
  length), body UTF-8; binary (``application/octet-stream``) repeats
  ``<0 text | 1 binary><length as one byte per decimal digit><0xFF><packet>``, where a text
  packet is UTF-8 bytes and a binary one starts with its type byte, both counted in bytes.
- Handshake: the open packet ``0{"sid","upgrades":["websocket"],"pingInterval","pingTimeout"}``
  (milliseconds). Heartbeats run the other way from Engine.IO 4: the *client* sends ping
  ``2``, the server answers pong ``3``; a client silent for pingInterval + pingTimeout is
  dropped (any packet counts as a sign of life).
- Upgrade: over a new websocket with the session's sid the client sends ``2probe``, the server
  answers ``3probe`` and releases the pending long poll with a noop ``6``; the client then sends
  upgrade ``5`` and polling stops. A websocket without sid starts a session of its own.
- Socket.IO 4 packets have the same text form as Socket.IO 5
  (``<type>[<attachments>-][<nsp>,][<ack id>][<json>]``), so ``socketio.packet.Packet`` codes
  them. Differences: the server connects the default namespace without waiting for a client
  CONNECT (it sends ``40`` right after open, with no payload), connect-time ``auth`` does not
  exist, and type 4 is a plain ERROR. A binary event ``451-["receiveImage",{"_placeholder":true,
  "num":0}]`` is followed by its attachments as binary Engine.IO messages.

Layout: pure codecs first (bytes and strings in, packets out, no I/O: every edge case is a
unit test), then the transports (long polling, websocket) and the sessions. Event handlers run
inline in the greenlet that reads the connection (the POST request, or the websocket's request
greenlet), never a greenlet per event, so a flooding client cannot queue work without bound.
Whatever a client sends that this layer does not understand is a protocol error for that
connection only: one log line, and the connection is closed.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import socket
import time
import urllib.parse

import gevent
import gevent.lock
import gevent.queue
from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Header, WebSocket
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

from camstream.ingest.limits import transport_cap
from camstream.ingest.wsfast import CLOSE_TOO_BIG, MessageTooBig, check_length, close_with

log = logging.getLogger("camstream.legacy")

MAX_ATTACHMENTS = 8         # binary attachments of one Socket.IO packet
MAX_PAYLOAD_PACKETS = 256   # Engine.IO packets in one polling payload
UPGRADE_TIMEOUT = 10.0      # seconds from websocket probe to upgrade (as engine.io 3)
CLOSED_GRACE = 5.0          # seconds a closed polling session waits for its last poll
MAX_PING_DATA = 64          # characters of a ping's data (clients send none, or "probe")
TEXT_TYPE = "text/plain; charset=UTF-8"
BINARY_TYPE = "application/octet-stream"


class ProtocolError(ValueError):
    """Something a client sent that the legacy revision does not allow."""


# -- codecs: Engine.IO 3 packets and payloads -------------------------------------------------

def _packet_type(char: str) -> int:
    if len(char) != 1 or not "0" <= char <= "6":
        raise ProtocolError(f"unknown packet type {char[:8]!r}")
    return ord(char) - 48


def encode_packet(ptype: int, data: str | bytes | bytearray | None = None,
                  b64: bool = False) -> str | bytes:
    """One packet: ``<type><text>``, binary ``<type byte><bytes>``, or ``b<type><base64>``."""
    if data is None:
        return str(ptype)
    if isinstance(data, str):
        return f"{ptype}{data}"
    if b64:
        return f"b{ptype}{base64.b64encode(data).decode('ascii')}"
    return bytes((ptype,)) + data


def decode_packet(encoded: str | bytes | bytearray) -> tuple[int, str | bytes | bytearray]:
    """One packet, text or binary, into ``(type, data)``.

    A ``bytearray`` (what the websocket reader produces) loses its type byte in place, which
    is O(1) for a bytearray: the frame is not copied. ``bytes`` are sliced (one copy).
    """
    if isinstance(encoded, str):
        if not encoded:
            raise ProtocolError("empty packet")
        if encoded[0] != "b":
            return _packet_type(encoded[0]), encoded[1:]
        ptype = _packet_type(encoded[1:2])
        try:
            return ptype, base64.b64decode(encoded[2:], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid base64 in a b64 packet") from None
    if not encoded:
        raise ProtocolError("empty binary packet")
    ptype = encoded[0]
    if ptype > 6:
        raise ProtocolError(f"unknown binary packet type {ptype}")
    if isinstance(encoded, bytearray):
        del encoded[:1]
        return ptype, encoded
    return ptype, bytes(encoded[1:])


def _utf16_len(text: str) -> int:
    """Length as JS counts it: characters outside the BMP are two code units."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def encode_payload(packets: list[tuple[int, str | bytes | bytearray | None]],
                   b64: bool = False) -> tuple[bytes, bool]:
    """Packets for one long-poll response: ``(body, is_binary)``.

    Binary framing only when a packet is binary and the client did not ask for ``b64``;
    otherwise the text framing, with binary packets as ``b<type><base64>``.
    """
    if not b64 and any(isinstance(d, (bytes, bytearray)) for _, d in packets):
        parts = []
        for ptype, data in packets:
            if isinstance(data, (bytes, bytearray)):
                flag, raw = 1, encode_packet(ptype, data)
            else:
                flag, raw = 0, encode_packet(ptype, data).encode("utf-8")
            parts.append(bytes([flag, *(ord(c) - 48 for c in str(len(raw))), 255]))
            parts.append(raw)
        return b"".join(parts), True
    if not packets:
        return b"0:", False
    text = "".join(f"{_utf16_len(p)}:{p}" for p in
                   (encode_packet(ptype, data, b64=True) for ptype, data in packets))
    return text.encode("utf-8"), False


def decode_text_payload(text: str, max_packets: int = MAX_PAYLOAD_PACKETS) -> list[tuple]:
    """``<length>:<packet>...`` (lengths in UTF-16 code units) into ``[(type, data)]``."""
    if not text:
        raise ProtocolError("empty payload")
    ascii_only = text.isascii()
    packets = []
    pos, end = 0, len(text)
    while pos < end:
        colon = text.find(":", pos, pos + 11)
        digits = text[pos:colon] if colon >= 0 else ""
        if not digits.isascii() or not digits.isdigit():
            raise ProtocolError("payload: missing or bad length before ':'")
        units = int(digits)
        start = colon + 1
        if ascii_only:
            stop = start + units
        else:  # walk the characters, counting surrogate pairs as two units
            stop, counted = start, 0
            while counted < units and stop < end:
                counted += 2 if ord(text[stop]) > 0xFFFF else 1
                stop += 1
            if counted != units:
                raise ProtocolError("payload: length splits a character or runs past the end")
        if stop > end:
            raise ProtocolError("payload: packet runs past the end")
        if units:  # engine.io-parser skips empty packets ("0:")
            if len(packets) >= max_packets:
                raise ProtocolError(f"payload: more than {max_packets} packets")
            packets.append(decode_packet(text[start:stop]))
        pos = stop
    return packets


def decode_binary_payload(body: bytes, max_packets: int = MAX_PAYLOAD_PACKETS) -> list[tuple]:
    """``<0|1><decimal digit bytes><0xFF><packet>...`` into ``[(type, data)]``.

    A binary packet's data is copied once out of the body; nothing else is.
    """
    if not body:
        raise ProtocolError("empty payload")
    view = memoryview(body)
    packets = []
    pos, end = 0, len(body)
    while pos < end:
        kind = body[pos]
        if kind > 1:
            raise ProtocolError(f"binary payload: bad packet kind {kind}")
        pos += 1
        length, digits = 0, 0
        while True:
            if pos >= end:
                raise ProtocolError("binary payload: truncated length")
            b = body[pos]
            pos += 1
            if b == 255:
                break
            if b > 9 or digits >= 10:
                raise ProtocolError("binary payload: bad length")
            length = length * 10 + b
            digits += 1
        if not digits or not length:
            raise ProtocolError("binary payload: empty packet")
        if pos + length > end:
            raise ProtocolError("binary payload: packet runs past the end")
        if len(packets) >= max_packets:
            raise ProtocolError(f"payload: more than {max_packets} packets")
        if kind == 0:
            try:
                text = str(view[pos:pos + length], "utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("binary payload: text packet is not UTF-8") from None
            packets.append(decode_packet(text))
        else:
            ptype = body[pos]
            if ptype > 6:
                raise ProtocolError(f"unknown binary packet type {ptype}")
            packets.append((ptype, bytes(view[pos + 1:pos + length])))
        pos += length
    return packets


# -- codecs: Socket.IO 4 packets (socketio.packet.Packet, with the limits it lacks) ------------

def decode_sio(text: str) -> Packet:
    """A Socket.IO text packet. Raises ProtocolError, never anything else."""
    if not text or not "0" <= text[0] <= "6":
        raise ProtocolError(f"unknown socket.io packet type {text[:1]!r}")
    try:
        pkt = Packet(encoded_packet=text)
    except Exception as e:  # noqa: BLE001 (json errors, RecursionError on deep nesting, bad ids)
        raise ProtocolError(f"bad socket.io packet: {type(e).__name__}") from None
    if pkt.packet_type in (BINARY_EVENT, BINARY_ACK):
        if not 1 <= pkt.attachment_count <= MAX_ATTACHMENTS:
            raise ProtocolError(f"{pkt.attachment_count} attachments (1-{MAX_ATTACHMENTS} allowed)")
    elif pkt.attachment_count:
        raise ProtocolError("attachments on a packet that is not binary")
    return pkt


def add_attachment(pkt: Packet, data: bytes | bytearray) -> bool:
    """Give ``pkt`` its next attachment; True when it is complete."""
    try:
        return pkt.add_attachment(data)
    except Exception as e:  # noqa: BLE001 (a placeholder pointing nowhere, a bad "num")
        raise ProtocolError(f"bad binary placeholder: {type(e).__name__}") from None


def encode_sio(pkt: Packet) -> list[tuple[int, str | bytes]]:
    """A Socket.IO packet as Engine.IO messages: the text, then any attachments."""
    encoded = pkt.encode()
    if isinstance(encoded, str):
        return [(MESSAGE, encoded)]
    return [(MESSAGE, encoded[0])] + [(MESSAGE, a) for a in encoded[1:]]


# -- websocket reading, bounded --------------------------------------------------------------

def read_ws_message(ws: WebSocket, limit: int, lock) -> str | bytearray | None:
    """The next text or binary message, or None when the peer closed.

    gevent-websocket's own ``receive`` reads a frame of any announced length into memory; this
    checks the announced length against ``limit`` before reading the payload. Pings are
    answered here, under the session's send lock.
    """
    message = None
    opcode = None
    size = 0
    while True:
        header = Header.decode_header(ws.stream)
        if header.flags:
            raise ProtocolError("websocket frame with reserved bits set (no extension agreed)")
        op = header.opcode
        if op >= 8:
            check_length(header, 0, limit)  # a control frame: 125 bytes at most
            payload = ws.raw_read(header.length) if header.length else b""
            if header.mask and payload:
                payload = header.unmask_payload(payload)
            if op == WebSocket.OPCODE_PING:
                with lock:
                    ws.send_frame(bytes(payload), WebSocket.OPCODE_PONG)
                continue
            if op == WebSocket.OPCODE_PONG:
                continue
            if op == WebSocket.OPCODE_CLOSE:
                return None
            raise ProtocolError(f"unknown websocket opcode {op}")
        if op in (WebSocket.OPCODE_TEXT, WebSocket.OPCODE_BINARY):
            if opcode is not None:
                raise ProtocolError("new websocket message inside a fragmented one")
            opcode = op
        elif op != WebSocket.OPCODE_CONTINUATION or opcode is None:
            raise ProtocolError(f"unexpected websocket opcode {op}")
        check_length(header, size, limit)  # MessageTooBig, before the payload is read
        size += header.length
        payload = ws.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF in a websocket frame")
        if header.mask and payload:
            payload = header.unmask_payload(payload)  # a fresh bytearray (camstream.ingest.wsfast)
        if message is None:
            message = payload if isinstance(payload, bytearray) else bytearray(payload)
        else:
            message += payload
        if header.fin:
            break
    if opcode == WebSocket.OPCODE_TEXT:
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("websocket text message is not UTF-8") from None
    return message


# -- sessions ----------------------------------------------------------------------------------

class OutgoingQueue(gevent.queue.Queue):
    """A session's packets awaiting a poll, ``(type, data)``, with their bytes counted."""

    nbytes = 0

    def _put(self, item) -> None:
        self.nbytes += len(item[1] or "")
        super()._put(item)

    def _get(self):
        item = super()._get()
        self.nbytes -= len(item[1] or "")
        return item


class Session:
    """One Engine.IO 3 client: its transport (long polling, then maybe a websocket), its
    heartbeat clock, the Socket.IO packet awaiting attachments, and its ``Conn``."""

    def __init__(self, server: LegacyServer, sid: str, address: str, b64: bool) -> None:
        from camstream.ingest.app import Conn  # ingest imports this module
        self.server = server
        self.sid = sid
        self.address = address
        self.b64 = b64
        self.queue = OutgoingQueue()  # (type, data) for the next poll
        self.ws: WebSocket | None = None
        self.lock = gevent.lock.Semaphore()  # one writer at a time on the websocket
        self.reader: gevent.Greenlet | None = None
        self.polling = False    # a GET is waiting for packets
        self.posting = False    # a POST is being read
        self.upgrading = False
        self.joined = True      # in the default namespace (Socket.IO 4 joins it unasked)
        self.closed = False
        self.closed_at = 0.0
        self.last_seen = time.monotonic()
        self.pending: Packet | None = None  # a binary packet waiting for its attachments
        self.conn = Conn(sid, address, self.emit, self.disconnect)

    # -- sending ----------------------------------------------------------------------------

    def send(self, ptype: int, data=None) -> None:
        if self.closed:
            return
        if self.ws is None:
            self.queue.put((ptype, data))
            if self.queue.nbytes > self.server.max_queued:  # a client that does not poll
                self.overflow()
            return
        try:
            with self.lock:
                self._send_ws(ptype, data)
        except Exception as e:  # noqa: BLE001 (a dead socket: the reader sees it too)
            self.close(f"transport error: {e or type(e).__name__}")

    def _send_ws(self, ptype: int, data) -> None:
        ws = self.ws
        if ws.closed:
            raise WebSocketError("websocket closed")
        msg = encode_packet(ptype, data)
        ws.send(msg, binary=not isinstance(msg, str))

    def send_sio(self, pkt: Packet) -> None:
        for ptype, data in encode_sio(pkt):
            self.send(ptype, data)

    def emit(self, event: str, *args) -> None:
        """``Conn.emit``: an event to this client only."""
        self.send_sio(Packet(EVENT, data=[event, *args]))

    def disconnect(self) -> None:
        """``Conn.disconnect``: say goodbye (Socket.IO then Engine.IO) and close. The client
        takes it as "sent away" and does not reconnect: for a refused login or a removed user,
        never for a stop (:meth:`drop`)."""
        if not self.closed:
            self.send_sio(Packet(DISCONNECT))
            self.close("server disconnect")

    def drop(self, reason: str = "server stopping") -> None:
        """Close the transport without a goodbye, so that the client reconnects by itself (as
        after a crash, and as the reference server's ``io.close()``)."""
        self.close(reason, goodbye=False)

    # -- closing ----------------------------------------------------------------------------

    def protocol_error(self, reason: str) -> None:
        log.warning("legacy %s: protocol error, closing: %s", self.conn.label, reason)
        self.close(f"protocol error: {reason}")

    def overflow(self) -> None:
        """More than --max-queued-bytes awaits a poll: what waits is dropped, the session
        closed (its next poll gets the close packet)."""
        size = self.queue.nbytes
        while not self.queue.empty():
            self.queue.get_nowait()
        self.server.ingest.ledger.limit_hits["outgoing_queue"] += 1
        self.protocol_error(f"{size} bytes waiting for a poll (--max-queued-bytes "
                            f"{self.server.max_queued})")

    def close(self, reason: str, goodbye: bool = True) -> None:
        """Close once, whoever asks: tell ingest, then end the transport. With ``goodbye`` a
        polling client gets a close packet (on its pending or next poll, as the reference
        does); without, a pending poll is released with a noop and the session is unknown
        from now on (a 400, as the reference after a client's close)."""
        if self.closed:
            return
        if self.ws is None:
            self.queue.put((CLOSE, None) if goodbye else (NOOP, None))
        self.closed = True
        self.pending = None
        self.server.ingest.incomplete.done(("eio3", self.sid))
        self.closed_at = time.monotonic()
        if self.ws is not None or not goodbye:
            self.server.sessions.pop(self.sid, None)
        try:
            self.server.ingest.disconnect(self.conn, reason)
        except Exception:
            log.exception("legacy %s: ingest.disconnect failed", self.conn.label)
        if self.ws is not None:
            self._close_ws(self.ws, self.reader)

    @staticmethod
    def _close_ws(ws: WebSocket, reader) -> None:
        handler = ws.handler
        if not ws.closed:
            with gevent.Timeout(1.0, False):  # a peer that does not read cannot hold us
                try:
                    ws.close()
                except Exception:  # noqa: BLE001, S110 (closing anyway)
                    pass
        if reader is not None and reader is not gevent.getcurrent():
            try:  # wake the reader (and any blocked writer): they see EOF and finish
                handler.socket.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass

    # -- receiving --------------------------------------------------------------------------

    def on_packet(self, ptype: int, data) -> None:
        """One Engine.IO packet from the client (any transport)."""
        self.last_seen = time.monotonic()
        if ptype == MESSAGE:
            self.on_message(data)
        elif ptype == PING:
            if data and len(data) > MAX_PING_DATA:
                self.server.ingest.ledger.limit_hits["ping_too_big"] += 1
                raise ProtocolError(f"a ping of {len(data)} bytes (at most {MAX_PING_DATA})")
            self.send(PONG, data or None)
        elif ptype == CLOSE:
            self.close("client disconnect", goodbye=False)
        elif ptype != NOOP:
            raise ProtocolError(f"unexpected engine.io packet type {ptype}")

    def on_message(self, data) -> None:
        if self.pending is not None:
            if isinstance(data, str):
                raise ProtocolError("text message while a binary attachment was expected")
            budget = self.server.ingest.incomplete
            reason = budget.add(("eio3", self.sid), len(data))
            if reason:
                self.server.ingest.ledger.limit_hits["incomplete_bytes"] += 1
                raise ProtocolError(reason)
            if add_attachment(self.pending, data):
                pkt, self.pending = self.pending, None
                budget.done(("eio3", self.sid))
                self.on_sio(pkt)
            return
        if not isinstance(data, str):
            raise ProtocolError("binary message without a packet announcing it")
        pkt = decode_sio(data)
        if pkt.attachment_count:
            self.pending = pkt
            self.server.ingest.incomplete.start(("eio3", self.sid))  # --incomplete-timeout
        else:
            self.on_sio(pkt)

    def on_sio(self, pkt: Packet) -> None:
        """One complete Socket.IO packet."""
        kind = pkt.packet_type
        if (pkt.namespace or "/") != "/":
            if kind == CONNECT:  # only the default namespace exists here
                self.send_sio(Packet(CONNECT_ERROR, data="Invalid namespace",
                                     namespace=pkt.namespace))
            return  # as socket.io 2: packets for a namespace not joined are ignored
        if not self.joined:  # after the client's 41: only a CONNECT means something
            if kind == CONNECT:
                self.rejoin()
            return
        if kind in (EVENT, BINARY_EVENT):
            self.on_event(pkt)
        elif kind == DISCONNECT:  # the namespace, not the connection (as socket.io 2)
            self.joined = False
            self.server.ingest.disconnect(self.conn, "client namespace disconnect")
        elif kind not in (CONNECT, ACK, BINARY_ACK):  # already connected; never asks for acks
            raise ProtocolError(f"unexpected socket.io packet type {kind}")

    def rejoin(self) -> None:
        """A CONNECT after the client left the namespace: joined again (it must log in again).
        Unanswered, as socket.io 2 does for the default namespace (its ``40`` went with the
        handshake)."""
        if self.server.ingest.connect(self.conn) is False:
            self.send_sio(Packet(CONNECT_ERROR, data="connection refused"))
            return
        self.joined = True

    def on_event(self, pkt: Packet) -> None:
        """Dispatch by event name exactly as ``ingest.socketio_server`` does."""
        data = pkt.data
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ProtocolError("event without a name")
        event, args = data[0], tuple(data[1:])
        ingest, conn = self.server.ingest, self.conn
        if event == "authenticate":
            result = ingest.on_authenticate(conn, args)
        elif event == "receiveImage":
            ingest.on_frame(conn, args)
            result = None
        elif event == "frame" and pkt.id is not None:  # acked when it leaves the mailbox
            ingest.on_frame(conn, args, lambda result, ack_id=pkt.id: self.send_sio(
                Packet(ACK, id=ack_id, data=[result])))
            return
        elif event == "frame":
            result = ingest.on_frame(conn, args)
        else:  # logged once; no ack even when asked for, as the reference server
            ingest.on_unknown(conn, event)
            return
        if pkt.id is not None:
            self.send_sio(Packet(ACK, id=pkt.id, data=[] if result is None else [result]))


# -- the server: routing, long polling, websocket ----------------------------------------------

class LegacyServer:
    """WSGI app: ``EIO=3`` requests under ``path`` are served here, the rest by ``app``.

    :param app: the WSGI app for everything else (python-socketio's ``WSGIApp``).
    :param ingest: the ``Ingest`` whose handlers the events end in.
    :param ping_interval: seconds between the client's pings, announced at the handshake.
    :param ping_timeout: seconds more of silence before a client is dropped.
    :param max_message: largest message (websocket message or polling body), in bytes.
    :param max_queued: bytes a session may have waiting for a poll before it is closed.
    """

    def __init__(self, app, ingest, ping_interval: float, ping_timeout: float,
                 max_message: int, path: str = "/socket.io", max_queued: int = 1 << 20) -> None:
        self.app = app
        self.ingest = ingest
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_message = max_message
        self.max_queued = max_queued
        self.path = path
        self.sessions: dict[str, Session] = {}
        self.sweeper = gevent.spawn(self.sweep)

    def __call__(self, environ, start_response):
        if not environ.get("PATH_INFO", "").startswith(self.path) or \
                "EIO=3" not in environ.get("QUERY_STRING", ""):
            return self.app(environ, start_response)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if query.get("EIO") != ["3"]:
            return self.app(environ, start_response)
        try:
            return self.handle(environ, start_response, query)
        except Exception:  # a bug here must not become a 500 storm or reach others
            log.exception("legacy: unexpected error serving %s", environ.get("PATH_INFO"))
            return self.error(start_response, environ, 3, "Bad request", "500 Internal Error")

    def close(self) -> None:
        self.sweeper.kill(block=False)

    def drop_all(self) -> int:
        """A graceful stop: every session's transport closed without a goodbye (see
        :meth:`Session.drop`); how many there were."""
        sessions = [s for s in self.sessions.values() if not s.closed]
        for session in sessions:
            session.drop()
        return len(sessions)

    # -- routing ----------------------------------------------------------------------------

    def handle(self, environ, start_response, query):
        method = environ.get("REQUEST_METHOD", "GET")
        transport = query.get("transport", [""])[0]
        sid = query.get("sid", [None])[0]
        if method == "OPTIONS":
            start_response("200 OK", self.cors(environ))
            return [b""]
        if transport == "websocket":
            ws = environ.get("wsgi.websocket")
            if ws is None:
                return self.error(start_response, environ, 3, "Bad request")
            if sid is None:
                return self.serve_websocket(self.open_session(environ, False, True), ws)
            session = self.sessions.get(sid)
            if session is None or session.closed or session.ws is not None or \
                    session.upgrading:
                ws.close()
                return []
            return self.upgrade(session, ws)
        if transport != "polling":
            return self.error(start_response, environ, 0, "Transport unknown")
        if sid is None:
            if method != "GET":
                return self.error(start_response, environ, 2, "Bad handshake method")
            if "j" in query:  # JSONP is not served
                return self.error(start_response, environ, 3, "Bad request")
            session = self.open_session(environ, "b64" in query)
            return self.poll(session, environ, start_response)
        session = self.sessions.get(sid)
        if session is None or (session.closed and session.queue.empty()):
            return self.error(start_response, environ, 1, "Session ID unknown")
        if session.ws is not None:
            return self.error(start_response, environ, 3, "Bad request")
        if method == "GET":
            return self.poll(session, environ, start_response)
        if method == "POST":
            return self.post(session, environ, start_response)
        return self.error(start_response, environ, 2, "Bad handshake method")

    def open_session(self, environ, b64: bool, websocket: bool = False) -> Session:
        """A new session; its open packet offers the websocket upgrade to a polling client
        only (a websocket is upgraded already), with the heartbeat in exact milliseconds."""
        sid = secrets.token_urlsafe(15)
        session = Session(self, sid, environ.get("REMOTE_ADDR", "?"), b64)
        self.sessions[sid] = session
        session.send(OPEN, json.dumps({
            "sid": sid, "upgrades": [] if websocket else ["websocket"],
            "pingInterval": round(self.ping_interval * 1000),
            "pingTimeout": round(self.ping_timeout * 1000)}, separators=(",", ":")))
        if self.ingest.connect(session.conn) is False:  # refused (e.g. too many from there)
            session.send_sio(Packet(CONNECT_ERROR, data="connection refused"))
            session.close("connection refused")
            return session
        session.send_sio(Packet(CONNECT))  # Socket.IO 4: the default namespace, unasked
        return session

    # -- long polling -----------------------------------------------------------------------

    def poll(self, session: Session, environ, start_response):
        """GET: the packets waiting for this client, or wait for some (a noop if none come
        within a heartbeat period)."""
        if session.polling:
            session.protocol_error("two long polls at once")
            return self.error(start_response, environ, 3, "Bad request")
        session.polling = True
        try:
            wait = 0.1 if session.upgrading else self.ping_interval + self.ping_timeout
            try:
                packets = [session.queue.get(timeout=wait)]
            except gevent.queue.Empty:
                packets = [(NOOP, None)]
            while len(packets) < MAX_PAYLOAD_PACKETS:
                try:
                    packets.append(session.queue.get_nowait())
                except gevent.queue.Empty:
                    break
        finally:
            session.polling = False
        if session.closed and session.queue.empty():
            self.sessions.pop(session.sid, None)
        body, binary = encode_payload(packets, session.b64)
        start_response("200 OK", [("Content-Type", BINARY_TYPE if binary else TEXT_TYPE),
                                  ("Content-Length", str(len(body))), *self.cors(environ)])
        return [body]

    def post(self, session: Session, environ, start_response):
        """POST: packets from the client, handled inline, in order."""
        if session.closed:
            return self.error(start_response, environ, 1, "Session ID unknown")
        if session.posting:
            session.protocol_error("two POSTs at once")
            return self.error(start_response, environ, 3, "Bad request")
        session.posting = True
        try:
            try:
                length = int(environ.get("CONTENT_LENGTH") or -1)
            except ValueError:
                length = -1
            if length > self.max_message:
                session.protocol_error(f"POST of {length} bytes exceeds the limit of "
                                       f"{self.max_message}")
                return self.error(start_response, environ, 3, "Bad request",
                                  "413 Payload Too Large")
            body = environ["wsgi.input"].read(length if length >= 0 else self.max_message + 1)
            if len(body) > self.max_message:
                session.protocol_error(f"POST exceeds the limit of {self.max_message} bytes")
                return self.error(start_response, environ, 3, "Bad request",
                                  "413 Payload Too Large")
            try:
                if environ.get("CONTENT_TYPE", "").startswith(BINARY_TYPE):
                    packets = decode_binary_payload(body)
                else:
                    try:
                        text = body.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError("text payload is not UTF-8") from None
                    packets = decode_text_payload(text)
                for ptype, data in packets:
                    if session.closed:
                        break
                    session.on_packet(ptype, data)
            except ProtocolError as e:
                session.protocol_error(str(e))
                return self.error(start_response, environ, 3, "Bad request")
            except Exception:
                log.exception("legacy %s: error handling a packet", session.conn.label)
                session.close("internal error")
                return self.error(start_response, environ, 3, "Bad request")
        finally:
            session.posting = False
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", "2"),
                                  *self.cors(environ)])
        return [b"ok"]

    # -- websocket --------------------------------------------------------------------------

    def upgrade(self, session: Session, ws: WebSocket):
        """Probe (``2probe`` / ``3probe``), release the long poll, switch on ``5``."""
        session.upgrading = True
        try:
            with gevent.Timeout(UPGRADE_TIMEOUT):
                if read_ws_message(ws, 64, session.lock) != "2probe":
                    raise ProtocolError("websocket upgrade without 2probe")
                with session.lock:
                    ws.send("3probe")
                session.queue.put((NOOP, None))  # the client pauses polling: let it finish
                if read_ws_message(ws, 64, session.lock) != "5":
                    raise ProtocolError("websocket probe not followed by upgrade")
        except (gevent.Timeout, ProtocolError, MessageTooBig, WebSocketError, OSError) as e:
            log.info("legacy %s: websocket upgrade abandoned: %s", session.conn.label,
                     e or "timeout")
            session.upgrading = False
            Session._close_ws(ws, None)
            return []
        finally:
            session.upgrading = False
        if session.closed:
            Session._close_ws(ws, None)
            return []
        with session.lock:  # what was waiting for a poll goes first, in order
            session.ws = ws
            waiting = []
            while True:
                try:
                    waiting.append(session.queue.get_nowait())
                except gevent.queue.Empty:
                    break
            if session.polling:
                session.queue.put((NOOP, None))
            try:
                for ptype, data in waiting:
                    if ptype != NOOP:
                        session._send_ws(ptype, data)
            except Exception as e:  # noqa: BLE001 (a dead socket)
                session.reader = gevent.getcurrent()
                session.close(f"transport error: {e}")
                return []
        return self.serve_websocket(session, ws)

    def serve_websocket(self, session: Session, ws: WebSocket):
        """Read the websocket until it closes; handlers run right here, inline."""
        if session.ws is None:  # a websocket-only client: flush open and CONNECT
            with session.lock:
                session.ws = ws
                while True:
                    try:
                        session._send_ws(*session.queue.get_nowait())
                    except gevent.queue.Empty:
                        break
        session.reader = gevent.getcurrent()
        reason = "transport close"
        try:
            while not session.closed:
                message = read_ws_message(ws, self.max_message, session.lock)
                if message is None:
                    break
                session.on_packet(*decode_packet(message))
                gevent.sleep(0)  # a socket read does not yield while data waits
        except ProtocolError as e:
            if not session.closed:
                session.protocol_error(str(e))
        except MessageTooBig as e:  # its payload unread: 1009, then the session closes
            self.ingest.ledger.limit_hits["message_too_big"] += 1
            if not session.closed:
                with gevent.Timeout(1.0, False), session.lock:
                    close_with(ws, CLOSE_TOO_BIG, b"message too big")
                session.protocol_error(str(e))
        except Exception as e:  # EOF, reset, or the socket shut down by close()
            if not session.closed:
                if isinstance(e, (OSError, WebSocketError)):
                    reason = f"transport error: {e or type(e).__name__}"
                else:
                    log.exception("legacy %s: error handling a packet", session.conn.label)
                    reason = "internal error"
        finally:
            session.close(reason)
        return []

    # -- heartbeats -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Drop clients silent for pingInterval + pingTimeout, on time (the reference's timer
        fires then; a fixed sweep was up to a period late); forget closed sessions. It wakes
        at the first deadline, which clients that ping keep moving on: rarely, with a bound."""
        limit = self.ping_interval + self.ping_timeout
        period = min(1.0, limit / 5)
        while True:
            now = time.monotonic()
            for _, sid in self.ingest.incomplete.expired("eio3"):  # awaited attachments too long
                self.ingest.incomplete.done(("eio3", sid))
                session = self.sessions.get(sid)
                if session is not None and not session.closed:
                    self.ingest.ledger.limit_hits["incomplete_timeout"] += 1
                    gevent.spawn(session.protocol_error, "an event awaited its attachments over "
                                 f"{self.ingest.incomplete.timeout:g} s (--incomplete-timeout)")
            wake = now + period
            for session in list(self.sessions.values()):
                if session.closed:
                    if now - session.closed_at > CLOSED_GRACE:
                        self.sessions.pop(session.sid, None)
                elif now - session.last_seen >= limit:
                    gevent.spawn(session.close, f"ping timeout ({limit:g} s without a packet)")
                else:
                    wake = min(wake, session.last_seen + limit)
            gevent.sleep(max(0.002, wake - time.monotonic()))

    # -- HTTP helpers -----------------------------------------------------------------------

    @staticmethod
    def cors(environ) -> list[tuple[str, str]]:
        origin = environ.get("HTTP_ORIGIN")
        if not origin:
            return []
        return [("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Allow-Headers", "Content-Type"),
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS")]

    def error(self, start_response, environ, code: int, message: str,
              status: str = "400 Bad Request"):
        body = json.dumps({"code": code, "message": message}).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))), *self.cors(environ)])
        return [body]


def wrap(app, ingest, config):
    """Route ``EIO=3`` requests to the legacy revision; everything else goes to ``app``."""
    return LegacyServer(app, ingest, config.ping_interval, config.ping_timeout,
                        transport_cap(config.max_frame_bytes),
                        max_queued=config.max_queued_bytes)
