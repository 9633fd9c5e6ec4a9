"""Every bus and pipeline message through camstream.wire: round trips, the bytes other
processes and remote workers of this release expect, and clear errors for what is not a
message of this release. In one process, on real ZeroMQ sockets over inproc."""
from __future__ import annotations

import json
import struct
import time

import gevent
import pytest
import zmq
import zmq.green

from camstream import bus, wire
from camstream.ingest.dispatch import Dispatcher
from camstream.ingest.ledger import ClientCounts
from camstream.names import safe

HEADER = wire.Header("alice", "7", 42, 1_700_000_000_123_456_789, 5)


@pytest.fixture
def pair():
    """Two connected PAIR sockets: what one sends, the other receives, as on the bus."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    yield a, b
    ctx.destroy(linger=0)


def sent(pair, parts: list, copy: bool = True) -> list:
    a, b = pair
    a.send_multipart(parts, copy=False)
    assert b.poll(1000)
    return b.recv_multipart(copy=copy)


# -- the bytes on the wire stay what they were -----------------------------------------------

def test_header_bytes_are_the_version_1_layout():
    packed = HEADER.pack()
    assert packed == struct.pack("<BQqIBB", 1, 42, 1_700_000_000_123_456_789, 5, 5, 1) \
        + b"alice7"
    assert wire.Header.unpack(packed) == HEADER
    assert dict(HEADER)["seq"] == HEADER["seq"] == 42 and HEADER[0] == "alice"


def test_topics_end_with_nul():
    assert wire.Frame.of(HEADER, b"jpeg").publish()[0] == b"raw\0alice\0"
    assert wire.Result(HEADER, b"{}").pack()[0] == b"out\0alice\0"
    assert wire.Stats("worker 1", {}).pack()[0] == b"stats\0worker 1\0"
    assert wire.Event("alice", "join").pack() == [b"event\0alice\0", b'{"event":"join"}']


def test_stats_json_is_compact():
    assert wire.Stats("ingest", {"role": "ingest", "pid": 1}).pack()[1] \
        == b'{"role":"ingest","pid":1}'


# -- round trips ------------------------------------------------------------------------------

def test_frame_round_trip_on_the_pipeline_without_copies(pair):
    frame = wire.Frame.of(HEADER, b"\xff\xd8jpeg")
    parts = sent(pair, frame.pack(), copy=False)
    got = wire.Frame.unpack(parts)
    assert got.header == HEADER and bytes(got.jpeg) == b"\xff\xd8jpeg"
    assert isinstance(got.jpeg, memoryview)   # a view of the received message, not a copy
    assert got.packed is parts[0]             # sent on as it came


def test_frame_round_trip_on_the_bus(pair):
    got = wire.Frame.unpack_published(sent(pair, wire.Frame.of(HEADER, b"jpeg").publish()))
    assert got.header == HEADER and bytes(got.jpeg) == b"jpeg"
    assert isinstance(wire.unpack(sent(pair, wire.Frame.of(HEADER, b"j").publish())),
                      wire.Frame)


def test_result_of_a_frame_forwards_its_header_part(pair):
    frame = wire.Frame.unpack(sent(pair, wire.Frame.of(HEADER, b"jpeg").pack(), copy=False))
    result = wire.Result.of(frame, {"faces": 2, "seq": 42}, b"annotated")
    packed = result.pack()
    assert packed[1] is frame.packed
    got = wire.Result.unpack(sent(pair, packed, copy=False))
    assert got.header == HEADER and got.result == {"faces": 2, "seq": 42}
    assert bytes(got.jpeg) == b"annotated" and got.annotated
    assert not wire.Result.unpack(sent(pair, wire.Result(HEADER, b"{}").pack())).annotated


def test_stats_full_and_partial_round_trip(pair):
    full = wire.Stats("worker 2", {"role": "worker", "full": True, "clients": {"a": {}}})
    partial = wire.Stats("worker 2", {"role": "worker", "full": False, "clients": {}})
    assert wire.Stats.unpack(sent(pair, full.pack())) == full and full.full
    got = wire.unpack(sent(pair, partial.pack()))
    assert got == partial and not got.full
    name, report = got
    assert name == "worker 2" and report["role"] == "worker"


def test_event_round_trip(pair):
    for kind in ("join", "leave"):
        event = wire.Event("bob@home", kind)
        assert wire.Event.unpack(sent(pair, event.pack())) == event
        assert wire.unpack(event.pack()) == event


def test_what_ingest_dispatches_is_what_wire_unpacks():
    """The dispatcher sends ingest's packed header and the JPEG as they are; the worker's
    and the subscribers' unpackers read them."""
    ctx = zmq.green.Context()
    push, pub = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUB)
    push.bind("inproc://frames")
    pub.bind("inproc://bus")
    pull, sub = ctx.socket(zmq.PULL), ctx.socket(zmq.SUB)
    pull.connect("inproc://frames")
    sub.setsockopt(zmq.SUBSCRIBE, wire.RAW)
    sub.connect("inproc://bus")
    try:
        dispatcher = Dispatcher(push, pub, queue_depth=1)
        dispatcher.open("7", "alice", ClientCounts())
        gevent.sleep(0.05)  # the subscription reaches the publisher
        dispatcher.offer("7", HEADER.pack(), b"jpeg", 42)
        dispatcher.send_ready()
        assert pull.poll(1000) and sub.poll(1000)
        frame = wire.Frame.unpack(pull.recv_multipart(copy=False))
        published = wire.Frame.unpack_published(sub.recv_multipart())
        assert frame.header == published.header == HEADER
        assert bytes(frame.jpeg) == bytes(published.jpeg) == b"jpeg"
    finally:
        ctx.destroy(linger=0)


