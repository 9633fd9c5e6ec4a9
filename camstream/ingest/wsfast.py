"""gevent-websocket, made fast and bounded, by replacing three of its methods at ingest start
(gevent-websocket itself is not forked):

- ``Header.mask_payload``: gevent-websocket unmasks every client frame with a per-byte Python
  loop, 12 ms for a 60 KB JPEG, the stock stack's whole ceiling; this is a numpy XOR over
  32-bit words (plus the 0-3 trailing bytes).
- ``WebSocket.read_message``: gevent-websocket reads a frame of any announced length into
  memory (a header announcing 2 GiB, then 300 MB of it, took ingest from 58 to 373 MB), copies
  every message into a bytearray and validates text with a UTF-8 validator written in Python;
  :func:`read_ws_message` checks each frame's announced length, and the message's so far,
  against the limit before reading the payload, and returns a one-frame message as read.
- ``WebSocket.receive``: the same, reading with :func:`read_ws_message`; a message over the
  limit closes the websocket with 1009 (message too big), one log line.

The payload is read straight from the socket into a reused buffer (``readinto``) and unmasked
out of it by ``websockets.speedups.apply_mask`` (C): one copy, which is the frame handed on.
Also here, for both protocol revisions: :func:`read_ws_message` itself, :func:`parse_frame_event`,
which recognises the one packet that carries a camera frame without the generic Socket.IO
decoder, and :class:`AckWriter`, which writes the acks released in one loop turn as one ``send``.
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import json
import logging
import re
import socket
import struct
import time

import gevent
import gevent.lock
import gevent.ssl

import numpy as np
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import MSG_ALREADY_CLOSED, MSG_CLOSED, Header, WebSocket

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension: numpy below
    apply_mask = None

log = logging.getLogger("camstream.ingest.wsfast")
MAX_CONTROL = 125  # RFC 6455 5.5: a control frame's payload
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NOT_UTF8 = 1007
CLOSE_TOO_BIG = 1009
CLOSE_LINGER = 1.0  # seconds


class MessageTooBig(Exception):
    """A websocket message announced more bytes than the limit (not a gevent-websocket
    ProtocolError, which its ``receive`` would answer with 1002)."""


def unmask(self: Header, payload: bytes) -> bytearray:
    """XOR ``payload`` with the frame's 4-byte mask, repeated: RFC 6455 section 5.3."""
    out = bytearray(payload)
    n = len(out)
    if n == 0:
        return out
    mask = bytes(self.mask)
    words = n // 4
    if words:
        key = np.frombuffer(mask, dtype=np.uint32)[0]
        view = np.frombuffer(out, dtype=np.uint32, count=words)
        np.bitwise_xor(view, key, out=view)
    for i in range(words * 4, n):
        out[i] ^= mask[i % 4]
    return out


def unmasked(payload, mask: bytes) -> bytes:
    """``payload`` (a buffer, left untouched) XOR the mask, as new bytes."""
    if apply_mask is not None:
        return apply_mask(payload, mask)
    out = bytearray(payload)
    header = Header()
    header.mask = mask
    return bytes(unmask(header, out))


MAX_KEPT_BUFFER = 1 << 20  # a reader's buffer kept for the next frame up to this size
_buffers: list[bytearray] = []  # free read buffers (one is taken while a payload is read)


def read_payload(ws: WebSocket, length: int, mask: bytes) -> bytes:
    """``length`` bytes of a frame's payload, unmasked: read into a reused buffer (no bytes
    object per read), then one copy out of it, unmasking."""
    buf = _buffers.pop() if _buffers else bytearray(65536)
    try:
        if len(buf) < length:
            buf = bytearray(max(length, 2 * len(buf)))
        view = memoryview(buf)[:length]
        got, readinto = 0, ws.stream.handler.rfile.readinto
        while got < length:
            n = readinto(view[got:])
            if not n:
                raise WebSocketError("Unexpected EOF reading frame payload")
            got += n
        return unmasked(view, mask) if mask else bytes(view)
    finally:
        del view
        if len(buf) <= MAX_KEPT_BUFFER and len(_buffers) < 16:
            _buffers.append(buf)


