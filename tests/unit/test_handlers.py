"""Ingest's handlers without a server: the event table, logins and frames, on a real Ledger
and real Users; the frame pipeline is a list (the dispatcher's interface is ours)."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from camstream import wire
from camstream.config import Config
from camstream.ingest.handlers import UNHANDLED, Conn, Handlers
from camstream.ingest.ledger import Ledger
from camstream.ingest.limits import LoginThrottle
from camstream.users import Users


class Pipeline:
    """What a Dispatcher is told: streams opened, frames offered, streams closed."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def open(self, number, name, counts) -> None:
        self.calls.append(("open", number, name))

    def offer(self, number, header, jpeg, seq) -> None:
        self.calls.append(("offer", number, wire.Header.unpack(header), bytes(jpeg), seq))

    def close(self, number) -> None:
        self.calls.append(("close", number))


class Client:
    """One connection's side: what it was sent, whether it was disconnected."""

    def __init__(self, handlers: Handlers, sid: str, address: str = "127.0.0.1") -> None:
        self.sent: list[tuple] = []
        self.disconnected = False
        self.conn = Conn(sid, address, lambda event, *args: self.sent.append((event, *args)),
                         self.disconnect)
        self.admitted = handlers.connect(self.conn)

    def disconnect(self) -> None:
        self.disconnected = True


@pytest.fixture(scope="module")
def users() -> Users:
    users = Users()
    users.add("alice", "secret")
    return users


def make_handlers(users: Users, **settings) -> tuple[Handlers, Pipeline, list, list]:
    pipeline, published, later = Pipeline(), [], []
    handlers = Handlers(Config(**settings), users, Ledger(), pipeline, published.append,
                        later=lambda delay, fn: later.append((delay, fn)),
                        pause=lambda s: None)
    return handlers, pipeline, published, later


JPEG = b"\xff\xd8\xff\xe0jpeg\xff\xd9"


def test_the_event_table_has_the_three_events_and_unknown_ones_are_not_acked(users, caplog):
    handlers, *_ = make_handlers(users)
    assert set(handlers.events) == {"authenticate", "receiveImage", "frame"}
    client = Client(handlers, "s1")
    with caplog.at_level(logging.WARNING, "camstream.ingest"):
        assert handlers.on_event(client.conn, "hello", ()) is UNHANDLED
        assert handlers.on_event(client.conn, "hello", (1,)) is UNHANDLED
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown event 'hello' from 127.0.0.1"]  # once per connection


def test_frames_before_a_login_are_refused_then_accepted_and_stamped(users):
    handlers, pipeline, published, _ = make_handlers(users)
    client = Client(handlers, "s1")
    assert handlers.on_event(client.conn, "frame", ({}, JPEG)) == {
        "accepted": False, "seq": 1, "reason": "unauthenticated"}
    assert handlers.on_event(client.conn, "authenticate", ("bob", "", "onLogin")) is True
    assert client.sent == [("onLogin", True)]
    assert published == [wire.Event("bob", "join").pack()]
    assert handlers.on_event(client.conn, "frame", ({}, JPEG)) == {
        "accepted": True, "seq": 1, "dropped": 0}
    assert handlers.on_event(client.conn, "receiveImage", (JPEG,)) is None  # acked with nothing
    opened, offer = pipeline.calls[0], pipeline.calls[1]
    assert opened == ("open", "1", "bob")
    header = offer[2]
    assert (header.client, header.session, header.seq, offer[3]) == ("bob", "1", 1, JPEG)
    assert len(pipeline.calls) == 3 and pipeline.calls[2][4] == 2


@pytest.mark.parametrize("args, reason", [
    ((), "malformed"), (("meta", JPEG), "malformed"), (({}, "text"), "not bytes"),
    (({}, b""), "empty frame"), (({}, bytes(2049)), "too large"),
])
def test_a_bad_frame_is_refused_with_its_reason(users, args, reason):
    handlers, pipeline, *_ = make_handlers(users, max_frame_bytes=2048)
    client = Client(handlers, "s1")
    handlers.login(client.conn, "bob", "")
    answer = handlers.on_frame(client.conn, args)
    assert answer["accepted"] is False and answer["reason"].startswith(reason)
    assert [c[0] for c in pipeline.calls] == ["open"]
    assert handlers.ledger.client("bob").refused == 1


def test_frames_beyond_the_rate_are_refused(users):
    handlers, *_ = make_handlers(users, max_fps=2)
    client = Client(handlers, "s1")
    handlers.login(client.conn, "bob", "")
    answers = [handlers.on_frame(client.conn, ({}, JPEG))["accepted"] for _ in range(4)]
    assert answers == [True, True, False, False]


def test_a_wrong_password_is_answered_then_disconnected_later(users):
    handlers, pipeline, published, later = make_handlers(users, auth=True)
    handlers.throttle = LoginThrottle(base=0)  # the right password at once after a wrong one
    client = Client(handlers, "s1")
    assert handlers.on_event(client.conn, "authenticate", ("alice", "wrong")) is False
    assert client.sent == [("onAuthentication", False)] and not client.disconnected
    assert [delay for delay, _ in later] == [0.5]
    later[0][1]()
    assert client.disconnected and published == [] and pipeline.calls == []
    assert handlers.on_event(client.conn, "authenticate", ("alice", "secret", 7)) is True
    assert client.sent[-1] == ("onAuthentication", True)  # a reply event not a string
    assert client.conn.name == "alice"


def test_an_unknown_user_and_bad_arguments_are_refused(users):
    handlers, _, _, later = make_handlers(users, auth=True)
    client = Client(handlers, "s1")
    assert handlers.on_authenticate(client.conn, ("nobody", "secret")) is False
    assert handlers.on_authenticate(client.conn, ("a/b", "x")) is False  # not a name
    assert handlers.on_authenticate(client.conn, ("alice",)) is False
    assert client.sent == [("onAuthentication", False)] * 2 and len(later) == 2


def test_failed_logins_are_throttled(users):
    handlers, *_ = make_handlers(users, auth=True)
    handlers.throttle = LoginThrottle(base=30)  # longer than a password hash takes
    client = Client(handlers, "s1")
    assert not handlers.login(client.conn, "alice", "wrong")
    assert handlers.login_wait("127.0.0.1", "alice") > 0
    assert not handlers.login(client.conn, "alice", "secret")  # refused before the hash
    assert handlers.ledger.limit_hits["login_throttled"] == 1
    assert make_handlers(users)[0].login_wait("127.0.0.1", "alice") == 0.0  # without -a


def test_connections_per_address_and_the_drain(users):
    handlers, pipeline, published, _ = make_handlers(users, max_connections_per_ip=1)
    first = Client(handlers, "s1")
    assert first.admitted and first.conn.number == "1"
    assert not Client(handlers, "s2").admitted
    assert Client(handlers, "s3", address="10.0.0.2").admitted
    handlers.login(first.conn, "bob", "")
    handlers.disconnect(first.conn, "client disconnect")
    assert pipeline.calls[-1] == ("close", "1")
    assert published[-1] == wire.Event("bob", "leave").pack()
    assert Client(handlers, "s4").admitted  # its address has room again
    handlers.draining = True
    assert not Client(handlers, "s5", address="10.0.0.9").admitted


def test_the_handlers_import_no_event_loop_nor_transport():
    """The handlers and the Engine.IO 3 session run without gevent, ZeroMQ or gevent-websocket."""
    code = ("import sys, camstream.ingest.handlers, camstream.ingest.eio3.session; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'gevent', 'zmq', 'geventwebsocket'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
