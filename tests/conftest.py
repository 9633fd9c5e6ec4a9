"""Fixtures only: real daemons on 127.0.0.1 and socket.io clients, stopped after each test.
The helpers they use (and the tests import) are in tests/helpers."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import socketio
from xdist.scheduler import LoadFileScheduling

pytest.register_assert_rewrite("tests.helpers")  # before the import: helpers' asserts explain
from tests.helpers import Daemon  # noqa: E402
from tests.helpers.cpushare import CpuShare  # noqa: E402


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
# - the tests marked ``serial`` (they measure CPU time, latency or a share of frames under
#   load) are taken out of their files and dealt first, one at a time, to whichever worker
#   asks; at most two of them run at once, and never beside an ordinary test (four
#   workers starting daemons keep both cores busy; a serial test mostly waits: vmstat over
#   the serial tests one at a time said 5-45 % of the machine, 22 % on average). The lock:
#   tests/helpers/cpushare.py.

# where the workers write which tests are serial, for the controller's scheduler (it
# collects nothing itself), and the lock files they share
SERIAL_IDS = "CAMSTREAM_TESTS_SERIAL_IDS"


class SerialFirstScheduling(LoadFileScheduling):
    """``--dist loadfile``, with each serial test a unit of its own, dealt before the files."""

    def schedule(self) -> None:
        self.serial = read_serial_ids()
        super().schedule()

    def _split_scope(self, nodeid: str) -> str:
        return nodeid if nodeid in self.serial else super()._split_scope(nodeid)

    def _assign_work_unit(self, node) -> None:
        for scope in reversed([s for s in self.workqueue if s in self.serial]):
            self.workqueue.move_to_end(scope, last=False)  # the serial tests left go first
        super()._assign_work_unit(node)


def read_serial_ids() -> set[str]:
    folder = os.environ.get(SERIAL_IDS)
    if not folder:
        return set()
    ids: set[str] = set()
    for path in Path(folder).glob("*.ids"):  # one per worker; xdist checks they agree
        ids.update(path.read_text().splitlines())
    return ids


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[SERIAL_IDS] = tempfile.mkdtemp(prefix="camstream-tests-serial-")


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(SERIAL_IDS):
        shutil.rmtree(os.environ.pop(SERIAL_IDS), ignore_errors=True)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadfile":
        return SerialFirstScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(SERIAL_IDS)
    if worker and folder:
        serial = [item.nodeid for item in items if item.get_closest_marker("serial")]
        (Path(folder) / f"{worker}.ids").write_text("".join(f"{i}\n" for i in serial))


_share = CpuShare()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Every lane shared for an ordinary test, one lane for a ``serial`` one, taken before
    the test's fixtures start their daemons and held until they have stopped them; outside
    pytest-timeout's clock (a test waiting for the serial tests is not late: they are bounded
    by their own timeouts). A lane is kept into this worker's next serial test, and given up
    when its next ordinary test starts."""
    folder = os.environ.get(SERIAL_IDS)
    if not (os.environ.get("PYTEST_XDIST_WORKER") and folder):  # one process: nobody beside
        yield
        return
    serial = item.get_closest_marker("serial") is not None
    _share.take(Path(folder), serial)
    try:
        yield
    finally:
        if not serial:
            _share.give_up()


def pytest_sessionfinish(session):
    _share.give_up()
