"""The Engine.IO 3 session, sans I/O: packets and a clock (a plain float, advanced by hand) in,
packets and events out. No server, no socket, no gevent."""
from __future__ import annotations

import json

import pytest
from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG

from camstream.ingest.eio3.codec import ProtocolError
from camstream.ingest.eio3.session import (
    UPGRADE_TIMEOUT,
    Closed,
    EventReceived,
    NamespaceLeft,
    RejoinRequested,
    Session,
    Upgrade,
)
from camstream.ingest.limits import IncompleteEvents

INTERVAL, TIMEOUT = 1.5, 0.5  # seconds: fractional, announced in exact milliseconds


def new_session(now: float = 100.0, websocket: bool = False,
                budget: IncompleteEvents | None = None) -> Session:
    session = Session("sid1", now, INTERVAL, TIMEOUT,
                      budget or IncompleteEvents(1 << 20, 1 << 22, 10), websocket=websocket)
    session.accept()
    return session


def test_the_handshake_is_open_then_the_default_namespace():
    out = new_session().take_outgoing()
    assert out[0][0] == OPEN and json.loads(out[0][1]) == {
        "sid": "sid1", "upgrades": ["websocket"], "pingInterval": 1500, "pingTimeout": 500}
    assert out[1:] == [(MESSAGE, "0")]
    assert json.loads(new_session(websocket=True).take_outgoing()[0][1])["upgrades"] == []


def test_a_refused_connection_is_told_and_closed():
    session = Session("s", 0.0, INTERVAL, TIMEOUT, IncompleteEvents(1, 1, 1))
    session.take_outgoing()
    closed = session.refuse(0.0)
    assert closed == Closed("connection refused", True) and session.closed
    assert session.take_outgoing() == [(MESSAGE, '4"connection refused"'), (CLOSE, None)]


def test_a_ping_is_answered_with_a_pong_carrying_its_data():
    session = new_session()
    session.take_outgoing()
    assert session.receive(PING, "", 101.0) == []
    assert session.receive(PING, "probe", 101.1) == []
    assert session.take_outgoing() == [(PONG, None), (PONG, "probe")]
    with pytest.raises(ProtocolError, match="ping of 65"):
        session.receive(PING, "x" * 65, 101.2)
    assert session.hits["ping_too_big"] == 1


def test_a_silent_client_is_dropped_exactly_at_interval_plus_timeout():
    session = new_session(now=100.0)
    session.take_outgoing()
    assert session.deadline() == 102.0
    assert not session.timed_out(101.999) and session.expire(101.999) is None
    assert session.timed_out(102.0)
    closed = session.expire(102.0)
    assert closed == Closed("ping timeout (2 s without a packet)", True)
    assert session.take_outgoing() == [(CLOSE, None)]  # on its next poll
    assert session.expire(103.0) is None  # closed once


def test_any_packet_moves_the_deadline():
    session = new_session(now=0.0)
    session.receive(NOOP, None, 1.9)
    assert not session.timed_out(3.8) and session.timed_out(3.9)
    session.receive(MESSAGE, '2["frame"]', 3.85)  # an event, not a ping: a sign of life too
    assert session.deadline() == pytest.approx(5.85)


def test_the_upgrade_probe_then_upgrade_within_its_timeout():
    probe = Upgrade(now=10.0)
    assert probe.remaining(10.0) == UPGRADE_TIMEOUT
    assert probe.receive("2probe", 11.0) == (["3probe"], [(NOOP, None)])
    assert not probe.done
    assert probe.receive("5", 12.0) == ([], []) and probe.done


@pytest.mark.parametrize("messages, error", [
    (["5"], "without 2probe"), ([None], "without 2probe"),
    (["2probe", "2probe"], "not followed by upgrade"), (["2probe", "42[]"], "not followed"),
])
def test_an_upgrade_out_of_order_is_abandoned(messages, error):
    probe = Upgrade(now=0.0)
    with pytest.raises(ProtocolError, match=error):
        for m in messages:
            probe.receive(m, 1.0)


def test_an_upgrade_too_late_is_abandoned():
    probe = Upgrade(now=0.0)
    probe.receive("2probe", 1.0)
    assert probe.remaining(UPGRADE_TIMEOUT + 1) == 0.0
    with pytest.raises(ProtocolError, match="too long"):
        probe.receive("5", UPGRADE_TIMEOUT)