# -- what is not a message of this release ---------------------------------------------------

GOOD_RESULT = wire.Result(HEADER, b"{}").pack()


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter than its fixed"),
    (HEADER.pack()[:10], "shorter than its fixed"),
    (HEADER.pack()[:-1], "declaring"),
    (HEADER.pack() + b"x", "declaring"),
    (bytes([2]) + HEADER.pack()[1:], "version 2, expected 1"),
    (HEADER.pack()[:-6] + b"\xff\xfe\xfd\xfc\xfb7", "not UTF-8"),
])
def test_bad_headers_are_refused(data, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.Header.unpack(data)


@pytest.mark.parametrize("unpack, parts, reason", [
    (wire.Frame.unpack, [HEADER.pack()], "1 parts, expected 2"),
    (wire.Frame.unpack, [HEADER.pack(), b"jpeg", b"more"], "3 parts, expected 2"),
    (wire.Frame.unpack_published, [b"out\0alice\0", HEADER.pack(), b"j"], "expected b'raw"),
    (wire.Result.unpack, GOOD_RESULT[:3], "3 parts, expected 4"),
    (wire.Result.unpack, GOOD_RESULT + [b""], "5 parts, expected 4"),
    (wire.Result.unpack, [b"out\0alice"] + GOOD_RESULT[1:], "expected b'out"),
    (wire.Result.unpack, GOOD_RESULT[:1] + [bytes([9]) + HEADER.pack()[1:]] + GOOD_RESULT[2:],
     "version 9"),
    (wire.Stats.unpack, [b"stats\0ingest\0"], "1 parts, expected 2"),
    (wire.Stats.unpack, [b"stats\0ingest\0", b"{", b"x"], "3 parts"),
    (wire.Stats.unpack, [b"stats\0ingest\0", b"{not json"], "not JSON"),
    (wire.Stats.unpack, [b"stats\0ingest\0", b"[1, 2]"], "JSON list, expected an object"),
    (wire.Stats.unpack, [b"stats\0\xff\0", b"{}"], "not UTF-8"),
    (wire.Event.unpack, [b"event\0bob\0", b'{"event": "explode"}'], "'explode', expected"),
    (wire.Event.unpack, [b"event\0bob\0", b"{}"], "None, expected"),
    (wire.unpack, [], "empty message"),
    (wire.unpack, [b"gossip\0x\0", b"{}"], "unknown topic"),
])
def test_bad_messages_are_refused_with_a_reason(unpack, parts, reason):
    with pytest.raises(wire.WireError, match=reason):
        unpack(parts)


def test_wire_errors_are_value_errors():
    """Callers that caught ValueError from the old decoders still catch every refusal."""
    assert issubclass(wire.WireError, ValueError)


def test_a_result_whose_payload_is_not_an_object_says_so():
    with pytest.raises(wire.WireError, match="not JSON"):
        _ = wire.Result(HEADER, b"{oops").result
    assert json.loads(wire.Result(HEADER, b"[1]").payload) == [1]  # the raw payload stays


# -- bus.drain ---------------------------------------------------------------------------------

def test_drain_unpacks_what_is_waiting_and_skips_what_does_not_unpack(pair):
    a, b = pair
    a.send_multipart(wire.Event("alice", "join").pack())
    a.send_multipart([b"event\0mallory\0", b"not json"])
    a.send_multipart(wire.Event("alice", "leave").pack())
    assert b.poll(1000)
    time.sleep(0.05)  # (inproc delivers in order; let all three arrive)
    refused = []
    got = list(bus.drain(b, wire.Event.unpack, malformed=refused.append))
    assert got == [wire.Event("alice", "join"), wire.Event("alice", "leave")]
    assert len(refused) == 1 and "not JSON" in str(refused[0])
    assert list(bus.drain(b, wire.Event.unpack)) == []  # nothing waits: no blocking


def test_drain_reads_at_most_limit(pair):
    a, b = pair
    for n in range(5):
        a.send_multipart(wire.Stats(f"worker {n}", {}).pack())
    assert b.poll(1000)
    time.sleep(0.05)
    assert [s.name for s in bus.drain(b, wire.Stats.unpack, limit=2)] == ["worker 0", "worker 1"]
    assert len(list(bus.drain(b, wire.Stats.unpack))) == 3


def test_receive_waits_and_unpacks(pair):
    a, b = pair
    a.send_multipart(GOOD_RESULT)
    assert bus.receive(b, wire.Result.unpack).header == HEADER
    a.send_multipart(GOOD_RESULT[:2])
    with pytest.raises(wire.WireError):
        bus.receive(b, wire.Result.unpack)


# -- names as files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, file", [
    ("alice", "alice"), ("bob.smith@home-1", "bob.smith@home-1"), ("7", "7"),
    ("a/b", "a_b"), ("a\0b", "a_b"), (".hidden", "_.hidden"), ("..", "_.."), ("", "_"),
    ("../../etc", "_.._.._etc"),
])
def test_safe_keeps_ordinary_names_and_one_path_component(name, file):
    assert safe(name) == file
