"""The vectorised websocket unmask gives byte for byte what the per-byte loop it replaces
gives."""
from __future__ import annotations

import os

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
