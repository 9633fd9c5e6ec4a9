"""Every message on camstream's ZeroMQ sockets, packed and unpacked here and nowhere else.

- a **frame**: ``[header, jpeg]`` on the pipeline, ``[RAW topic, header, jpeg]`` on the bus
  (:class:`Frame`);
- a worker's **result**: ``[PROCESSED topic, header, result json, annotated jpeg or b""]``
  (:class:`Result`);
- a process's **stats** report, counters and heartbeat: ``[STATS topic, json]``; a worker's is
  a full snapshot (``"full": true``) or only the clients that changed (:class:`Stats`);
- a client's **event**, joined or left: ``[EVENTS topic, json]`` (:class:`Event`).

The frame header is packed with :mod:`struct`, not JSON: it is on the hot path and workers
unpack it for every frame; it carries the version (:data:`VERSION`). The JPEG bytes travel
untouched: unpacking gives a view of the received buffer, never a copy, and a received header
is forwarded as it came. The bytes are the same as before this module owned them: processes
and remote workers of one release interoperate. Every unpack raises :class:`WireError` (a
ValueError) with a readable reason for a message it cannot read.
"""
from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple, Union

VERSION = 1
_FIXED = struct.Struct("<BQqIBB")  # version, seq, recv_ns, size, len(client), len(session)


class WireError(ValueError):
    """A bus or pipeline message this release cannot read (short, oversized, malformed, or of
    another version)."""


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
    def unpack(cls, data) -> Header:
        if len(data) < _FIXED.size:
            raise WireError(f"frame header of {len(data)} bytes, shorter than its fixed "
                            f"{_FIXED.size}")
        version, seq, recv_ns, size, nclient, nsession = _FIXED.unpack_from(data)
        if version != VERSION:
            raise WireError(f"frame header version {version}, expected {VERSION}")
        start = _FIXED.size
        if len(data) != start + nclient + nsession:
            raise WireError(f"frame header of {len(data)} bytes, declaring "
                            f"{start + nclient + nsession}")
        try:
            client = bytes(data[start:start + nclient]).decode()
            session = bytes(data[start + nclient:]).decode()
        except UnicodeDecodeError as e:
            raise WireError(f"frame header names are not UTF-8: {e}") from None
        return cls(client, session, seq, recv_ns, size)


# Bus topics. A topic ends with NUL so that subscribing to one client's name does not also
# match every name that starts with it.
RAW = b"raw\0"          # [topic, header, jpeg]: every frame ingest accepted
PROCESSED = b"out\0"    # [topic, header, result json, annotated jpeg or b""]: worker output
STATS = b"stats\0"      # [topic, json]: periodic counters and heartbeats of each process
EVENTS = b"event\0"     # [topic, json]: a client joined or left


def topic(kind: bytes, name: str) -> bytes:
    return kind + name.encode() + b"\0"


def _buffer(part):
    """A received part's bytes without a copy: a zmq.Frame (``copy=False``) or bytes."""
    return part.buffer if hasattr(part, "buffer") else part


def _parts(parts, count: int, what: str) -> list:
    if len(parts) != count:
        raise WireError(f"{what} message of {len(parts)} parts, expected {count}")
    return parts


def _name(part, kind: bytes, what: str) -> str:
    """The name in a topic ``kind + name + NUL``."""
    data = bytes(_buffer(part))
    if not data.startswith(kind) or not data.endswith(b"\0") or len(data) <= len(kind):
        raise WireError(f"{what} message with topic {data[:64]!r}, expected {kind!r}NAME\\0")
    try:
        return data[len(kind):-1].decode()
    except UnicodeDecodeError as e:
        raise WireError(f"{what} topic is not UTF-8: {e}") from None


