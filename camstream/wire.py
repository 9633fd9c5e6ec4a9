"""What travels on camstream's ZeroMQ sockets: the frame header and the bus topics.

A frame is a multipart message ``[header, jpeg]`` (on the bus ``[topic, header, jpeg]``). The
header is packed with :mod:`struct`, not JSON: it is on the hot path and workers unpack it for
every frame. The JPEG bytes follow untouched, sent without copying.
"""
from __future__ import annotations

import json
import struct
from typing import NamedTuple

VERSION = 1
_FIXED = struct.Struct("<BQqIBB")  # version, seq, recv_ns, size, len(client), len(session)


class Header(NamedTuple):
    client: str      # the stream's name: the username the client logged in with
    session: str     # ingest's number for the connection that sent it (never the transport's
                     # session id: with long polling that is the connection's credential)
    seq: int         # per-client sequence number given by ingest
    recv_ns: int     # time.time_ns() when ingest received the frame
    size: int        # JPEG byte count

    def __getitem__(self, key):
        """``header["seq"]`` as well as ``header.seq`` (processors are told both work);
        integers and slices index the tuple as usual."""
        if isinstance(key, str):
            if key in self._fields:
                return getattr(self, key)
            raise KeyError(key)
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        """The field names, so that ``dict(header)`` is the header as a dict."""
        return self._fields

    def pack(self) -> bytes:
        client = self.client.encode()
        session = self.session.encode()
        return _FIXED.pack(VERSION, self.seq, self.recv_ns, self.size,
                           len(client), len(session)) + client + session

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        version, seq, recv_ns, size, nclient, nsession = _FIXED.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"frame header version {version}, expected {VERSION}")
        start = _FIXED.size
        client = bytes(data[start:start + nclient]).decode()
        session = bytes(data[start + nclient:start + nclient + nsession]).decode()
        return cls(client, session, seq, recv_ns, size)


# Bus topics. A topic ends with NUL so that subscribing to one client's name does not also
# match every name that starts with it.
RAW = b"raw\0"          # [topic, header, jpeg]: every frame ingest accepted
PROCESSED = b"out\0"    # [topic, header, result json, annotated jpeg or b""]: worker output
STATS = b"stats\0"      # [topic, json]: periodic counters and heartbeats of each process
EVENTS = b"event\0"     # [topic, json]: a client joined or left


def topic(kind: bytes, name: str) -> bytes:
    return kind + name.encode() + b"\0"


def pack_json(kind: bytes, name: str, obj: dict) -> list[bytes]:
    return [topic(kind, name), json.dumps(obj, separators=(",", ":")).encode()]


def unpack_json(parts: list) -> tuple[str, dict]:
    """Return (name, object) of a [topic, json] message."""
    name = bytes(parts[0]).split(b"\0")[1].decode()
    return name, json.loads(bytes(parts[1]))
