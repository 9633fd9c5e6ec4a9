"""The legacy revision (Engine.IO 3 / Socket.IO 4, the Android app's) beside the current one,
driven by real clients: JS socket.io-client 2.x (the app's revision) and 4.x, python-socketio 5,
and raw-protocol clients for what no well-behaved client does."""
from __future__ import annotations

import json
import os
import threading
import time

import gevent
import pytest
import requests
import websocket

from tests.helpers import make_jpeg, wait_for
from tests.helpers.jsclient import (  # noqa: F401 (fixtures)
    app_frames, auth_daemon, jpeg_file, js, open_daemon)

pytestmark = pytest.mark.timeout(90)


def client_row(daemon, name: str) -> dict:
    return daemon.health()["clients"][name]


def wait_processed(daemon, name: str, n: int, timeout: float = 20) -> dict:
    try:
        return wait_for(lambda: (r := client_row(daemon, name))["processed"] >= n and
                        r["connected"] == 0 and r, timeout, what=f"{n} frames of {name} processed")
    except AssertionError as e:
        raise AssertionError(f"{e}: {client_row(daemon, name)}") from None


def py_stream(clients, url: str, name: str, password: str, count: int, fps: float,
              transports) -> str:
    """python-socketio 5 doing what the app does: authenticate event, receiveImage frames."""
    sio = clients(url, username=None, transports=transports)
    replies = []
    sio.on("onAuthentication", replies.append)
    sio.emit("authenticate", (name, password, "onAuthentication"))
    wait_for(lambda: replies, 10, what="onAuthentication")
    assert replies == [True]
    jpeg = make_jpeg(320, 240, 80)
    for _ in range(count):
        sio.emit("receiveImage", jpeg)
        time.sleep(1 / fps)
    transport = sio.transport()
    sio.disconnect()
    return transport


def legacy_handshake(url: str) -> dict:
    """A raw Engine.IO 3 polling handshake: the open packet's JSON."""
    r = requests.get(url + "/socket.io/", params={"EIO": "3", "transport": "polling"},
                     timeout=5)
    assert r.status_code == 200, r.text
    return json.loads(r.text[r.text.index("{"):r.text.index("}") + 1])


# -- (1) each client, each transport -----------------------------------------------------------

@pytest.mark.parametrize("client, mode", [
    ("2", "default"), ("2", "websocket"), ("2", "polling"), ("2", "b64"),
    ("4", "default"), ("4", "websocket"), ("py", "default"), ("py", "websocket")])
def test_client_streams_and_disconnects(open_daemon, js, clients, jpeg_file, client, mode):
    name = f"c{client}-{mode}"
    if client == "py":
        transports = ("polling", "websocket") if mode == "default" else ("websocket",)
        transport = py_stream(clients, open_daemon.url, name, "", 10, 20, transports)
    else:
        rc, summary = js.result(js.start(open_daemon.url, client, name, frames=jpeg_file,
                                         count=10, fps=20, mode=mode))
        assert rc == 0, summary
        assert summary["authenticated"] is True and summary["sent"] == 10
        assert summary["events"] == [["onAuthentication", True]]
        assert summary["upgraded"] is (mode == "default")
        transport = summary["transport"]
    assert transport == ("polling" if mode in ("polling", "b64") else "websocket")
    row = wait_processed(open_daemon, name, 10)
    assert (row["received"], row["processed"], row["refused"], row["errors"]) == (10, 10, 0, 0)


# -- (2) a refused login is told to that client only -------------------------------------------

def test_wrong_password_refused_then_disconnected_and_nobody_else_hears(auth_daemon, js):
    other = js.start(auth_daemon.url, "2", "bob", auth_daemon.users["bob"], hold=3)
    wait_for(lambda: client_row(auth_daemon, "bob")["connected"] == 1, 15,
             what="bob logged in")
    rc, refused = js.result(js.start(auth_daemon.url, "2", "alice", "not her password"))
    assert rc == 3, refused
    assert refused["authenticated"] is False
    assert refused["events"] == [["onAuthentication", False]]
    assert refused["disconnect"] == "io server disconnect"  # the server hung up, as the app sees
    rc, summary = js.result(other)
    assert rc == 0, summary
    assert summary["events"] == [["onAuthentication", True]]  # nothing of alice's reply
    assert "login failed for user 'alice'" in auth_daemon.output()


