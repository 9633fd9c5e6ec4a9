"""python-socketio and python-engineio, hardened and made to behave as the reference servers
(npm socket.io 4.x) do.

Hardened: whatever a client sends that they cannot decode is a protocol error of that one
connection (one log line, the connection closed), never a traceback, a hung request or a
session left to its ping timeout (found by the fuzz tests, tests/integration/test_fuzz.py).

Conformance (tests/integration/test_conformance.py compares each point with the reference server): the
handshake announces the heartbeat in exact milliseconds and the ping timeout is enforced on
time; a request without a known transport or with an unsupported method is a 400; a second
long poll at once closes the session; a client's close over polling releases its pending poll
with a noop; a POST is answered ``ok``; a CONNECT to a namespace that does not exist gets
``{"message": "Invalid namespace"}``; a graceful stop closes each transport without an
Engine.IO close packet (:meth:`EngineIOServer.drop_all`: python-socketio's client takes one as
"sent away" and never reconnects).

Each override says which library method it replaces and why; none of these has a public
extension point, so tests/unit/test_library_hooks.py fingerprints each one and fails when a
release changes it (setup.cfg bounds the versions at the releases tested), and
tests/integration/test_conformance.py compares the behaviour with the reference servers.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import time
import urllib.parse

import gevent.lock

import engineio
import engineio.exceptions
import engineio.packet
import engineio.socket
import socketio

from camstream.ingest import wsfast
from camstream.ingest.handlers import ACKED_LATER
from camstream.ingest.limits import MAX_ATTACHMENTS

log = logging.getLogger("camstream.ingest.eio4")

# Event names a client may not send: npm socket.io-parser 4 refuses them as a malformed packet
# and the reference server closes the connection; python-socketio would instead call its own
# connect/disconnect handlers with the client's arguments.
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})
# python-socketio's own names, an ordinary unknown event to the reference: to the catch-all
PRIVATE_EVENTS = frozenset({"*", "__disconnect_final"})


class HideSids(logging.Filter):
    """python-engineio names the session in its own error lines ("Invalid session SID",
    "Session is disconnected SID"); a polling session's sid is its only credential, so it
    never reaches the log (camstream names connections by number)."""

    SID = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20}(?![A-Za-z0-9_-])")  # 15 bytes, b64

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.SID.sub("<session>", record.getMessage()), None
        return True


logging.getLogger("engineio.server").addFilter(HideSids())


class BoundedPacket(socketio.packet.Packet):
    """A Socket.IO packet that announces more binary attachments than any event of ours
    carries is a protocol error (it would otherwise make the server wait for, and hold, an
    unbounded number of them)."""

    MAX_ATTACHMENTS = MAX_ATTACHMENTS  # camstream.ingest.limits: both revisions

    def decode(self, encoded_packet):
        try:
            count = super().decode(encoded_packet)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 (bytes for text, RecursionError on deep nesting)
            raise ValueError(f"bad socket.io packet: {type(e).__name__}") from None
        if count > self.MAX_ATTACHMENTS:
            raise ValueError(f"{count} binary attachments announced (at most "
                             f"{self.MAX_ATTACHMENTS})")
        if self.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT) and not (
                isinstance(self.data, list) and self.data and isinstance(self.data[0], str)):
            raise ValueError("an event without a name")  # python-socketio would index it
        return count

    def add_attachment(self, attachment):
        try:
            return super().add_attachment(attachment)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 (a placeholder pointing nowhere, a bad "num")
            raise ValueError(f"bad binary placeholder: {type(e).__name__}") from None


class EngineIOSocket(engineio.socket.Socket):
    """python-engineio's session, with an Engine.IO packet it cannot decode (empty, an unknown
    type, bad base64) made a protocol error of its own connection. python-engineio lets that
    ValueError escape: a traceback, a 200 for the POST, a websocket left to the ping timeout."""

    polls = 0  # long-polling GETs being answered right now

    def send(self, pkt):
        """The open packet announces the heartbeat in exact milliseconds: python-engineio
        rounds pingInterval down to whole seconds (1.5 s announced as 1000 ms, and clients
        then drop the connection every time the server is half a second "late")."""
        if pkt.packet_type == engineio.packet.OPEN and isinstance(pkt.data, dict):
            server = self.server
            pkt.data["pingInterval"] = round(
                (server.ping_interval + server.ping_interval_grace_period) * 1000)
            pkt.data["pingTimeout"] = round(server.ping_timeout * 1000)
        return super().send(pkt)

    heartbeat = None  # the loop's timer of the next ping, or of its pong's deadline

    def schedule_ping(self):
        """The next ping, and the check that its pong came, on a timer of the loop: python-
        engineio's greenlet sleeps through pingInterval (and camstream's through pingTimeout
        after it), about 8 KB held per idle connection; a timer is a few hundred bytes. The
        session closes exactly pingTimeout after a ping with no pong: python-engineio only
        notices on its next sweep or send (up to ~200 ms late here)."""
        if self.last_ping:  # (the previous ping's wait is over, as python-engineio checks)
            self.last_ping = None
            self._after(self.server.ping_interval, self._ping)

    def _after(self, seconds: float, callback, *args) -> None:
        self.heartbeat = gevent.get_hub().loop.timer(seconds)
        self.heartbeat.start(callback, *args)

    def _ping(self) -> None:
        """From the hub: queueing the ping never waits (the writer greenlet sends it)."""
        if self.closing or self.closed:
            return
        self.last_ping = sent = time.time()
        self.send(engineio.packet.Packet(engineio.packet.PING))
        self._after(self.server.ping_timeout + 0.001, self._pong_due, sent)

    def _pong_due(self, sent: float) -> None:
        if self.last_ping == sent and not self.closing and not self.closed:
            gevent.spawn(self.check_ping_timeout)  # closing runs handlers: not in the hub

    def handle_get_request(self, environ, start_response):
        """A second long poll while one is held breaks the protocol: the spec and the
        reference close the session (python-engineio holds both)."""
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return super().handle_get_request(environ, start_response)
        if self.polls:
            log.warning("protocol error from a client at %s: two long polls at once; closing "
                        "it", environ.get("REMOTE_ADDR", "?"))  # never the sid: a credential
            self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise engineio.exceptions.EngineIOError("overlapping polls")  # a 400
        self.polls += 1
        try:
            return super().handle_get_request(environ, start_response)
        finally:
            self.polls -= 1

    def receive(self, pkt):
        """A client's close over polling answers its pending poll with a noop, as the spec
        and the reference do (python-engineio answers it with an empty body)."""
        if pkt.packet_type == engineio.packet.CLOSE and not self.upgraded:
            self.queue.put(engineio.packet.Packet(engineio.packet.NOOP))
        return super().receive(pkt)

    def drop(self) -> None:
        """Close the transport without saying goodbye, so that the client reconnects: a
        websocket gets its close frame, a held long poll a noop, and then the session is
        unknown. python-engineio's own close sends a close packet first, which its Python
        client takes as "sent away for good" (it never reconnects)."""
        if self.closed or self.closing:
            return
        if not self.upgraded:
            self.queue.put(engineio.packet.Packet(engineio.packet.NOOP))
        self.close(wait=False, abort=True, reason=self.server.reason.SERVER_DISCONNECT)

    def handle_post_request(self, environ):
        try:
            super().handle_post_request(environ)
        except (ValueError, engineio.exceptions.EngineIOError) as e:
            log.warning("protocol error from %s: %s; closing it", self.server.describe(self.sid),
                        str(e) or type(e).__name__)
            # closed here without waiting: python-engineio's disconnect() would hold this POST
            # until a poll that may never come had taken the close packet
            self.close(wait=False)
            raise engineio.exceptions.EngineIOError(str(e)) from None  # a 400

    def _websocket_handler(self, ws):
        raw = getattr(ws, "_sock", None)  # gevent-websocket's WebSocket
        lock = gevent.lock.Semaphore()
        # what the reader writes (pongs, close frames) holds the lock too
        wait = (lambda: wsfast.receive(raw, lock)) if raw is not None else ws.wait
        sio = getattr(self.server, "sio", None)
        # the lean path: a `frame` event is taken here, the rest read on by python-engineio;
        # every write on the websocket holds `lock` (python-engineio's writer, the acks)
        send = ws.send
        # a send that waits a whole heartbeat: the client reads nothing (it may still pong)
        stuck_after = self.server.ping_interval + self.server.ping_timeout

        def locked_send(message):
            try:
                with gevent.Timeout(stuck_after, wsfast.SendStuck), lock:
                    return send(message)
            except wsfast.SendStuck:
                wsfast.give_up(raw, stuck_after)
                raise OSError("the client reads nothing") from None
        ws.send = locked_send
        acks = wsfast.AckWriter(raw, lock, stuck_after) if raw is not None else None
        pushed_back: list = []  # messages read ahead that python-engineio reads next

        def checked_wait():  # an error here ends python-engineio's read loop, and the session
            message = pushed_back.pop() if pushed_back else wait()  # checked as any other
            while isinstance(message, str) and message.startswith("451-") and \
                    acks is not None and sio is not None:
                taken = sio.take_frame(self.sid, message, wait, acks)
                if taken is not True:
                    if taken is not False:
                        pushed_back.append(taken)  # what followed the packet: its own turn
                    break
                message = wait()
            if isinstance(message, str):
                try:
                    engineio.packet.Packet(encoded_packet=message)
                except ValueError as e:
                    log.warning("protocol error from %s: %s; closing it",
                                self.server.describe(self.sid), e)
                    raise
            return message
        ws.wait = checked_wait
        return super()._websocket_handler(ws)


class EngineIOSessions(dict):
    """python-engineio's session table (``Server.sockets``): each new session is made an
    EngineIOSocket (python-engineio has no hook for its session class)."""

    def __setitem__(self, sid, session):
        if type(session) is engineio.socket.Socket:
            session.__class__ = EngineIOSocket
        super().__setitem__(sid, session)


class EngineIOServer(engineio.Server):
    """python-engineio's server, with its sessions made EngineIOSockets, and a request for a
    session that has just closed answered 400 (python-engineio lets a KeyError escape: a 500
    and a traceback)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sockets = EngineIOSessions()

    def describe(self, sid: str) -> str:
        """How a log line names a session: never by its sid, a long-polling session's only
        credential (camstream.ingest.eio4.server.Server sets this to name ingest's connection)."""
        return "a client"

    def drop_all(self) -> int:
        """A graceful stop: every session's transport closed without a close packet (see
        :meth:`EngineIOSocket.drop`); how many there were."""
        sessions = list(self.sockets.values())
        for session in sessions:
            if isinstance(session, EngineIOSocket):
                session.drop()
            self.sockets.pop(session.sid, None)
        return len(sessions)

    def _ok(self, packets=None, headers=None, jsonp_index=None):
        """A POST is answered ``ok``, as the spec and the reference say (not ``OK``)."""
        r = super()._ok(packets, headers, jsonp_index)
        if packets is None and r.get("response") == b"OK":
            r["response"] = b"ok"
        return r

    # python-engineio's refusals, as the reference words them (engine.io's Server.errors)
    REFERENCE_ERRORS = (("Invalid session", 1, "Session ID unknown"),
                        ("Invalid transport", 0, "Transport unknown"),
                        ("The client is using an unsupported version", 5,
                         "Unsupported protocol version"),
                        ("Bad handshake method", 2, "Bad handshake method"))

    def _bad_request(self, message=None):
        """A 400 with the reference's body, ``{"code": n, "message": "..."}`` (the legacy
        revision's too), instead of python-engineio's bare JSON string."""
        code, text = 3, "Bad request"
        for prefix, known_code, known_text in self.REFERENCE_ERRORS:
            if message and message.startswith(prefix):
                code, text = known_code, known_text
        return {"status": "400 Bad Request", "headers": [("Content-Type", "application/json")],
                "response": json.dumps({"code": code, "message": text},
                                       separators=(",", ":")).encode()}

    def handle_request(self, environ, start_response):
        refusal = self._refusal(environ)
        try:
            if refusal:
                r = self._bad_request(refusal)
            else:
                return super().handle_request(environ, start_response)
        except KeyError:  # _get_socket: "Session is disconnected"
            r = self._bad_request("Invalid session")
        start_response(r["status"], r["headers"] + [
            ("Content-Length", str(len(r["response"])))] + self._cors_headers(environ))
        return [r["response"]]

    def _refusal(self, environ) -> str | None:
        """What the reference refuses before python-engineio sees it: a request without a
        known ``transport`` (python-engineio assumes polling) and a method other than GET,
        POST or OPTIONS (python-engineio: 405)."""
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if query.get("transport", [""])[0] not in self.transports:
            return "Invalid transport"
        if environ.get("REQUEST_METHOD") not in ("GET", "POST", "OPTIONS"):
            return "Bad handshake method" if "sid" not in query else "Bad request"
        return None


