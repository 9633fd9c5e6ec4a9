"""camstream.ingest.wsfast: the vectorised unmask gives byte for byte what the per-byte loop it
replaces gives; the lean reader and the ack writer, over real socket pairs."""
from __future__ import annotations

import logging
import os

import pytest
from geventwebsocket.websocket import Header

from camstream.ingest import wsfast


def reference(mask: bytes, payload: bytes) -> bytes:
    """RFC 6455 section 5.3, byte by byte, as gevent-websocket's own loop does it."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_unmask_matches_the_stock_loop_at_every_length_and_offset():
    buf = os.urandom(4200)
    for length in list(range(0, 70)) + [1023, 1024, 1025, 4095, 4096, 4097]:
        for offset in range(4):  # payloads starting at every alignment of a larger buffer
            payload = memoryview(buf)[offset:offset + length]
            header = Header(length=length)
            header.mask = os.urandom(4)
            assert wsfast.unmask(header, payload) == reference(header.mask, bytes(payload)), \
                (length, offset)


def test_install_replaces_gevent_websockets_method():
    wsfast.install()
    header = Header(length=5)
    header.mask = b"abcd"
    assert Header.unmask_payload is wsfast.unmask
    assert header.unmask_payload(b"hello") == reference(b"abcd", b"hello")


def test_unmask_is_its_own_inverse():
    header = Header(length=60000)
    header.mask = b"\x01\x02\x03\x04"
    data = os.urandom(60000)
    assert bytes(wsfast.unmask(header, wsfast.unmask(header, data))) == data


# -- the lean reader and the ack writer, over a real socket pair ---------------------------------

@pytest.fixture
def websocket_pair():
    """``websocket_pair(sndbuf=None)``: a gevent-websocket WebSocket on one end of a real
    socket pair, and the raw peer; both ends closed after the test."""
    import socket as stdlib_socket
    from types import SimpleNamespace

    import gevent.socket
    from geventwebsocket.websocket import Stream, WebSocket
    opened = []

    def make(sndbuf: int | None = None):
        ours, peer = gevent.socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        opened.extend((ours, peer))
        if sndbuf:
            ours.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, sndbuf)
        handler = SimpleNamespace(socket=ours, rfile=ours.makefile("rb"),
                                  server=SimpleNamespace(application=None),
                                  logger=logging.getLogger("test"))
        return WebSocket({"REMOTE_ADDR": "test"}, Stream(handler), handler), peer
    yield make
    for sock in opened:
        sock.close()


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked frame, as a client writes it."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return head + mask + reference(mask, payload)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames, parsed strictly: every byte must belong to a whole frame."""
    frames, i = [], 0
    while i < len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        assert opcode in (1, 2, 8, 9, 10) and i + length <= len(data), (opcode, i, len(data))
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


def read_all(peer, timeout: float = 5.0) -> bytes:
    import gevent
    out = b""
    with gevent.Timeout(timeout, False):
        while True:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            out += chunk
    return out


def test_the_lean_reader_returns_messages_as_sent_and_answers_pings(websocket_pair):
    ws, peer = websocket_pair()
    jpeg = os.urandom(70000)
    peer.sendall(client_frame(1, '451-7["frame",{"é":1}]'.encode())
                 + client_frame(2, jpeg)
                 + client_frame(1, "hel".encode(), fin=False) + client_frame(9, b"ping!")
                 + client_frame(0, "lo ✓".encode()))
    assert wsfast.read_ws_message(ws, 1 << 20) == '451-7["frame",{"é":1}]'
    assert wsfast.read_ws_message(ws, 1 << 20) == jpeg
    assert wsfast.read_ws_message(ws, 1 << 20) == "hello ✓"
    peer.settimeout(5)
    assert server_frames(peer.recv(100)) == [(10, b"ping!")]  # the pong, between fragments


def test_receive_closes_with_the_status_code_that_says_why(websocket_pair):
    import struct
    wsfast.install(max_message=1000)
    try:
        for frames, code in ((client_frame(1, b"\xff\xfe"), 1007), (client_frame(3, b""), 1002),
                             (client_frame(2, b"x" * 600, fin=False)
                              + client_frame(0, b"x" * 600), 1009)):
            ws, peer = websocket_pair()
            peer.sendall(frames)
            peer.shutdown(1)  # (so that close_with's linger ends at once)
            assert wsfast.receive(ws) is None and ws.closed
            close = [f for f in server_frames(read_all(peer)) if f[0] == 8]
            assert close and struct.unpack("!H", close[0][1][:2])[0] == code
    finally:
        wsfast.install()


def test_acks_sent_from_the_hub_never_split_another_writers_frame(websocket_pair):
    """A socket that takes only part of the acks at once: the rest goes out before any other
    writer's frame (the lock is held from an ack frame's first byte to its last)."""
    import gevent
    import gevent.lock

    ws, peer = websocket_pair(sndbuf=4096)
    lock = gevent.lock.Semaphore()
    acks = wsfast.AckWriter(ws, lock)
    big = os.urandom(50000)

    def other_writer():
        for _ in range(3):
            with lock:
                ws.send(big, binary=True)
    texts = [wsfast.ack_text(i, {"accepted": True, "seq": i}) for i in range(2000)]
    for text in texts:  # one loop turn: one send from the hub, most of it left for a greenlet
        acks.write(text)
    writer = gevent.spawn(other_writer)
    gevent.sleep(0.05)   # the peer has read nothing: both writers are stuck mid-way
    reader = gevent.spawn(read_all, peer, 2.0)
    writer.join(10)
    assert writer.dead and not acks.flushing
    frames = server_frames(reader.get(timeout=10))
    assert [p.decode() for op, p in frames if op == 1] == texts  # all, in order
    assert [p for op, p in frames if op == 2] == [big] * 3