# -- (3) both revisions at once ----------------------------------------------------------------

def test_four_legacy_and_four_current_clients_together(open_daemon, js, jpeg_file):
    runs = {}
    for i, (client, mode) in enumerate([("2", "default"), ("2", "websocket")] * 2 +
                                       [("4", "default"), ("4", "websocket")] * 2):
        name = f"mix{i}-{client}-{mode}"
        runs[name] = js.start(open_daemon.url, client, name, frames=jpeg_file, count=30,
                              fps=10, mode=mode)
    for name, proc in runs.items():
        rc, summary = js.result(proc)
        assert rc == 0 and summary["sent"] == 30, (name, summary)

    def settled():
        rows = {n: client_row(open_daemon, n) for n in runs}
        return all(r["connected"] == 0 and r["processed"] + r["errors"] == r["dispatched"]
                   and r["received"] == r["refused"] + r["dropped"] + r["dispatched"]
                   for r in rows.values()) and rows
    rows = wait_for(settled, 20, what="every frame dispatched was processed")
    for name, r in rows.items():
        assert r["received"] == 30 == r["refused"] + r["dropped"] + r["dispatched"], (name, r)
        assert (r["refused"], r["errors"]) == (0, 0), (name, r)
    totals = open_daemon.health()["totals"]
    assert totals["received"] == sum(r["received"] for r in open_daemon.health()["clients"]
                                     .values())


# -- (4) heartbeats: the announced values, and a silent client dropped ------------------------