def test_one_upgrade_at_a_time_and_then_the_websocket_carries_the_close():
    session = new_session()
    session.take_outgoing()
    assert session.may_upgrade()
    session.begin_upgrade(100.0)
    assert not session.may_upgrade()  # a second websocket while probing is refused
    session.end_upgrade(False)
    assert session.may_upgrade() and not session.over_websocket
    session.begin_upgrade(101.0)
    session.end_upgrade(True)
    assert session.over_websocket and not session.may_upgrade()
    assert session.close("server stopping", 102.0, goodbye=False) == Closed("server stopping",
                                                                          False)
    assert session.take_outgoing() == []  # the websocket's close says it all


def test_events_with_and_without_an_ack():
    session = new_session()
    session.take_outgoing()
    assert session.receive(MESSAGE, '2["receiveImage","x"]', 101.0) == [
        EventReceived("receiveImage", ("x",), None)]
    assert session.receive(MESSAGE, '27["authenticate","a","b"]', 101.0) == [
        EventReceived("authenticate", ("a", "b"), 7)]
    session.ack(7, True)
    session.ack(8, None)
    assert session.take_outgoing() == [(MESSAGE, "37[true]"), (MESSAGE, "38[]")]


def test_a_binary_event_waits_for_its_attachment_within_the_budget():
    budget = IncompleteEvents(per_connection=100, total=1000, timeout=10)
    session = new_session(budget=budget)
    assert session.receive(MESSAGE, '51-["frame",{},{"_placeholder":true,"num":0}]', 1) == []
    assert session.key in budget.held
    events = session.receive(MESSAGE, b"\xff\xd8jpeg", 1)
    assert events == [EventReceived("frame", ({}, b"\xff\xd8jpeg"), None)]
    assert session.key not in budget.held
    session.receive(MESSAGE, '51-["frame",{},{"_placeholder":true,"num":0}]', 1)
    with pytest.raises(ProtocolError):
        session.receive(MESSAGE, bytes(101), 1)  # over the per-connection budget
    assert session.hits["incomplete_bytes"] == 1


@pytest.mark.parametrize("data, error", [
    (b"\xff\xd8", "binary message without a packet"),
    ('59-["frame",{"_placeholder":true,"num":0}]', "9 attachments"),
    ('2{"no":"name"}', "event without a name"),
    ("4", "unexpected socket.io packet type 4"),
])
def test_what_the_revision_does_not_allow_is_a_protocol_error(data, error):
    with pytest.raises(ProtocolError, match=error):
        new_session().receive(MESSAGE, data, 1.0)


def test_the_namespace_left_and_joined_again():
    session = new_session()
    session.take_outgoing()
    assert session.receive(MESSAGE, "1", 1.0) == [NamespaceLeft()]
    assert session.receive(MESSAGE, '2["frame"]', 1.0) == []  # not joined: ignored
    assert session.receive(MESSAGE, "0", 1.0) == [RejoinRequested()]
    session.rejoined(False)
    assert session.take_outgoing() == [(MESSAGE, '4"connection refused"')]
    session.rejoined(True)
    assert session.receive(MESSAGE, '2["frame"]', 1.0) == [EventReceived("frame", (), None)]


def test_another_namespace_is_refused_and_its_packets_ignored():
    session = new_session()
    session.take_outgoing()
    assert session.receive(MESSAGE, "0/admin,", 1.0) == []
    assert session.receive(MESSAGE, '2/admin,["frame"]', 1.0) == []
    assert session.take_outgoing() == [(MESSAGE, '4/admin,"Invalid namespace"')]


def test_the_client_closes_and_the_server_says_goodbye():
    session = new_session()
    session.take_outgoing()
    assert session.receive(CLOSE, None, 1.0) == [Closed("client disconnect", False)]
    assert session.take_outgoing() == [(NOOP, None)]  # releases the pending poll
    other = new_session()
    other.take_outgoing()
    assert other.disconnect(2.0) == Closed("server disconnect", True)
    assert other.take_outgoing() == [(MESSAGE, "1"), (CLOSE, None)]
    assert other.disconnect(3.0) is None and other.closed_at == 2.0
    other.emit("late", 1)
    assert other.take_outgoing() == []  # nothing after the close
