"""gevent-websocket, made fast and bounded, by replacing four of its methods at ingest start
(gevent-websocket itself is not forked):

- ``Header.mask_payload``: gevent-websocket unmasks every client frame with a per-byte Python
  loop, 12 ms for a 60 KB JPEG, the stock stack's whole ceiling; this is a numpy XOR over
  32-bit words (plus the 0-3 trailing bytes).
- ``WebSocket.read_frame``: gevent-websocket reads a frame of any announced length into memory
  (a header announcing 2 GiB, then 300 MB of it, took ingest from 58 to 373 MB); this checks
  the announced length, and the message's length so far (``read_message`` counts it),
  against the limit before reading the payload.
- ``WebSocket.receive``: a message over the limit closes the websocket with 1009 (message too
  big), one log line.

The payload is read straight from the socket into a reused buffer (``readinto``) and unmasked
out of it by ``websockets.speedups.apply_mask`` (C): one copy, which is the frame handed on.
Also here, for both protocol revisions: :func:`parse_frame_event`, which recognises the one
packet that carries a camera frame without the generic Socket.IO decoder, and
:class:`AckWriter`, which writes the acks released in one loop turn as one ``send``.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import socket
import struct

import gevent
import gevent.lock

import numpy as np
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension: numpy below
    apply_mask = None

log = logging.getLogger("camstream.wsfast")
MAX_CONTROL = 125  # RFC 6455 5.5: a control frame's payload
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


_stock_receive = WebSocket.receive
_stock_read_message = WebSocket.read_message
# bytes of the message being read, per websocket (gevent-websocket's WebSocket has __slots__):
# an entry lives only while its read_message runs
_reading: dict[int, int] = {}


def read_message(self: WebSocket):
    """gevent-websocket's ``read_message``, counting the message's bytes for ``read_frame``."""
    _reading[id(self)] = 0
    try:
        return _stock_read_message(self)
    finally:
        _reading.pop(id(self), None)


def read_frame(self: WebSocket):
    """gevent-websocket's ``read_frame``, the length checked before the payload is read."""
    header = Header.decode_header(self.stream)
    if header.flags:
        raise ProtocolError("reserved bits set")
    so_far = _reading.get(id(self), 0)
    check_length(header, so_far, WebSocket.max_message)
    if header.opcode < 8:
        _reading[id(self)] = so_far + header.length
    if not header.length:
        return header, b""
    return header, read_payload(self, header.length, header.mask)


def receive(self: WebSocket):
    """gevent-websocket's ``receive``; a message over the limit is closed with 1009."""
    try:
        return _stock_receive(self)
    except MessageTooBig as e:
        address = (self.environ or {}).get("REMOTE_ADDR", "?")
        log.warning("websocket from %s: %s; closing it (1009)", address, e)
        WebSocket.hits["message_too_big"] += 1
        close_with(self, CLOSE_TOO_BIG, b"message too big")
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


def ack_text(ack_id: int, result) -> str:
    """The Socket.IO ack of ``result``, as an Engine.IO message: ``43<id>[<result>]``."""
    return f"43{ack_id}{json.dumps([result], separators=(',', ':'))}"


class AckWriter:
    """Writes a websocket's acks without its writer greenlet: those released in one loop turn
    go out as one ``sendall`` of their frames, from a greenlet of their own (a dispatcher
    releasing an ack must never wait for a client's socket). ``lock`` is held by everything
    else that writes on the websocket, so frames never interleave."""

    __slots__ = ("ws", "lock", "pending", "flushing")

    def __init__(self, ws: WebSocket, lock: gevent.lock.RLock) -> None:
        self.ws = ws
        self.lock = lock
        self.pending: list[bytes] = []
        self.flushing = False

    def write(self, text: str) -> None:
        """Queue one text message; it leaves once this loop turn is over."""
        self.pending.append(text.encode())
        if not self.flushing:
            self.flushing = True
            gevent.spawn(self.flush)

    def flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                wire = b"".join(Header.encode_header(True, WebSocket.OPCODE_TEXT, b"",
                                                     len(p), 0) + p for p in batch)
                if self.ws.closed:
                    return
                with self.lock:
                    self.ws.stream.write(wire)
        except (WebSocketError, OSError, AttributeError):
            pass  # a dead socket: its reader sees it too and closes the session
        finally:
            self.pending.clear()
            self.flushing = False


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
    WebSocket.read_frame = read_frame
    WebSocket.read_message = read_message
    WebSocket.receive = receive
