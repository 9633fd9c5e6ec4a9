"""The legacy protocol revision: Engine.IO 3 / Socket.IO protocol 4, beside python-socketio 5.

The AndroidCamStream app (Java ``io.socket:socket.io-client:1.0.0``) and the JS
socket.io-client 2.x speak Engine.IO 3 carrying Socket.IO protocol 4. python-socketio 5 answers
``EIO=3`` with HTTP 400, so :func:`wrap` puts this layer in front of it on the same port:
requests to ``/socket.io/`` with ``EIO=3`` are served here, everything else goes on to
python-socketio (and ingest's ``/healthz``, ``/metrics``). Both revisions end in the same
camstream.ingest.handlers methods, each legacy session getting its own ``Conn``.

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

Layout: the pure codecs are camstream.ingest.eio3.codec, the protocol state of a session (the
heartbeat, the upgrade, the close) camstream.ingest.eio3.session, sans I/O; this module is the
I/O, on gevent: the routing, long polling, websockets, queues and locks. Event handlers
(camstream.ingest.handlers) run inline in the greenlet that reads the connection (the POST
request, or the websocket's request greenlet), never a greenlet per event, so a flooding client
cannot queue work without bound; the transport yields after each packet it handles.
Whatever a client sends that this layer does not understand is a protocol error for that
connection only: one log line, and the connection is closed.
"""
from __future__ import annotations

import json
import logging
import secrets
import socket
import time
import urllib.parse

import gevent
import gevent.lock
import gevent.queue
from engineio.packet import NOOP
from geventwebsocket.exceptions import ProtocolError as WsProtocolError
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import WebSocket

from camstream.ingest.eio3.codec import (
    MAX_PAYLOAD_PACKETS,
    ProtocolError,
    decode_binary_payload,
    decode_packet,
    decode_text_payload,
    encode_packet,
    encode_payload,
)
from camstream.ingest.eio3.session import (
    Closed,
    EventReceived,
    NamespaceLeft,
    RejoinRequested,
    Session,
)
from camstream.ingest.handlers import ACKED_LATER, UNHANDLED, Conn
from camstream.ingest import wsfast
from camstream.ingest.wsfast import CLOSE_TOO_BIG, MessageTooBig, close_with

log = logging.getLogger("camstream.ingest.eio3")

CLOSED_GRACE = 5.0          # seconds a closed polling session waits for its last poll
TEXT_TYPE = "text/plain; charset=UTF-8"
BINARY_TYPE = "application/octet-stream"


# -- websocket reading, bounded --------------------------------------------------------------

def read_ws_message(ws: WebSocket, limit: int, lock) -> str | bytes | None:
    """The next text or binary message, or None when the peer closed
    (:func:`camstream.ingest.wsfast.read_ws_message`: bounded before a payload is read,
    pings answered under the session's send lock); what breaks the websocket protocol is a
    ProtocolError of this revision's."""
    try:
        return wsfast.read_ws_message(ws, limit, lock, answer_close=False)
    except UnicodeDecodeError:
        raise ProtocolError("websocket text message is not UTF-8") from None
    except WsProtocolError as e:
        raise ProtocolError(str(e)) from None


# -- a session's transport ---------------------------------------------------------------------

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