def check_length(header: Header, so_far: int, limit: int) -> None:
    """Raise before a payload is read that would take a message past ``limit`` bytes."""
    if header.opcode >= 8:
        if header.length > MAX_CONTROL:
            raise ProtocolError(f"control frame of {header.length} bytes")
    elif so_far + header.length > limit:
        raise MessageTooBig(f"a websocket message of {so_far + header.length}+ bytes "
                            f"(the limit is {limit})")


def read_header(read) -> Header:
    """A frame's header from ``read`` (the stream's): gevent-websocket's ``decode_header``
    with one read for the fixed part and the mask where it can (it reads three times)."""
    data = read(2)
    if len(data) != 2:
        raise WebSocketError("Unexpected EOF while decoding header")
    first, second = data
    header = Header(fin=first & 0x80 == 0x80, opcode=first & 0x0F, flags=first & 0x70,
                    length=second & 0x7F)
    extra = (2 if header.length == 126 else 8 if header.length == 127 else 0)
    masked = second & 0x80
    if extra or masked:
        data = read(extra + (4 if masked else 0))
        if len(data) != extra + (4 if masked else 0):
            raise WebSocketError("Unexpected EOF while decoding header")
        if extra:
            header.length = int.from_bytes(data[:extra], "big")
        if masked:
            header.mask = data[extra:]
    return header


def read_ws_message(ws: WebSocket, limit: int, lock=None,
                    answer_close: bool = True) -> str | bytes | bytearray | None:
    """The next text or binary message, or None when the peer closed; the lean reader of
    both protocol revisions. Each frame's announced length is checked against ``limit``
    before its payload is read (MessageTooBig); pings are answered under ``lock``; with
    ``answer_close``, a close frame is answered as gevent-websocket does (``handle_close``).
    A message of one frame, what clients send, is its payload as read: no copy into a
    bytearray, and its text validated as UTF-8 by ``bytes.decode`` (in C, once; a fragmented
    one fails at its first bad fragment), where gevent-websocket runs a validator written
    in Python over every byte."""
    read = ws.stream.read
    opcode = decoder = None
    parts: list = []
    size = 0
    while True:
        header = read_header(read)
        if header.flags:
            raise ProtocolError("websocket frame with reserved bits set (no extension agreed)")
        op = header.opcode
        if op >= 8:
            if not header.fin:
                raise ProtocolError("fragmented websocket control frame")
            check_length(header, 0, limit)  # a control frame: 125 bytes at most
            payload = read_payload(ws, header.length, header.mask) if header.length else b""
            if op == WebSocket.OPCODE_PING:
                with lock or contextlib.nullcontext():
                    ws.send_frame(payload, WebSocket.OPCODE_PONG)
                continue
            if op == WebSocket.OPCODE_PONG:
                continue
            if op == WebSocket.OPCODE_CLOSE:
                if answer_close:
                    with lock or contextlib.nullcontext():
                        ws.handle_close(header, payload)
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
        payload = read_payload(ws, header.length, header.mask) if header.length else b""
        if header.fin and not parts:
            return payload.decode("utf-8") if opcode == WebSocket.OPCODE_TEXT else payload
        if opcode == WebSocket.OPCODE_TEXT:  # fragments: each checked as it comes
            decoder = decoder or codecs.getincrementaldecoder("utf-8")()
            parts.append(decoder.decode(payload, final=header.fin))
        else:
            parts.append(payload)
        if header.fin:
            return "".join(parts) if decoder else b"".join(parts)


def read_message(self: WebSocket):
    """gevent-websocket's ``read_message``, as :func:`read_ws_message` (bounded, lean)."""
    return read_ws_message(self, WebSocket.max_message)


