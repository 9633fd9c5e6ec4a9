"""Fixtures only: real daemons on 127.0.0.1 and socket.io clients, stopped after each test.
The helpers they use (and the tests import) are in tests/helpers."""
from __future__ import annotations

import fcntl
import os

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


# -- four xdist workers on two cores -----------------------------------------------------------
# setup.cfg runs the suite on four xdist workers (``-n 4 --dist loadfile``): most tests wait
# on processes, sockets and timeouts, not the CPU. Two things keep that honest:
# - a file's tests stay on one worker, in order (module-scoped daemons, a screen, a built
#   system, system users and the README's port 8080 are set up once per file);
# - a test marked ``serial`` (it measures CPU time, latency or a share of frames under load)
#   runs alone: it takes an exclusive lock that every other test takes shared.

# a serial test first waits for the other worker's test, itself bounded by its timeout
SERIAL_WAIT = 120


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("serial") and os.environ.get("PYTEST_XDIST_WORKER"):
            own = item.get_closest_marker("timeout")
            limit = (own.args[0] if own and own.args else
                     own.kwargs.get("timeout") if own and "timeout" in own.kwargs else
                     float(config.getini("timeout")))
            item.add_marker(pytest.mark.timeout(limit + SERIAL_WAIT))


@pytest.fixture(autouse=True)
def _cpu_share(request, tmp_path_factory):
    """Shared lock for an ordinary test, exclusive for a ``serial`` one, held from before the
    test's own fixtures start their daemons to after they stop them. A turnstile taken first
    keeps a waiting serial test from being starved by the other worker's stream of tests."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing runs beside it
        yield
        return
    run_dir = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    serial = request.node.get_closest_marker("serial") is not None
    with open(run_dir / "cpu-share.turnstile", "a") as turnstile, \
            open(run_dir / "cpu-share.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        if not serial:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if serial:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