class Connection:
    """One Engine.IO 3 client's I/O: its transport (long polling, then maybe a websocket), the
    queue of packets awaiting a poll, the websocket's send lock, and its ``Conn``. The
    protocol decisions are its ``Session``'s (camstream.ingest.eio3.session)."""

    def __init__(self, server: LegacyServer, session: Session, address: str, b64: bool) -> None:
        self.server = server
        self.session = session
        self.sid = session.sid
        self.address = address
        self.b64 = b64
        self.queue = OutgoingQueue()  # (type, data) for the next poll
        self.ws: WebSocket | None = None
        self.lock = gevent.lock.Semaphore()  # one writer at a time on the websocket
        self.reader: gevent.Greenlet | None = None
        self.polling = False    # a GET is waiting for packets
        self.posting = False    # a POST is being read
        self.sending = False    # a greenlet of flush_soon is sending to the websocket
        self.conn = Conn(session.sid, address, self.emit, self.disconnect)

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def upgrading(self) -> bool:
        return self.session.upgrade is not None

    # -- sending ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the session queued: to the websocket, or to the queue for a poll."""
        while True:
            packets = self.session.take_outgoing()
            if not packets:
                return
            for ptype, data in packets:
                if self.ws is None:
                    self.queue.put((ptype, data))
                    if self.queue.nbytes > self.server.max_queued and not self.closed:
                        self.overflow()  # a client that does not poll
                        break
                    continue
                try:
                    with gevent.Timeout(self.server.send_timeout, wsfast.SendStuck), self.lock:
                        self._send_ws(ptype, data)
                except wsfast.SendStuck:
                    self.stuck()
                    break
                except Exception as e:  # noqa: BLE001 (a dead socket: the reader sees it too)
                    self.close(f"transport error: {e or type(e).__name__}")
                    break

    def flush_soon(self) -> None:
        """:meth:`flush` for callers other than the connection's own reader (a dispatcher
        releasing an ack, the results listener emitting): they never wait for this client's
        socket. A websocket's packets go from a greenlet of its own, one at a time."""
        if self.ws is None:
            self.flush()  # (a poll's queue never blocks)
        elif not self.sending:
            self.sending = True
            gevent.spawn(self._send_soon)

    def _send_soon(self) -> None:
        try:
            self.flush()
        finally:
            self.sending = False

    def stuck(self) -> None:
        """A send waited a whole heartbeat (ping interval + timeout): the client reads
        nothing. Its socket shut down (so that nothing else waits for it either), closed."""
        wsfast.give_up(self.ws, self.server.send_timeout)
        self.close("transport error: the client reads nothing")

    def _send_ws(self, ptype: int, data) -> None:
        ws = self.ws
        if ws.closed:
            raise WebSocketError("websocket closed")
        msg = encode_packet(ptype, data)
        ws.send(msg, binary=not isinstance(msg, str))

    def emit(self, event: str, *args) -> None:
        """``Conn.emit``: an event to this client only (from any greenlet)."""
        self.session.emit(event, *args)
        self.flush_soon()

    def disconnect(self) -> None:
        """``Conn.disconnect``: say goodbye (Socket.IO then Engine.IO) and close. The client
        takes it as "sent away" and does not reconnect: for a refused login or a removed user,
        never for a stop (:meth:`drop`)."""
        self.closed_by(self.session.disconnect(time.monotonic()))

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
        self.server.handlers.ledger.limit_hits["outgoing_queue"] += 1
        self.protocol_error(f"{size} bytes waiting for a poll (--max-queued-bytes "
                            f"{self.server.max_queued})")

    def close(self, reason: str, goodbye: bool = True) -> None:
        """Close once, whoever asks (the session decides what the client is told)."""
        self.closed_by(self.session.close(reason, time.monotonic(), goodbye))

    def expire(self) -> None:
        """The sweeper found the client silent too long."""
        self.closed_by(self.session.expire(time.monotonic()))

    def closed_by(self, closed: Closed | None) -> None:
        """The session closed: its last packet out, ingest told, the transport ended. A
        closed session stays known to answer its last poll, unless it said no goodbye (then
        it is unknown from now on: a 400, as the reference after a client's close)."""
        if closed is None:
            return
        if self.ws is not None or not closed.goodbye:
            self.server.sessions.pop(self.sid, None)
        self.flush()
        try:
            self.server.handlers.disconnect(self.conn, closed.reason)
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

    def receive(self, ptype: int, data) -> None:
        """One Engine.IO packet from the client (any transport), its events handled inline."""
        events = self.session.receive(ptype, data, time.monotonic())
        self.flush()
        handlers = self.server.handlers
        for event in events:
            if isinstance(event, EventReceived) and event.name in ACKED_LATER and \
                    event.ack_id is not None:  # acked when it leaves the mailbox
                handlers.on_frame(self.conn, event.args, lambda result, ack_id=event.ack_id: (
                    self.session.ack(ack_id, result), self.flush_soon()))
            elif isinstance(event, EventReceived):
                result = handlers.on_event(self.conn, event.name, event.args)
                if result is not UNHANDLED and event.ack_id is not None:
                    self.session.ack(event.ack_id, result)
            elif isinstance(event, NamespaceLeft):
                handlers.disconnect(self.conn, "client namespace disconnect")
            elif isinstance(event, RejoinRequested):
                self.session.rejoined(handlers.connect(self.conn) is not False)
            elif isinstance(event, Closed):
                self.closed_by(event)
            self.flush()


# -- the server: routing, long polling, websocket ----------------------------------------------

