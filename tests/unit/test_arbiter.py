"""The arbiter's verbs in this process, over specs whose children are tiny real processes:
the give-up after failing boots, the stop by shares, SIGHUP and SIGTTIN, murder, and the
heartbeats that make children ready (published on a real bus by the test)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from camstream import bus, wire
from camstream.config import Config
from camstream.liveness import ALIVE_S, Liveness
from camstream.supervisor.arbiter import EXIT_GAVE_UP, Supervisor
from camstream.supervisor.children import WORKER, ChildSpec, Command
from camstream.supervisor.notify import Notifier
from tests.helpers import wait_for


def python(code: str):
    """A spec's command: this interpreter running ``code``."""
    return lambda config, generation: Command([sys.executable, "-c", code])


SLEEPER = "import time; time.sleep(60)"


def spec(title: str, code: str = SLEEPER, **kw) -> ChildSpec:
    kw.setdefault("role", title.split()[0])
    return ChildSpec(title, command=python(code), **kw)


def sleeping_worker(index: int) -> ChildSpec:
    return spec(f"worker {index}", role=WORKER, index=index)


@pytest.fixture
def rundir():
    """A short path (ipc endpoints are file names of at most 107 bytes), the daemon's alone."""
    path = Path(tempfile.mkdtemp(prefix="cs-arb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def supervisors():
    """Make supervisors; afterwards every child left is killed by its pid, and the signal
    handlers that ``run`` installs are put back."""
    made: list[Supervisor] = []
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in Supervisor.SIGNALS}

    def make(config: Config, specs: list[ChildSpec], **kw) -> Supervisor:
        kw.setdefault("notifier", Notifier(None))
        sup = Supervisor(config, specs, **kw)
        made.append(sup)
        return sup
    yield make
    signal.set_wakeup_fd(-1)
    for name, handler in handlers.items():
        signal.signal(getattr(signal, name), handler)
    for sup in made:
        for slot in sup.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
        for fd in (getattr(sup, "wake_r", None), getattr(sup, "wake_w", None)):
            if fd is not None:
                os.close(fd)


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def messages(self) -> list[dict]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def test_a_child_that_never_boots_stops_everything_with_one_line(supervisors, rundir, caplog):
    notify = NotifySocket(rundir / "notify")
    config = Config(workers=1, runtime_dir=str(rundir), stop_timeout=2)
    sup = supervisors(config, [spec("ingest", "raise SystemExit(2)"), sleeping_worker(1)],
                      notifier=Notifier(str(notify.path)))
    caplog.set_level(logging.INFO, logger="camstream")
    started = time.monotonic()
    assert sup.run() == EXIT_GAVE_UP == 1
    took = time.monotonic() - started
    # five boots (a tenth of a second each, more on a loaded machine) and the backoff
    # between them: 0.4 + 0.8 + 1.6 s
    assert took < 2.8 + 5 * 3.0, took
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("ingest failed to start 5 times in a row (the last, pid ")
    assert "exited with status 2 after" in errors[0] and "giving up" in errors[0]
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert len(restarts) == 4 and restarts[-1].endswith("restarting in 1.6 s"), restarts
    assert all(s.proc is None or s.proc.poll() is not None for s in sup.slots)
    stopping = [m for m in notify.messages() if "STOPPING" in m]
    assert stopping == [{"STOPPING": "1", "STATUS": errors[0]}]
    assert not any("READY" in m for m in notify.messages())


def test_a_child_killed_from_outside_before_it_is_ready_does_not_stop_the_daemon(
        supervisors, rundir):
    sup = supervisors(Config(workers=1, runtime_dir=str(rundir)), [sleeping_worker(1)])
    slot = sup.slots[0]
    for _ in range(6):
        slot.not_before = 0.0  # (the backoff is the restart policy's test)
        sup.manage()
        slot.proc.kill()
        slot.proc.wait()
        sup.reap()
    assert not sup.stopping and slot.boots.failed == 0 and slot.boots.unready == 6


def touch_on_term(marker: Path, ignore: bool = False) -> str:
    """A child that writes ``marker``.ready once it is set up and, on SIGTERM, the time to
    ``marker`` and exits (or ignores the signal)."""
    on_term = "signal.SIG_IGN" if ignore else \
        f"lambda *a: (open({str(marker)!r}, 'w').write(repr(time.monotonic())), sys.exit(0))"
    return (f"import signal, sys, time\nsignal.signal(signal.SIGTERM, {on_term})\n"
            f"open({str(marker) + '.ready'!r}, 'w').close()\ntime.sleep(60)\n")


def test_stop_goes_by_share_then_kills_what_outlasts_the_timeout(supervisors, rundir, caplog):
    specs = [spec("worker 1", touch_on_term(rundir / "worker"), role=WORKER, stop_share=1.0),
             spec("display", touch_on_term(rundir / "display"), stop_share=0.1),
             spec("stubborn", touch_on_term(rundir / "stubborn", ignore=True), stop_share=0.6)]
    sup = supervisors(Config(workers=1, runtime_dir=str(rundir), stop_timeout=1.0), specs)
    sup.manage()
    wait_for(lambda: all((rundir / f"{n}.ready").exists()
                         for n in ("worker", "display", "stubborn")), 20,
             what="the children set up")
    stubborn = sup.slots[2].proc
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    display, worker = (float((rundir / n).read_text()) for n in ("display", "worker"))
    # the display first; the worker once the stubborn one's share (0.6 s) is over; then
    # what is left is killed
    assert started < display < worker
    assert worker >= started + 0.6 - 0.05, (worker - started)
    assert stubborn.returncode == -signal.SIGKILL and 0.6 <= took < 3, took
    assert f"stubborn (pid {stubborn.pid}) did not stop in time: killing it" in caplog.text


def test_sighup_resizes_the_workers_and_says_sighup(supervisors, rundir, caplog):
    config = Config(workers=1, runtime_dir=str(rundir))
    sup = supervisors(config, [sleeping_worker(1)], grow=sleeping_worker,
                      reload=lambda: Config(workers=3, runtime_dir=str(rundir)))
    caplog.set_level(logging.INFO, logger="camstream")
    sup.handle_hup()
    assert [s.title for s in sup.slots] == ["worker 1", "worker 2", "worker 3"]
    sup.reload = lambda: Config(workers=2, runtime_dir=str(rundir))
    sup.handle_hup()
    assert [s.retiring for s in sup.slots] == [False, False, True]
    sup.handle_ttin()
    sup.handle_ttou()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["SIGHUP: reloading",
                     "SIGHUP (workers = 3): adding worker 2 (2 workers)",
                     "SIGHUP (workers = 3): adding worker 3 (3 workers)",
                     "SIGHUP: reloading",
                     "SIGHUP (workers = 2): retiring worker 3 (2 workers)",
                     "SIGTTIN: adding worker 4 (3 workers)",
                     "SIGTTOU: retiring worker 4 (2 workers)"], lines


def test_a_node_without_workers_says_so_on_ttin_and_ttou(supervisors, rundir, caplog):
    sup = supervisors(Config(workers=0, runtime_dir=str(rundir)), [spec("ingest")], grow=None)
    sup.handle_ttin()
    sup.handle_ttou()
    assert [s.title for s in sup.slots] == ["ingest"]
    assert caplog.text.count("no workers here (they are the pool's)") == 2


def test_a_child_silent_past_its_start_grace_is_killed_and_counted(supervisors, rundir,
                                                                     caplog):
    sup = supervisors(Config(workers=1, runtime_dir=str(rundir)), [sleeping_worker(1)])
    sup.liveness = Liveness(hung_s=1, start_grace_s=0.3)
    sup.manage()
    slot = sup.slots[0]
    pid = slot.proc.pid
    time.sleep(0.4)
    sup.murder()
    sup.murder()  # once only
    slot.proc.wait(timeout=5)
    sup.reap()
    assert caplog.text.count(f"worker 1 (pid {pid}) silent for 0 s: killing it") == 1
    assert slot.boots.failed == 1 and "was killed by SIGKILL after" in caplog.text


def test_heartbeats_make_children_ready_and_the_daemon_healthy(supervisors, rundir):
    specs = [spec("ingest", ready=lambda report: bool(report.get("serving"))),
             sleeping_worker(1), spec("display", reports=False, restart=False)]
    sup = supervisors(Config(workers=1, runtime_dir=str(rundir)), specs)
    sup.hub.open()
    sup.manage()
    ingest, worker, _ = sup.slots
    ctx = zmq.Context()
    pub = bus.bus_pub(ctx, str(rundir))
    try:
        def report(slot, **fields) -> None:
            pub.send_multipart(wire.Stats(slot.title, {
                "role": slot.role, "pid": slot.proc.pid, **fields}).pack())

        def heard(slot, **fields) -> bool:
            report(slot, **fields)
            time.sleep(0.05)
            sup.read_heartbeats()
            return slot.extra == {"role": slot.role, "pid": slot.proc.pid, **fields}
        wait_for(lambda: heard(worker), 10, what="the worker's report through the bus")
        assert worker.ready and not sup.started_up()  # ingest has not reported
        wait_for(lambda: heard(ingest, serving=False, clients=2), 10, what="ingest's report")
        assert not ingest.ready and not sup.started_up()
        wait_for(lambda: heard(ingest, serving=True, clients=2), 10, what="ingest serving")
        assert sup.started_up()
        now = time.monotonic()
        assert sup.healthy(now) and not sup.healthy(now + ALIVE_S)
        assert sup.status_line().startswith("2 clients, ") and \
            sup.status_line().endswith(", workers 1/1")
        assert sup.ready_line() == "listening on 0.0.0.0:8080 with 1 worker"
    finally:
        pub.close(0)
        ctx.term()
        sup.stop()