class Server(socketio.Server):
    """python-socketio's server, with a malformed packet made a protocol error of its own
    connection: one log line and a disconnect, instead of a traceback per packet."""

    def _engineio_server_class(self):
        return EngineIOServer

    # bytes held for events awaiting attachments (camstream.ingest.limits.IncompleteEvents), and the
    # counter of what limits stopped: set by ingest
    incomplete = None
    hits: collections.Counter = collections.Counter()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eio.describe = self.describe
        self.eio.sio = self  # for the lean websocket path (EngineIOSocket._websocket_handler)

    # frame(sid, args, ack): a `frame` with its ack deferred (set by ingest)
    on_frame = None

    def take_frame(self, eio_sid: str, text: str, read, acks: wsfast.AckWriter):
        """The lean websocket path: a ``frame`` event recognised without the generic decoder,
        its attachment read here, handed to ``on_frame`` with an ack written by ``acks``.
        True: taken. False: not a frame event for this path (python-engineio reads it). Else
        the message read after it, which was not its attachment: python-engineio then gets
        both, in order, and answers them as it would have (errors included)."""
        parsed = wsfast.parse_frame_event(text) if self.on_frame is not None else None
        if parsed is None or eio_sid in self._binary_packet:
            return False
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.manager.is_connected(sid, "/"):
            return False
        ack_id, meta = parsed
        key = ("eio4", eio_sid)
        budget = self.incomplete
        if budget is not None:
            budget.start(key)  # --incomplete-timeout, while the attachment is awaited
        try:
            attachment = read()
        finally:
            if budget is not None:
                budget.done(key)
        if not isinstance(attachment, (bytes, bytearray)) or not attachment:
            return attachment
        if budget is not None:
            reason = budget.add(key, len(attachment))
            budget.done(key)
            if reason:
                self.hits["incomplete_bytes"] += 1
                log.warning("protocol error from %s: %s; closing it", self.describe(eio_sid),
                            reason)
                self.eio.start_background_task(self.eio.disconnect, eio_sid)
                return True
        self.on_frame(sid, (meta, attachment), None if ack_id is None else (
            lambda result: acks.write(wsfast.ack_text(ack_id, result))))
        return True

    def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        """A ``frame`` that asks for an ack, on any transport: acked when it leaves the
        mailbox (ingest's ``on_frame``), not when the handler returns. Reserved names close
        the connection, as the reference does (:data:`RESERVED_EVENTS`)."""
        event = data[0] if data and isinstance(data[0], str) else None
        if event in RESERVED_EVENTS:
            log.warning("protocol error from %s: the event name %r is reserved; closing it",
                        self.describe(eio_sid), event)
            self.eio.start_background_task(self.eio.disconnect, eio_sid)
            return
        if event in PRIVATE_EVENTS:
            catch_all = self.handlers.get(namespace or "/", {}).get("*")
            if catch_all is not None:
                catch_all(event, sid, *data[1:])
            return
        if event in ACKED_LATER and id is not None and self.on_frame is not None and \
                (namespace or "/") == "/":
            self.on_frame(sid, tuple(data[1:]), lambda result: server._send_packet(
                eio_sid, self.packet_class(socketio.packet.ACK, namespace=namespace, id=id,
                                           data=[result])))
            return
        return super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    def _handle_eio_disconnect(self, eio_sid, *args, **kwargs):
        if self.incomplete is not None:
            self.incomplete.done(("eio4", eio_sid))
        return super()._handle_eio_disconnect(eio_sid, *args, **kwargs)

    def expire_incomplete(self) -> None:
        """Close the connections whose event has awaited its attachments too long."""
        if self.incomplete is None:
            return
        for _, eio_sid in self.incomplete.expired("eio4"):
            self.incomplete.done(("eio4", eio_sid))
            self._binary_packet.pop(eio_sid, None)
            self.hits["incomplete_timeout"] += 1
            log.warning("protocol error from %s: an event awaited its attachments over %g s "
                        "(--incomplete-timeout); closing it", self.describe(eio_sid),
                        self.incomplete.timeout)
            self.eio.start_background_task(self.eio.disconnect, eio_sid)

    def describe(self, eio_sid: str) -> str:
        """The connection's label that ingest put in its environ, else its address."""
        environ = self.environ.get(eio_sid) or {}
        return environ.get("camstream.connection") or \
            f"a client at {environ.get('REMOTE_ADDR', '?')}"

    def _handle_connect(self, eio_sid, namespace, data):
        """A CONNECT to a namespace nobody serves gets ``{"message": "Invalid namespace"}``, an
        object as Socket.IO 5 says (python-socketio sends the string "Unable to connect",
        which JS clients show as an empty message)."""
        namespace = namespace or "/"
        if namespace not in self.handlers and namespace not in self.namespace_handlers:
            self._send_packet(eio_sid, self.packet_class(
                socketio.packet.CONNECT_ERROR, data={"message": "Invalid namespace"},
                namespace=namespace))
            return
        super()._handle_connect(eio_sid, namespace, data)

    def _handle_eio_message(self, eio_sid, data):
        try:
            if not isinstance(data, (str, bytes, bytearray)) or (  # "4null"; b"" unasked
                    not data and eio_sid not in self._binary_packet):
                raise ValueError(f"an empty socket.io packet or one that is not text "
                                 f"({type(data).__name__})")
            budget = self.incomplete
            if budget is not None and eio_sid in self._binary_packet and \
                    not isinstance(data, str):
                reason = budget.add(("eio4", eio_sid), len(data))
                if reason:
                    self.hits["incomplete_bytes"] += 1
                    raise ValueError(reason)
            super()._handle_eio_message(eio_sid, data)
            if budget is not None:
                if eio_sid in self._binary_packet:
                    budget.start(("eio4", eio_sid))
                else:
                    budget.done(("eio4", eio_sid))
        except ValueError as e:
            log.warning("protocol error from %s: %s; closing it", self.describe(eio_sid), e)
            self._binary_packet.pop(eio_sid, None)
            if self.incomplete is not None:
                self.incomplete.done(("eio4", eio_sid))
            # after this request: closing now, inside a long-polling POST, would reset the
            # POST's own connection instead of answering it
            self.eio.start_background_task(self.eio.disconnect, eio_sid)