class LegacyServer:
    """WSGI app: ``EIO=3`` requests under ``path`` are served here, the rest by ``app``.

    :param app: the WSGI app for everything else (python-socketio's ``WSGIApp``).
    :param handlers: the handlers the events end in (camstream.ingest.handlers.Handlers).
    :param ping_interval: seconds between the client's pings, announced at the handshake.
    :param ping_timeout: seconds more of silence before a client is dropped.
    :param max_message: largest message (websocket message or polling body), in bytes.
    :param max_queued: bytes a session may have waiting for a poll before it is closed.
    """

    def __init__(self, app, handlers, ping_interval: float, ping_timeout: float,
                 max_message: int, path: str = "/socket.io", max_queued: int = 1 << 20) -> None:
        self.app = app
        self.handlers = handlers
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = ping_interval + ping_timeout  # a send this long: nobody reads
        self.max_message = max_message
        self.max_queued = max_queued
        self.path = path
        self.sessions: dict[str, Connection] = {}
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
        :meth:`Connection.drop`); how many there were."""
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
            if session is None or not session.session.may_upgrade():
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

    def open_session(self, environ, b64: bool, websocket: bool = False) -> Connection:
        """A new session; its open packet offers the websocket upgrade to a polling client
        only (a websocket is upgraded already), with the heartbeat in exact milliseconds."""
        sid = secrets.token_urlsafe(15)
        hits = self.handlers.ledger.limit_hits
        session = Session(sid, time.monotonic(), self.ping_interval, self.ping_timeout,
                          self.handlers.incomplete, hits, websocket=websocket)
        connection = Connection(self, session, environ.get("REMOTE_ADDR", "?"), b64)
        self.sessions[sid] = connection
        connection.flush()  # the open packet
        if self.handlers.connect(connection.conn) is False:  # refused (e.g. too many from there)
            connection.closed_by(session.refuse(time.monotonic()))
            return connection
        session.accept()  # Socket.IO 4: the default namespace, unasked
        connection.flush()
        return connection

    # -- long polling -----------------------------------------------------------------------

    def poll(self, session: Connection, environ, start_response):
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

    def post(self, session: Connection, environ, start_response):
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
                    session.receive(ptype, data)
                    gevent.sleep(0)  # the handlers do not yield: a payload may hold many
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

    def upgrade(self, session: Connection, ws: WebSocket):
        """Probe (``2probe`` / ``3probe``), release the long poll, switch on ``5`` (the
        steps are the session's :class:`camstream.ingest.eio3.session.Upgrade`)."""
        probe = session.session.begin_upgrade(time.monotonic())
        try:
            with gevent.Timeout(probe.remaining(time.monotonic())):
                while not probe.done:
                    message = read_ws_message(ws, 64, session.lock)
                    to_ws, to_poll = probe.receive(message, time.monotonic())
                    for text in to_ws:
                        with session.lock:
                            ws.send(text)
                    for packet in to_poll:
                        session.queue.put(packet)
        except (gevent.Timeout, ProtocolError, MessageTooBig, WebSocketError, OSError) as e:
            log.info("legacy %s: websocket upgrade abandoned: %s", session.conn.label,
                     e or "timeout")
            session.session.end_upgrade(False)
            Connection._close_ws(ws, None)
            return []
        except BaseException:  # a kill, a bug: the session may still be upgraded later
            session.session.end_upgrade(False)
            raise
        if session.closed:
            session.session.end_upgrade(False)
            Connection._close_ws(ws, None)
            return []
        with session.lock:  # what was waiting for a poll goes first, in order
            session.ws = ws
            session.session.end_upgrade(True)
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

    def serve_websocket(self, session: Connection, ws: WebSocket):
        """Read the websocket until it closes; handlers run right here, inline."""
        if session.ws is None:  # a websocket-only client: flush open and CONNECT
            with session.lock:
                session.ws = ws
                session.session.use_websocket()
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
                session.receive(*decode_packet(message))
                wsfast.yield_now_and_then()
        except ProtocolError as e:
            if not session.closed:
                session.protocol_error(str(e))
        except MessageTooBig as e:  # its payload unread: 1009, then the session closes
            self.handlers.ledger.limit_hits["message_too_big"] += 1
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
        period = min(1.0, (self.ping_interval + self.ping_timeout) / 5)
        while True:
            now = time.monotonic()
            for _, sid in self.handlers.incomplete.expired("eio3"):  # awaited attachments too long
                self.handlers.incomplete.done(("eio3", sid))
                session = self.sessions.get(sid)
                if session is not None and not session.closed:
                    self.handlers.ledger.limit_hits["incomplete_timeout"] += 1
                    gevent.spawn(session.protocol_error, "an event awaited its attachments over "
                                 f"{self.handlers.incomplete.timeout:g} s (--incomplete-timeout)")
            wake = now + period
            for connection in list(self.sessions.values()):
                session = connection.session
                if session.closed:
                    if now - session.closed_at > CLOSED_GRACE:
                        self.sessions.pop(session.sid, None)
                elif session.timed_out(now):
                    gevent.spawn(connection.expire)
                else:
                    wake = min(wake, session.deadline())
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


def wrap(app, handlers, config):
    """Route ``EIO=3`` requests to the legacy revision; everything else goes to ``app``."""
    return LegacyServer(app, handlers, config.ping_interval, config.ping_timeout,
                        handlers.max_message, max_queued=config.max_queued_bytes)

