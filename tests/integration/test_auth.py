"""Authentication on both paths: the prototype's authenticate event and connect-time auth."""
from __future__ import annotations

import threading
import time

import pytest
import socketio

from tests.helpers import make_jpeg, make_users, wait_for


@pytest.fixture
def secured(daemons, tmp_path):
    users = make_users(tmp_path, alice="wonderland", bob="builder")
    return daemons("-a", "--users", str(users), "--metrics-trust-loopback", workers=1)


def refusal(url: str, username: str, password: str):
    """Connect with auth that should be refused; return the connect error's data."""
    errors: list = []
    sio = socketio.Client(reconnection=False)
    sio.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        sio.connect(url, transports=["websocket"], wait_timeout=10,
                    auth={"username": username, "password": password})
    return errors[0] if errors else None


def test_connect_time_auth(secured, clients):
    sio = clients(secured.url, "alice", "wonderland")
    ack = sio.call("frame", ({}, make_jpeg()), timeout=10)
    assert ack["accepted"] is True
    for name, password in (("alice", "wrong"), ("mallory", "wonderland")):
        refused = refusal(secured.url, name, password)
        assert refused["message"] == "authentication failed", refused
        assert 0 < refused["data"]["retry_in_s"] <= 1.0, refused  # the throttle's wait
    assert "login failed for user 'alice'" in secured.output()
    assert "wrong" not in secured.output()  # no password in the logs


def test_authenticate_event_replies_to_that_client_only(secured, clients):
    bystander = clients(secured.url, None)
    seen: list = []
    bystander.on("onAuthentication", lambda ok: seen.append(ok))
    assert bystander.call("authenticate", ("bob", "builder", "onAuthentication"),
                          timeout=10) is True

    replies: list = []
    got = threading.Event()
    wrong = clients(secured.url, None)
    wrong.on("onAuthentication", lambda ok: (replies.append(ok), got.set()))
    disconnected = threading.Event()
    wrong.on("disconnect", lambda *a: disconnected.set())
    wrong.emit("authenticate", ("bob", "nope", "onAuthentication"))
    assert got.wait(10) and replies == [False]
    assert disconnected.wait(10), "a client with a wrong password is disconnected"
    time.sleep(0.3)
    assert seen == [True], "the bystander saw only its own reply"
    assert bystander.connected


def test_right_password_on_the_legacy_path(secured, clients):
    sio = clients(secured.url, None)
    replies: list = []
    sio.on("onAuthentication", replies.append)
    sio.emit("authenticate", ("alice", "wonderland", "onAuthentication"))
    wait_for(lambda: replies, 10, what="the reply")
    assert replies == [True]
    sio.emit("receiveImage", make_jpeg())
    wait_for(lambda: secured.health()["clients"]["alice"]["processed"] == 1, 10,
             what="the frame to be processed")


def test_unauthenticated_frames_are_refused_and_counted(secured, clients):
    sio = clients(secured.url, None)
    ack = sio.call("frame", ({}, make_jpeg()), timeout=10)
    assert ack == {"accepted": False, "seq": 1, "reason": "unauthenticated"}
    sio.emit("receiveImage", make_jpeg())
    h = wait_for(lambda: secured.health()["clients"].get("(unauthenticated)", {})
                 .get("refused") == 2 and secured.health(), 10, what="2 refusals counted")
    assert h["totals"]["refused"] == 2 and h["totals"]["dispatched"] == 0
    assert sio.connected


def test_without_auth_any_credentials_name_the_stream(daemons, clients):
    d = daemons(workers=1)
    sio = clients(d.url, None)
    assert sio.call("authenticate", ("phone-7", "whatever", "onAuthentication"),
                    timeout=10) is True
    sio.emit("receiveImage", make_jpeg())
    wait_for(lambda: d.health()["clients"]["phone-7"]["processed"] == 1, 10,
             what="the frame under the stream's name")
