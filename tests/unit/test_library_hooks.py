"""The private internals of python-socketio, python-engineio, gevent and gevent-websocket that
ingest overrides or leans on (none has a public extension point), and of pytest-xdist that the
tests' scheduler overrides: each is still there, with the signature and the source it had in
the releases tested. A failure here names the internal that
changed and what in camstream to re-check; once re-checked, update its hash here and move the
upper bound in setup.cfg (CI moves those bounds deliberately, never a resolver by surprise).

Each source is read from the library's file, not from the live attribute: camstream.ingest.wsfast
replaces some of them at ingest start.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import re
from pathlib import Path

import engineio
import engineio.packet
import engineio.socket
import gevent.baseserver
import gevent.pywsgi
import gevent.queue
import gevent.server
import pytest
import socketio
import socketio.packet
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, Stream, WebSocket
from xdist.scheduler.loadfile import LoadFileScheduling

from camstream.ingest.eio4 import server as eio4

TESTED = {"python-socketio": "5.18.1", "python-engineio": "4.15.1", "gevent": "26.9.0",
          "gevent-websocket": "0.10.1", "pytest-xdist": "3.8.0"}

# classes compiled by Cython: their source is the module's .py, shipped beside the extension
COMPILED = {klass: Path(gevent.__file__).parent / "queue.py"
            for klass in (gevent.queue.Queue, gevent.queue.SimpleQueue)}

# (class, attribute, what in camstream depends on it: re-check that when it changes, sha256 of
# the defining source, first 16 hex digits)
HOOKS = [
    # camstream/ingest/eio4/server.py Server: python-socketio's server
    (socketio.Server, "_engineio_server_class", "eio4.Server returns EngineIOServer", "6472f8f4d03fa2b7"),
    (socketio.Server, "_handle_eio_message", "eio4.Server wraps it: malformed packets, the "
     "attachments budget, _binary_packet", "b9a79d2e0431c08c"),
    (socketio.Server, "_handle_eio_disconnect", "eio4.Server frees the attachments budget",
     "b4f3ed35325ab9b9"),
    (socketio.Server, "_handle_connect", "eio4.Server answers an unknown namespace", "cf14174af23010de"),
    (socketio.Server, "_send_packet", "eio4.Server._handle_connect sends with it", "3b96d77d90f42cc9"),
    (socketio.base_server.BaseServer, "__init__", "eio4.Server reads self._binary_packet, "
     "self.environ, self.eio, self.handlers, self.namespace_handlers", "9fc899ce449365bf"),
    (socketio.Server, "_handle_event_internal", "eio4.Server overrides it: an acked frame "
     "answered when it leaves its mailbox, reserved and private event names", "915368374cbd50cb"),
    (socketio.packet.Packet, "decode", "eio4.BoundedPacket bounds the attachments", "81a70463f017cd00"),
    (socketio.packet.Packet, "add_attachment", "eio4.BoundedPacket: errors as ValueError",
     "06d1b6dbd2c254c6"),
    # EngineIOServer: python-engineio's server
    (engineio.Server, "_handle_connect", "EngineIOSessions: the session made an "
     "EngineIOSocket by a __class__ swap when stored in self.sockets", "80eeebd591ab7d50"),
    (engineio.Server, "handle_request", "EngineIOServer.handle_request: refusals, KeyError",
     "f2ee31fb35a83b47"),
    (engineio.base_server.BaseServer, "__init__", "EngineIOServer replaces self.sockets",
     "6c009d73f4356ee5"),
    (engineio.base_server.BaseServer, "_ok", "EngineIOServer._ok answers a POST 'ok'", "640d1d165a2770a8"),
    (engineio.base_server.BaseServer, "_bad_request", "EngineIOServer._bad_request: the "
     "reference's body", "e26b7f5351b4549b"),
    (engineio.base_server.BaseServer, "_cors_headers", "EngineIOServer.handle_request", "53c3eea920b99d20"),
    # EngineIOSocket: python-engineio's session
    (engineio.socket.Socket, "send", "EngineIOSocket.send: heartbeat in exact ms", "add5df2eafdaeba6"),
    (engineio.socket.Socket, "schedule_ping", "EngineIOSocket.schedule_ping replaces it (on "
     "timers; python-engineio calls it at the connect and at each pong)", "ad28edec571600f6"),
    (engineio.socket.Socket, "check_ping_timeout", "EngineIOSocket._pong_due calls it",
     "dc3c2335410ce2d4"),
    (engineio.socket.Socket, "handle_get_request", "EngineIOSocket: two polls at once", "f73e4aab5873ccc1"),
    (engineio.socket.Socket, "handle_post_request", "EngineIOSocket: a bad packet", "2803b6d94a5d1ed8"),
    (engineio.socket.Socket, "receive", "EngineIOSocket.receive: a close releases the poll",
     "f5336b1e9a1d4a6f"),
    (engineio.socket.Socket, "close", "EngineIOSocket.drop: close(wait, abort, reason)", "45bbdca61c81338d"),
    (engineio.socket.Socket, "_websocket_handler", "EngineIOSocket._websocket_handler wraps "
     "ws.wait", "613e11f7821225c9"),
    (engineio.base_socket.BaseSocket, "__init__", "EngineIOSocket reads last_ping, closing, "
     "closed, upgraded, queue, server", "c515a4a579e7a5ff"),
    # camstream/ingest/wsfast.py and eio3/transport.py: gevent-websocket's frame reader
    (WebSocket, "read_message", "wsfast.read_message replaces it (wsfast.read_ws_message: "
     "the same frames, errors and close handling)", "bdc84e5172110c84"),
    (WebSocket, "receive", "wsfast.receive replaces it (the same answers: 1002, 1007, on_close)",
     "ca1b837d8419cd1b"),
    (WebSocket, "handle_close", "wsfast.read_ws_message answers a close frame with it",
     "03732c0a18ca9945"),
    (WebSocket, "close", "wsfast.close_with sets closed, then close()", "88b98d94de07858a"),
    (WebSocket, "send_frame", "wsfast.close_with, wsfast.read_ws_message (pongs)", "00f16c255a7bcfe4"),
    (Header, "mask_payload", "wsfast.unmask replaces it", "f18106ad71738e81"),
    (Header, "unmask_payload", "wsfast.unmask replaces it", "dbef3bea0fe7dd3c"),
    (Header, "decode_header", "wsfast.read_header does its work, with the same checks",
     "4ccc44ca247e9420"),
    (Header, "__init__", "wsfast.read_header: Header(fin, opcode, flags, length), .mask",
     "717be12982b07985"),
    (Header, "encode_header", "wsfast.ack_text: an ack's frame header", "2b8109a78d9b2817"),
    (Stream, "__init__", "wsfast reads ws.stream.handler.rfile and ws.stream.read (payloads); "
     "wsfast.AckWriter writes the rest of an ack with ws.stream.write", "b23339aa0e642cc1"),
    # camstream/ingest/eio3/transport.py: gevent's queue
    (gevent.queue.Queue, "_put", "eio3.transport.OutgoingQueue counts the bytes queued", "b7dc3d21dbd16879"),
    (gevent.queue.Queue, "_get", "eio3.transport.OutgoingQueue counts the bytes queued", "c88cbf17c6f282a3"),
    # camstream/ingest/httpguard.py and app.py: gevent's server and the request handler
    (WebSocketHandler, "handle_one_request", "httpguard.GuardedHandler: the header timer",
     "ce0d1539e51eecd2"),
    (gevent.pywsgi.WSGIHandler, "read_request", "httpguard.GuardedHandler ends the timer",
     "08554486d27ce9ce"),
    (gevent.pywsgi.WSGIHandler, "read_requestline", "httpguard.GuardedHandler", "11e839b638bb0f8e"),
    (gevent.pywsgi.WSGIHandler, "_handle_client_error", "httpguard.GuardedHandler: SlowClient",
     "3f36de1b27cc47f9"),
    (WebSocketHandler, "start_response", "app.Handler adds Connection: close", "dc3b36ab81f9cb04"),
    (gevent.pywsgi.WSGIHandler, "__init__", "app.Handler passes its own rfile (a 1 KB buffer)",
     "08207c69b11c6417"),
    (gevent.server.StreamServer, "do_read", "httpguard.GuardedServer: EMFILE; app.Server: "
     "TCP_NODELAY on the accepted socket", "a0e69afeebcb7be9"),
    (gevent.server.StreamServer, "wrap_socket_and_handle", "httpguard.GuardedServer: the "
     "handshake timer; app.Server: TLS failures", "8c678cbe9919d6bb"),
    (gevent.baseserver.BaseServer, "_start_accepting_if_started", "httpguard.GuardedServer: "
     "the accept pause after EMFILE (self._timer, self.loop.timer)", "56f312be1ffecfda"),
    (gevent.baseserver.BaseServer, "stop_accepting", "httpguard.GuardedServer", "3236effeb1120f97"),
    # tests/conftest.py: the serial phase's scheduler
    (LoadFileScheduling, "_split_scope", "conftest.SerialFirstScheduling: a serial test is a "
     "unit of its own", "c72317595d7f197c"),
    (LoadFileScheduling, "_assign_work_unit", "conftest.SerialFirstScheduling: the serial "
     "units go first (self.workqueue, an OrderedDict of units)", "1d09338a6a2858c1"),
]


def defining_source(cls: type, name: str) -> tuple[type, str]:
    """The source of ``name`` where ``cls``'s MRO defines it, read from the library's file."""
    for klass in cls.__mro__:
        if name not in vars(klass):
            continue
        path = COMPILED.get(klass) or Path(inspect.getsourcefile(klass))
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                            item.name == name or isinstance(item, ast.Assign) and any(
                                isinstance(t, ast.Name) and t.id == name for t in item.targets):
                        return klass, ast.get_source_segment(text, item)  # def, or an alias
        raise AssertionError(f"{klass.__qualname__}.{name}: not found in {path}")
    raise AssertionError(f"{cls.__module__}.{cls.__qualname__}.{name} no longer exists")


def fingerprint(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@pytest.mark.parametrize("cls, name, relies, expected", HOOKS,
                         ids=[f"{c.__qualname__}.{n}" for c, n, _, _ in HOOKS])
def test_each_private_hook_is_as_tested(cls, name, relies, expected):
    klass, source = defining_source(cls, name)
    assert fingerprint(source) == expected, (
        f"{klass.__module__}.{klass.__qualname__}.{name} changed since the releases tested "
        f"({TESTED}): re-check {relies}; then update its hash in tests/unit/"
        f"test_library_hooks.py and the upper bound in setup.cfg")


def test_setup_cfg_bounds_each_hooked_library_at_the_release_tested():
    """The upper bounds and TESTED move together (the hashes above are of those releases)."""
    text = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    bounds = dict(re.findall(r"^\s+([a-z-]+)>=[0-9.]+,<=([0-9.]+)\s*$", text, re.M))
    assert {name: bounds.get(name) for name in TESTED} == TESTED


def test_the_hooks_take_effect_on_real_servers():
    """python-socketio still builds its Engine.IO server from _engineio_server_class, the
    session table still takes a __class__ swap, and the instance attributes are there."""
    sio = eio4.Server(async_mode="threading", serializer=eio4.BoundedPacket)
    assert isinstance(sio.eio, eio4.EngineIOServer)
    assert isinstance(sio._binary_packet, dict) and isinstance(sio.environ, dict)
    assert isinstance(sio.eio.sockets, eio4.EngineIOSessions)
    session = engineio.socket.Socket(sio.eio, "sid")
    sio.eio.sockets["sid"] = session
    assert type(session) is eio4.EngineIOSocket
    for attribute in ("last_ping", "closing", "closed", "upgraded", "queue"):
        assert hasattr(session, attribute), attribute
    assert sio.packet_class is eio4.BoundedPacket


def test_gevent_websocket_slots_that_are_read():
    """gevent-websocket's WebSocket has __slots__: wsfast and the eio3 transport read these."""
    for slot in ("stream", "handler", "closed", "raw_read", "environ"):
        assert slot in WebSocket.__slots__ or hasattr(WebSocket, slot), slot
    for opcode in ("OPCODE_TEXT", "OPCODE_BINARY", "OPCODE_CONTINUATION", "OPCODE_CLOSE",
                   "OPCODE_PING", "OPCODE_PONG"):
        assert isinstance(getattr(WebSocket, opcode), int)