def test_handshake_announces_the_configured_ping_values(open_daemon):
    r = requests.get(open_daemon.url + "/socket.io/", params={"EIO": "3", "transport": "polling"},
                     timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    length, _, rest = r.text.partition(":")
    handshake = json.loads(rest[1:int(length)])
    assert rest[int(length):] == "2:40"  # Socket.IO 4 connects the default namespace unasked
    assert handshake["upgrades"] == ["websocket"]
    assert (handshake["pingInterval"], handshake["pingTimeout"]) == (2000, 2000)  # the flags
    r = requests.post(open_daemon.url + "/socket.io/", data="1:1", params={
        "EIO": "3", "transport": "polling", "sid": handshake["sid"]}, timeout=5)
    assert r.text == "ok"


def test_silent_client_dropped_by_the_daemon(open_daemon):
    ws = websocket.create_connection(
        open_daemon.url.replace("http", "ws") + "/socket.io/?EIO=3&transport=websocket",
        timeout=10)
    try:
        opened = time.monotonic()
        assert json.loads(ws.recv()[1:])["pingInterval"] == 2000 and ws.recv() == "40"
        with pytest.raises((websocket.WebSocketConnectionClosedException, OSError)):
            while True:  # bounded by the socket timeout
                ws.recv()
                if not ws.connected:
                    raise websocket.WebSocketConnectionClosedException
        silent = time.monotonic() - opened
    finally:
        ws.close()
    assert 3.9 <= silent <= 4 + 2, silent
    assert "ping timeout" in open_daemon.output()


class InProcessServer:
    """legacy.wrap around a real Ingest, on a gevent WSGIServer in a thread of its own (its
    own hub), so the test can use blocking clients: short ping settings without a daemon."""

    def __init__(self, tmp_path, ping_interval: float, ping_timeout: float) -> None:
        self.tmp = tmp_path
        self.ping = (ping_interval, ping_timeout)
        self.ready = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise AssertionError("the in-process server did not start")

    def run(self) -> None:
        import socketio
        import zmq.green as zmq
        from gevent.pywsgi import WSGIServer
        from geventwebsocket.handler import WebSocketHandler

        from camstream.ingest.eio3 import transport as legacy
        from camstream.config import Config
        from camstream.ingest.app import Ingest, socketio_server
        from camstream.users import Users

        runtime = self.tmp / "run"
        os.makedirs(runtime, exist_ok=True)
        config = Config(runtime_dir=str(runtime), ping_interval=self.ping[0],
                        ping_timeout=self.ping[1], users_file=str(self.tmp / "users"))
        ctx = zmq.Context()
        self.ingest = Ingest(config, Users.load(config.users_file, missing_ok=True), ctx)
        app = legacy.wrap(socketio.WSGIApp(socketio_server(self.ingest, config),
                                           self.ingest.http_app), self.ingest, config)
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
        server.start()
        self.port = server.server_port
        self.ready.set()
        while not self.stopping:
            gevent.sleep(0.05)
        server.stop(timeout=1)
        app.close()
        gevent.killall(self.ingest.dispatcher.greenlets)
        self.ingest.close()
        ctx.destroy(linger=0)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "the in-process server did not stop"


@pytest.fixture
def short_pings(tmp_path):
    server = InProcessServer(tmp_path, ping_interval=0.3, ping_timeout=0.3)
    yield server
    server.stop()


def test_silent_websocket_client_dropped_after_the_announced_timeout(short_pings):
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{short_pings.port}/socket.io/?EIO=3&transport=websocket", timeout=5)
    try:
        opened = ws.recv()
        assert opened.startswith("0{") and ws.recv() == "40"
        handshake = json.loads(opened[1:])
        assert (handshake["pingInterval"], handshake["pingTimeout"]) == (300, 300)
        for i in range(8):  # pinging keeps it alive well past interval + timeout
            if i:
                time.sleep(0.15)
            ws.send("2")
            last = time.monotonic()
            assert ws.recv() == "3"
        assert len(short_pings.ingest.conns) == 1
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:  # bounded by the socket timeout
                ws.recv()
                if not ws.connected:
                    raise websocket.WebSocketConnectionClosedException
        silent = time.monotonic() - last
    finally:
        ws.close()
    assert 0.55 <= silent <= 0.6 + 0.5, silent
    wait_for(lambda: not short_pings.ingest.conns, 2, what="ingest told of the disconnect")


def test_silent_polling_client_dropped_after_the_announced_timeout(short_pings):
    url = f"http://127.0.0.1:{short_pings.port}"
    sid = legacy_handshake(url)["sid"]
    url += "/socket.io/"
    assert len(short_pings.ingest.conns) == 1
    wait_for(lambda: not short_pings.ingest.conns, 1.6, interval=0.02,
             what="the silent polling client dropped")
    params = {"EIO": "3", "transport": "polling", "sid": sid}
    assert requests.get(url, params=params, timeout=5).text == "1:1"  # its last poll: close
    assert requests.get(url, params=params, timeout=5).status_code == 400


# -- (5) garbage is one connection's problem --------------------------------------------------

PLACEHOLDER = '451-["receiveImage",{"_placeholder":true,"num":0}]'
GARBAGE = {
    "unknown engine.io type": ["hello"],
    "bad socket.io json": ['42["receiveImage",'],
    "socket.io type out of range": ["49"],
    "binary without placeholder": [b"\x04\xff\xd8"],
    "binary with a bad type byte": [b"\x09\xff\xd8"],
    "too many attachments": ['459-["receiveImage",{"_placeholder":true,"num":0}]'],
    "text instead of the attachment": [PLACEHOLDER, '42["x"]'],
    "placeholder pointing nowhere": ['451-["receiveImage",{"_placeholder":true,"num":5}]',
                                     b"\x04\x01"],
    "oversize message": [b"\x04" + bytes(1_700_000)],
    "pong from a client": ["3"],
}


def test_garbage_closes_only_that_connection(open_daemon, js, clients, jpeg_file):
    bystander = js.start(open_daemon.url, "2", "bystander", frames=jpeg_file, count=40, fps=10)
    current = clients(open_daemon.url, username="current")
    wait_for(lambda: client_row(open_daemon, "bystander")["received"] > 0, 15,
             what="the bystander streaming")
    before = open_daemon.output().count("protocol error, closing")
    for messages in GARBAGE.values():
        ws = websocket.create_connection(
            open_daemon.url.replace("http", "ws") + "/socket.io/?EIO=3&transport=websocket",
            timeout=5)
        try:
            assert ws.recv().startswith("0{") and ws.recv() == "40"
            for m in messages:
                ws.send(m, opcode=websocket.ABNF.OPCODE_BINARY if isinstance(m, bytes)
                        else websocket.ABNF.OPCODE_TEXT)
            opcode = None
            while opcode != websocket.ABNF.OPCODE_CLOSE:  # bounded by the socket timeout
                opcode, _ = ws.recv_data(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
        finally:
            ws.close()
    # the same over long polling: a payload that does not parse
    sid = legacy_handshake(open_daemon.url)["sid"]
    url = open_daemon.url + "/socket.io/"
    params = {"EIO": "3", "transport": "polling", "sid": sid}
    assert requests.post(url, params=params, data="3:4zz9:", timeout=5).status_code == 400
    assert requests.get(url, params=params, timeout=5).text.endswith("1:1")

    wait_for(lambda: open_daemon.output().count("protocol error, closing") - before
             == len(GARBAGE) + 1, 5, what="one protocol error logged per bad connection")
    rc, summary = js.result(bystander)
    assert rc == 0 and summary["events"] == [["onAuthentication", True]], summary
    assert current.connected
    row = wait_processed(open_daemon, "bystander", 40)
    assert (row["received"], row["refused"], row["errors"]) == (40, 0, 0)
    assert open_daemon.health()["workers"]["alive"] == 2


# -- (6) done when: the app's behaviour, 100 frames at 10 Hz, beside a current client ---------

def test_app_streams_100_frames_at_10hz_beside_a_current_client(auth_daemon, js,
                                                                app_frames):
    app = js.start(auth_daemon.url, "2", "carol", auth_daemon.users["carol"], frames=app_frames,
                   count=100, fps=10, timeout=40)
    current = js.start(auth_daemon.url, "4", "dave", auth_daemon.users["dave"], frames=app_frames,
                       count=100, fps=10, timeout=40)
    for proc in (app, current):
        rc, summary = js.result(proc, timeout=50)
        assert rc == 0 and summary["sent"] == 100 and summary["upgraded"], summary
    for name in ("carol", "dave"):
        row = wait_processed(auth_daemon, name, 100)
        assert (row["received"], row["processed"], row["dropped"], row["refused"],
                row["errors"]) == (100, 100, 0, 0, 0), (name, row)


# -- (6) --emit-results over the legacy revision: the app ignores unknown events ---------------

@pytest.mark.parametrize("mode", ["default", "polling"])
def test_results_reach_the_legacy_client_that_sent_the_frames(daemons, js, jpeg_file, mode):
    d = daemons("--emit-results", workers=2)
    bystander = js.start(d.url, "2", "bob", hold=4, mode=mode)  # sends nothing
    wait_for(lambda: d.health()["clients"].get("bob", {}).get("connected") == 1, 15,
             what="bob connected")
    rc, summary = js.result(js.start(d.url, "2", "alice", frames=jpeg_file, count=5, fps=10,
                                     mode=mode, hold=2))
    assert rc == 0 and summary["sent"] == 5, summary
    results = [e[1] for e in summary["events"] if e[0] == "result"]
    row = wait_for(lambda: (r := d.health()["clients"]["alice"])["processed"] + r["dropped"]
                   == 5 and r, 10, what="alice's 5 frames done")
    assert sorted(r["seq"] for r in results) == sorted(set(r["seq"] for r in results))
    assert results and len(results) == row["processed"]
    assert all(r["width"] == 320 for r in results)
    rc, other = js.result(bystander)
    assert rc == 0 and other["events"] == [["onAuthentication", True]]  # none of alice's