def _json(part, what: str) -> dict:
    try:
        obj = json.loads(bytes(_buffer(part)))
    except ValueError as e:
        raise WireError(f"{what} message is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what} message is a JSON {type(obj).__name__}, expected an object")
    return obj


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Frame(NamedTuple):
    """A frame ingest accepted. ``jpeg`` is any buffer (a view of the received message);
    ``packed`` the header as packed bytes or the received part, sent on as it is."""
    header: Header
    jpeg: Any
    packed: Any = None

    @classmethod
    def of(cls, header: Header, jpeg) -> Frame:
        return cls(header, jpeg, header.pack())

    def _header(self):
        return self.packed if self.packed is not None else self.header.pack()

    @staticmethod
    def parts(header: bytes, jpeg) -> tuple:
        """The pipeline's message from a packed header: ingest's hot path, which builds no
        Frame."""
        return header, jpeg

    @staticmethod
    def published_parts(raw_topic: bytes, header: bytes, jpeg) -> tuple:
        """The bus's message from a packed header and ``topic(RAW, client)`` (packed once
        per client by ingest)."""
        return raw_topic, header, jpeg

    def pack(self) -> tuple:
        """The pipeline's message (send with ``copy=False``)."""
        return self.parts(self._header(), self.jpeg)

    def publish(self) -> tuple:
        """The bus's message (send with ``copy=False``)."""
        return self.published_parts(topic(RAW, self.header.client), self._header(), self.jpeg)

    @classmethod
    def unpack(cls, parts) -> Frame:
        """A pipeline message ``[header, jpeg]``."""
        head, jpeg = _parts(parts, 2, "frame")
        return cls(Header.unpack(_buffer(head)), _buffer(jpeg), head)

    @classmethod
    def unpack_published(cls, parts) -> Frame:
        """A bus message ``[RAW topic, header, jpeg]``."""
        _, head, jpeg = _parts(parts, 3, "frame")
        _name(parts[0], RAW, "frame")
        return cls(Header.unpack(_buffer(head)), _buffer(jpeg), head)


class Result(NamedTuple):
    """A worker's result for one frame: ``payload`` the result object as JSON bytes (packed
    once, by the worker), ``jpeg`` the annotated picture or empty."""
    header: Header
    payload: Any
    jpeg: Any = b""
    packed: Any = None

    @classmethod
    def of(cls, frame: Frame, result: dict | bytes, jpeg=b"") -> Result:
        """The result of ``frame``, its header sent on as it came."""
        payload = result if isinstance(result, (bytes, bytearray)) else _dumps(result)
        return cls(frame.header, payload, jpeg, frame.packed)

    @property
    def result(self) -> dict:
        """The result object; WireError if it is not a JSON object."""
        return _json(self.payload, "result")

    @property
    def annotated(self) -> bool:
        return bool(len(self.jpeg))

    def pack(self) -> list:
        head = self.packed if self.packed is not None else self.header.pack()
        return [topic(PROCESSED, self.header.client), head, self.payload, self.jpeg]

    @classmethod
    def unpack(cls, parts) -> Result:
        _, head, payload, jpeg = _parts(parts, 4, "result")
        _name(parts[0], PROCESSED, "result")
        return cls(Header.unpack(_buffer(head)), _buffer(payload), _buffer(jpeg), head)


class Stats(NamedTuple):
    """A process's report: ``name`` its topic name (``ingest``, ``supervisor``, ``pool``,
    ``worker N``), ``report`` the object (``role``, ``pid``, ``host``, counters...)."""
    name: str
    report: dict

    @property
    def full(self) -> bool:
        """A worker's full snapshot; the others carry only the clients that changed."""
        return bool(self.report.get("full"))

    def pack(self) -> list[bytes]:
        return [topic(STATS, self.name), _dumps(self.report)]

    @classmethod
    def unpack(cls, parts) -> Stats:
        _parts(parts, 2, "stats")
        return cls(_name(parts[0], STATS, "stats"), _json(parts[1], "stats"))


class Event(NamedTuple):
    """A client ``name`` joined or left (``kind``)."""
    name: str
    kind: str
    KINDS = ("join", "leave")

    def pack(self) -> list[bytes]:
        return [topic(EVENTS, self.name), _dumps({"event": self.kind})]

    @classmethod
    def unpack(cls, parts) -> Event:
        _parts(parts, 2, "event")
        name = _name(parts[0], EVENTS, "event")
        kind = _json(parts[1], "event").get("event")
        if kind not in cls.KINDS:
            raise WireError(f"event {kind!r}, expected one of {', '.join(cls.KINDS)}")
        return cls(name, kind)


Message = Union[Frame, Result, Stats, Event]
_BY_TOPIC = ((RAW, Frame.unpack_published), (PROCESSED, Result.unpack),
             (STATS, Stats.unpack), (EVENTS, Event.unpack))


def unpack(parts) -> Message:
    """Any bus message, by its topic."""
    if not len(parts):
        raise WireError("empty message")
    head = bytes(_buffer(parts[0])[:8])
    for kind, unpacker in _BY_TOPIC:
        if head.startswith(kind):
            return unpacker(parts)
    raise WireError(f"unknown topic {head!r}")