def receive(self: WebSocket, lock=None):
    """gevent-websocket's ``receive``, reading with :func:`read_ws_message`, what it writes
    (pongs, close frames) under ``lock``: the message, or None once the websocket is closed
    (1009 for a message over the limit, 1007 for text that is not UTF-8, 1002 for a broken
    frame: gevent-websocket means to, but its close sends an empty close frame)."""
    if self.closed:
        self.current_app.on_close(MSG_ALREADY_CLOSED)
        raise WebSocketError(MSG_ALREADY_CLOSED)
    try:
        return read_ws_message(self, WebSocket.max_message, lock)
    except MessageTooBig as e:
        address = (self.environ or {}).get("REMOTE_ADDR", "?")
        log.warning("websocket from %s: %s; closing it (1009)", address, e)
        WebSocket.hits["message_too_big"] += 1
        with lock or contextlib.nullcontext():
            close_with(self, CLOSE_TOO_BIG, b"message too big")
    except UnicodeError:
        with lock or contextlib.nullcontext():
            close_with(self, CLOSE_NOT_UTF8, b"invalid UTF-8")
    except ProtocolError:
        with lock or contextlib.nullcontext():
            close_with(self, CLOSE_PROTOCOL_ERROR, b"protocol error")
    except OSError:  # EOF, a reset (WebSocketError is one too)
        with lock or contextlib.nullcontext():
            self.close()
        self.current_app.on_close(MSG_CLOSED)
    return None


# -- the frame event, recognised without the generic decoder -----------------------------------

# ``451-<ack id>["frame",<meta>,{"_placeholder":true,"num":0}]``: an Engine.IO message (4) of a
# Socket.IO binary event (5) with one attachment, on the default namespace, as the JS and
# Python clients of both revisions write it
FRAME_EVENT = re.compile(r'451-(\d{0,15})\["frame",(\{.*\}),'
                         r'\{"_placeholder":true,"num":0\}\]', re.DOTALL)


def parse_frame_event(text: str) -> tuple[int | None, dict] | None:
    """``(ack id or None, meta)`` of a ``frame`` event's text packet, or None for anything
    else (which then goes to the generic decoder, with its checks and errors). Pure."""
    match = FRAME_EVENT.fullmatch(text)
    if match is None or "_placeholder" in match.group(2):
        return None
    try:
        meta = json.loads(match.group(2))
    except (ValueError, RecursionError):
        return None
    if not isinstance(meta, dict):
        return None
    return (int(match.group(1)) if match.group(1) else None), meta


_compact = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options makes one per call


def ack_text(ack_id: int, result) -> str:
    """The Socket.IO ack of ``result``, as an Engine.IO message: ``43<id>[<result>]``."""
    return f"43{ack_id}{_compact.encode([result])}"


YIELD_EVERY = 0.002  # seconds: the longest the handlers run before they let others run
_last_yield = 0.0


def yield_now_and_then() -> None:
    """After a message: a websocket read does not yield while data waits, so a client
    streaming flat out would hold up every other; this yields once YIELD_EVERY has passed
    since the handlers last did (a yield after every frame cost 3 % of ingest's CPU, and a
    turn of the loop)."""
    global _last_yield
    now = time.monotonic()
    if now - _last_yield >= YIELD_EVERY:
        _last_yield = now
        gevent.sleep(0)


