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
"""
from __future__ import annotations

import collections
import logging
import socket
import struct

import gevent

import numpy as np
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

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
    payload = self.raw_read(header.length)
    if len(payload) != header.length:
        raise WebSocketError("Unexpected EOF reading frame payload")
    if header.mask:
        payload = header.unmask_payload(payload)
    return header, payload


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
