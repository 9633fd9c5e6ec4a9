"""python-socketio and python-engineio, hardened: whatever a client sends that they cannot
decode is a protocol error of that one connection (one log line, the connection closed),
never a traceback, a hung request or a session left to its ping timeout.

Each class overrides one library method and says why; the libraries do everything else.
Found by the fuzz tests (tests/test_fuzz.py).
"""
from __future__ import annotations

import logging

import engineio
import engineio.exceptions
import engineio.packet
import engineio.socket
import socketio

log = logging.getLogger("camstream.sioserver")


class BoundedPacket(socketio.packet.Packet):
    """A Socket.IO packet that announces more binary attachments than any event of ours
    carries is a protocol error (it would otherwise make the server wait for, and hold, an
    unbounded number of them)."""

    MAX_ATTACHMENTS = 4

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
        wait = ws.wait

        def checked_wait():  # an error here ends python-engineio's read loop, and the session
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
        credential (camstream.sioserver.Server sets this to name ingest's connection)."""
        return "a client"

    def handle_request(self, environ, start_response):
        try:
            return super().handle_request(environ, start_response)
        except KeyError as e:  # _get_socket: "Session is disconnected"
            body = str(e).strip("'").encode()
            start_response("400 BAD REQUEST", [("Content-Type", "text/plain"),
                                               ("Content-Length", str(len(body)))])
            return [body]


class Server(socketio.Server):
    """python-socketio's server, with a malformed packet made a protocol error of its own
    connection: one log line and a disconnect, instead of a traceback per packet."""

    def _engineio_server_class(self):
        return EngineIOServer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eio.describe = self.describe

    def describe(self, eio_sid: str) -> str:
        """The connection's label that ingest put in its environ, else its address."""
        environ = self.environ.get(eio_sid) or {}
        return environ.get("camstream.connection") or \
            f"a client at {environ.get('REMOTE_ADDR', '?')}"

    def _handle_eio_message(self, eio_sid, data):
        try:
            if not isinstance(data, (str, bytes, bytearray)) or (  # "4null"; b"" unasked
                    not data and eio_sid not in self._binary_packet):
                raise ValueError(f"an empty socket.io packet or one that is not text "
                                 f"({type(data).__name__})")
            super()._handle_eio_message(eio_sid, data)
        except ValueError as e:
            log.warning("protocol error from %s: %s; closing it", self.describe(eio_sid), e)
            self._binary_packet.pop(eio_sid, None)
            # after this request: closing now, inside a long-polling POST, would reset the
            # POST's own connection instead of answering it
            self.eio.start_background_task(self.eio.disconnect, eio_sid)