class AckWriter:
    """Writes a websocket's acks without its writer greenlet: those released in one loop turn
    go out as one ``send`` of their frames, at the end of the turn. The send is tried from the
    hub, without blocking (no greenlet per ack: a greenlet's start maps and unmaps a stack, a
    quarter of an ack's cost); what the socket cannot take at once, or a TLS socket, goes on
    from a greenlet of its own (a dispatcher releasing an ack must never wait for a client's
    socket). ``lock`` (a semaphore: the hub takes it, a greenlet may let it go) is held by
    everything that writes on the websocket, from the first byte of a frame to its last, so
    frames never interleave."""

    __slots__ = ("ws", "lock", "stuck_after", "pending", "scheduled", "flushing")

    def __init__(self, ws: WebSocket, lock: gevent.lock.Semaphore,
                 stuck_after: float | None = None) -> None:
        self.ws = ws
        self.lock = lock
        self.stuck_after = stuck_after  # seconds a send may wait: then the client is given up
        self.pending: list[bytes] = []
        self.scheduled = False  # a send at the end of this loop turn is due
        self.flushing = False   # a greenlet is writing: what comes meanwhile is its to write

    def write(self, text: str) -> None:
        """Queue one text message; it leaves once this loop turn is over."""
        self.pending.append(text.encode())
        if not self.scheduled and not self.flushing:
            self.scheduled = True
            gevent.get_hub().loop.run_callback(self.send_now)

    def wire(self) -> bytes:
        batch, self.pending = self.pending, []
        return b"".join(Header.encode_header(True, WebSocket.OPCODE_TEXT, b"", len(p), 0) + p
                        for p in batch)

    def send_now(self) -> None:
        """From the hub: what the socket takes without waiting; a greenlet sends the rest,
        still holding the lock when part of a frame went out."""
        self.scheduled = False
        if self.flushing or not self.pending:
            return
        if self.ws.closed:
            self.pending.clear()
            return
        held = False
        try:
            sock = self.ws.handler.socket
            rest = wire = self.wire()
            if not isinstance(sock, gevent.ssl.SSLSocket) and self.lock.acquire(blocking=False):
                held = True
                try:
                    rest = wire[sock.send(wire, 0, 0.0):]  # timeout 0: never waits
                except BlockingIOError:
                    pass
        except (WebSocketError, OSError, AttributeError):
            self.pending.clear()  # a dead socket: its reader sees it too and closes the session
            rest = b""
        if rest:
            self.flushing = True
            gevent.spawn(self.flush, rest, held)
        elif held:
            self.lock.release()

    def flush(self, rest: bytes, held: bool = False) -> None:
        """Send ``rest``, then what came meanwhile; ``held``: the lock is already ours."""
        try:
            with gevent.Timeout(self.stuck_after, SendStuck):
                if not held:
                    self.lock.acquire()
                    held = True
                while rest and not self.ws.closed:
                    self.ws.stream.write(rest)
                    rest = self.wire() if self.pending else b""
        except SendStuck:
            give_up(self.ws, self.stuck_after)
        except (WebSocketError, OSError, AttributeError):
            pass  # a dead socket: its reader sees it too and closes the session
        finally:
            if held:
                self.lock.release()
            self.pending.clear()
            self.flushing = False


class SendStuck(Exception):
    """A websocket send waited longer than its bound."""


def give_up(ws: WebSocket, waited: float) -> None:
    """A send to ``ws`` waited ``waited`` seconds: its client reads nothing. Its socket is
    shut down, so that no other writer waits for it and its reader sees the end (the session
    then closes as for any dead connection); counted in ``hits["send_stuck"]``."""
    WebSocket.hits["send_stuck"] += 1
    address = (getattr(ws, "environ", None) or {}).get("REMOTE_ADDR", "?")
    log.warning("websocket from %s: a send waited %g s (the client reads nothing); closing it",
                address, waited)
    try:
        ws.handler.socket.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def close_with(ws: WebSocket, code: int, reason: bytes = b"") -> None:
    """Close ``ws`` with a status code: gevent-websocket's ``close(code, message)`` sends
    neither (an empty close frame, or the message's repr). What the peer still sends is read
    and discarded for CLOSE_LINGER seconds at most: closing a socket with unread data resets
    the connection, and the reset would destroy the close frame before the peer reads it."""
    try:
        ws.send_frame(struct.pack("!H", code) + reason, WebSocket.OPCODE_CLOSE)
        sock = ws.handler.socket
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(CLOSE_LINGER, False):
            while sock.recv(65536):
                pass
    except (WebSocketError, OSError, AttributeError):
        pass  # a dead socket: closing anyway
    ws.closed = True  # so that close() sends nothing more, and lets go of the stream
    ws.close()


def install(max_message: int = 1 << 62, hits: collections.Counter | None = None) -> None:
    """Patch gevent-websocket: the fast unmask, and messages bounded to ``max_message``
    bytes (ingest passes its transport cap; the default is no bound), each refusal counted
    in ``hits["message_too_big"]``."""
    WebSocket.hits = hits if hits is not None else collections.Counter()
    Header.mask_payload = unmask
    Header.unmask_payload = unmask
    WebSocket.max_message = max_message
    WebSocket.read_message = read_message
    WebSocket.receive = receive
