"""Fixtures only: real daemons on 127.0.0.1 and socket.io clients, stopped after each test.
The helpers they use (and the tests import) are in tests/helpers."""
from __future__ import annotations

import pytest
import socketio

pytest.register_assert_rewrite("tests.helpers")  # before the import: helpers' asserts explain
from tests.helpers import Daemon  # noqa: E402


@pytest.fixture
def daemons(tmp_path):
    """Start daemons with ``daemons(*args, workers=N)``; all are stopped after the test."""
    started: list[Daemon] = []

    def start(*args: str, workers: int = 2, ready: bool = True, env: dict | None = None):
        d = Daemon(tmp_path, *args, workers=workers, env=env)
        started.append(d)
        if ready:
            d.wait_ready()
        return d
    yield start
    for d in started:
        d.shutdown()


@pytest.fixture
def clients():
    """python-socketio clients, disconnected after the test."""
    made: list[socketio.Client] = []

    def connect(url: str, username: str | None = "alice", password: str = "",
                transports=("websocket",), auth: bool = True, **kw) -> socketio.Client:
        sio = socketio.Client(reconnection=False, **kw)
        made.append(sio)
        sio.connect(url, transports=list(transports), wait_timeout=10,
                    auth={"username": username, "password": password}
                    if auth and username is not None else None)
        return sio
    yield connect
    for sio in made:
        if sio.connected:
            sio.disconnect()
