"""Fixtures only: real daemons on 127.0.0.1 and socket.io clients, stopped after each test.
The helpers they use (and the tests import) are in tests/helpers."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import socketio
from xdist.scheduler import LoadFileScheduling

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
# - the tests marked ``serial`` (they measure CPU time, latency or a share of frames under
#   load) are taken out of their files and run one after another on one worker, with nothing
#   beside them: that worker holds an exclusive lock from its first serial test to its last,
#   every other test takes it shared. One such phase waits once for the tests in flight; a
#   serial test at a time, in its file, made every other worker wait for each of them.

# where the workers write which tests are serial, for the controller's scheduler (it
# collects nothing itself), and the lock files they share
SERIAL_IDS = "CAMSTREAM_TESTS_SERIAL_IDS"


class FilesThenSerialScheduling(LoadFileScheduling):
    """``--dist loadfile``, with the serial tests of every file as one more unit."""

    def schedule(self) -> None:
        self.serial = read_serial_ids()
        super().schedule()

    def _split_scope(self, nodeid: str) -> str:
        return "serial" if nodeid in self.serial else super()._split_scope(nodeid)


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
        return FilesThenSerialScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(SERIAL_IDS)
    if worker and folder:
        serial = [item.nodeid for item in items if item.get_closest_marker("serial")]
        (Path(folder) / f"{worker}.ids").write_text("".join(f"{i}\n" for i in serial))


class CpuShare:
    """This worker's hold on the run's CPU lock: none, shared or exclusive."""

    def __init__(self) -> None:
        self.files = None
        self.mode = fcntl.LOCK_UN

    def take(self, run_dir: Path, exclusive: bool) -> None:
        want = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if self.mode == want:
            return
        if self.files is None:
            self.files = (open(run_dir / "cpu-share.turnstile", "a"),
                          open(run_dir / "cpu-share.lock", "a"))
        turnstile, lock = self.files
        self.give_up()
        # the turnstile keeps a waiting serial phase from being starved by the other
        # workers' stream of tests: once it waits, no other test starts
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, want)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        self.mode = want

    def give_up(self) -> None:
        if self.files is not None and self.mode != fcntl.LOCK_UN:
            fcntl.flock(self.files[1], fcntl.LOCK_UN)
        self.mode = fcntl.LOCK_UN


_share = CpuShare()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Shared lock for an ordinary test, exclusive for a ``serial`` one, taken before the
    test's fixtures start their daemons and held until they have stopped them; outside
    pytest-timeout's clock (a test waiting for the serial phase is not late: the phase is
    bounded by its own tests' timeouts). The exclusive lock is kept into the next serial test
    (the phase), and given up when this worker's next ordinary test starts."""
    folder = os.environ.get(SERIAL_IDS)
    if not (os.environ.get("PYTEST_XDIST_WORKER") and folder):  # one process: nobody beside
        yield
        return
    serial = item.get_closest_marker("serial") is not None
    _share.take(Path(folder), exclusive=serial)
    try:
        yield
    finally:
        if not serial:
            _share.give_up()


def pytest_sessionfinish(session):
    _share.give_up()
