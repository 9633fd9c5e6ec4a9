"""The supervisor's children as data: the spec of each role, the liveness policy, and the
restart policy (backoff, failed boots) as pure logic with the clock passed in."""
from __future__ import annotations

import json
import signal
import socket

import pytest

from camstream.config import Config
from camstream.liveness import ALIVE_S, START_GRACE_S, Liveness
from camstream.supervisor import children
from camstream.supervisor.children import MAX_FAILED_BOOTS, Boots, Slot


@pytest.fixture
def listeners():
    made = [socket.socket(), socket.socket()]
    yield made
    for s in made:
        s.close()


def test_serve_runs_ingest_the_workers_a_display_and_the_web_view(listeners):
    config = Config(workers=2, display=True, runtime_dir="/run/cs", web="127.0.0.1:8081")
    specs = children.serving(config, listeners[0], listeners[1])
    assert [s.title for s in specs] == ["ingest", "worker 1", "worker 2", "display", "web view"]
    assert [s.role for s in specs] == ["ingest", "worker", "worker", "display", "web"]
    # the stop order: displays first, then ingest (it drains into the workers), workers last
    assert [s.stop_share for s in specs] == [0.6, 1.0, 1.0, 0.1, 0.1]
    assert [s.reports for s in specs] == [True, True, True, False, False]
    assert [s.restart for s in specs] == [True, True, True, False, True]
    assert [s.fds() for s in specs] == [(listeners[0].fileno(),), (), (), (),
                                         (listeners[1].fileno(),)]
    assert [s.reload_signal for s in specs] == [signal.SIGHUP, None, None, None, None]
    assert "camstream display --runtime-dir /run/cs" in specs[3].when_gone
    assert [s.title for s in children.serving(Config(workers=1), listeners[0])] == \
        ["ingest", "worker 1"]


def test_ingest_gets_its_socket_its_generation_and_the_config(listeners):
    spec = children.ingest(listeners[0])
    config = Config(workers=3, port=9000)
    command = spec.command(config, 2)
    assert command.argv[-2:] == [str(listeners[0].fileno()), "2"]
    assert "camstream.ingest" in command.argv
    assert Config.from_json(command.stdin.decode()).to_json() == config.to_json()
    assert command.env is None
    # ready once it serves, not at its first report
    assert not spec.ready({"serving": False}) and spec.ready({"serving": True})


def test_a_worker_gets_its_index_and_the_worker_environment():
    spec = children.worker(3)
    command = spec.command(Config(max_pixels=1234), 0)
    assert (spec.title, spec.index, command.argv[-1]) == ("worker 3", 3, "3")
    assert command.env["OPENCV_IO_MAX_IMAGE_PIXELS"] == "1234"
    assert command.env["MALLOC_MMAP_THRESHOLD_"] == str(64 * 1024 * 1024)
    assert json.loads(command.stdin)["max_pixels"] == 1234
    assert spec.ready({})  # any report


def test_display_and_web_view_take_the_config_of_their_start(listeners):
    display = children.display(Config(runtime_dir="/run/cs"))
    later = Config(runtime_dir="/run/cs", log_level="debug")  # a SIGHUP changed the level
    argv = display.command(later, 0).argv
    assert argv[-2:] == ["--log-level", "debug"] and display.command(later, 0).stdin is None
    web = children.web_view(listeners[1])
    plain = web.command(Config(web="127.0.0.1:8081"), 0).argv
    assert "--auth" not in plain and "--certfile" not in plain
    assert plain[plain.index("--listen-fd") + 1] == str(listeners[1].fileno())
    secured = web.command(Config(web="127.0.0.1:8081", auth=True, users_file="/u",
                                 certfile="/c", keyfile="/k"), 0).argv
    assert secured[-7:] == ["--auth", "--users", "/u", "--certfile", "/c", "--keyfile", "/k"]


# -- liveness ------------------------------------------------------------------------------------

def test_alive_is_a_report_younger_than_alive_s():
    live = Liveness(hung_s=10)
    assert live.alive_s == ALIVE_S == 3.0
    assert not live.alive(None, 100.0)
    assert live.alive(100.0 - ALIVE_S + 0.01, 100.0)
    assert not live.alive(100.0 - ALIVE_S, 100.0)


def test_hung_after_the_worker_timeout_or_the_start_grace():
    live = Liveness(hung_s=10)
    assert live.overdue(started=0.0, last_report=None, now=START_GRACE_S) is None
    assert live.overdue(started=0.0, last_report=None, now=START_GRACE_S + 1) == \
        START_GRACE_S + 1
    assert live.overdue(started=0.0, last_report=50.0, now=60.0) is None
    assert live.overdue(started=0.0, last_report=50.0, now=60.5) == 10.5


def test_the_supervisor_healthz_and_routing_share_the_definition():
    from camstream.ingest import ledger, routing
    assert ledger.WORKER_STALE_S == ledger.POOL_STALE_S == ALIVE_S
    assert routing.Router().stale_s == ALIVE_S


# -- the restart policy --------------------------------------------------------------------------

def test_backoff_replaces_a_crash_at_once_then_doubles_up_to_10_s():
    assert [children.backoff(n) for n in range(1, 9)] == [0.0, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0,
                                                          10.0]


def test_failed_boots_in_a_row_exhaust_it_and_a_ready_one_starts_the_count_again():
    boots = Boots()
    delays = [boots.ended(ready=False, code=1) for _ in range(MAX_FAILED_BOOTS - 1)]
    assert delays == [0.0, 0.4, 0.8, 1.6] and not boots.exhausted
    assert boots.ended(ready=True, code=-signal.SIGSEGV) == 0.0  # it had served: a crash
    assert (boots.failed, boots.unready) == (0, 0)
    for _ in range(MAX_FAILED_BOOTS):
        boots.ended(ready=False, code=2)
    assert boots.exhausted and boots.failed == MAX_FAILED_BOOTS == 5


@pytest.mark.parametrize("code, killed_silent, failed", [
    (1, False, True),                    # its own error (an import failed)
    (-signal.SIGSEGV, False, True),      # a crash
    (-signal.SIGABRT, False, True),      # libzmq refused a syscall at every start
    (-signal.SIGKILL, True, True),       # the supervisor killed it: never reported
    (-signal.SIGKILL, False, False),     # someone else killed it: says nothing of its start
    (-signal.SIGTERM, False, False),
    (0, False, False),                   # it was asked to stop, and did
])
def test_what_counts_as_a_failed_boot(code, killed_silent, failed):
    boots = Boots()
    assert boots.ended(ready=False, code=code, killed_silent=killed_silent) == 0.0
    assert (boots.unready, boots.failed) == (1, int(failed))


def test_outside_kills_back_off_but_never_exhaust():
    boots = Boots()
    delays = [boots.ended(ready=False, code=-signal.SIGKILL) for _ in range(10)]
    assert delays[-1] == 10.0 and boots.failed == 0 and not boots.exhausted


# -- a slot -------------------------------------------------------------------------------------

class Process:
    """What a slot keeps of a process (a Popen): its pid."""
    pid = 4242


def test_a_slot_is_ready_on_the_report_its_spec_names(listeners):
    slot = Slot(children.ingest(listeners[0]))
    slot.began(Process(), now=10.0)
    slot.heard({"serving": False}, now=10.5)
    assert slot.last_beat == 10.5 and not slot.ready
    slot.heard({"serving": True, "clients": 3}, now=11.0)
    assert slot.ready and slot.extra["clients"] == 3
    live = Liveness(hung_s=10)
    assert slot.alive(13.9, live) and not slot.alive(14.0, live)
    assert slot.ended(code=-signal.SIGKILL, now=20.0, liveness=live) == 0.0
    assert slot.proc is None and slot.boots.unready == 0
    slot.began(Process(), now=20.0)
    assert (slot.spawned, slot.restarts, slot.ready, slot.last_beat) == (2, 1, False, None)


def test_a_slot_killed_for_its_silence_is_killed_once_and_counts_as_failed():
    slot = Slot(children.worker(1))
    live = Liveness(hung_s=2, start_grace_s=5)
    slot.began(Process(), now=0.0)
    assert slot.overdue(5.0, live) is None and slot.overdue(5.5, live) == 5.5
    slot.killed_silent = True
    assert slot.overdue(9.0, live) is None
    slot.ended(code=-signal.SIGKILL, now=9.0, liveness=live)
    assert slot.boots.failed == 1


def test_a_child_that_never_reports_proves_itself_by_running_the_start_grace(listeners):
    slot = Slot(children.web_view(listeners[1]))
    live = Liveness(hung_s=10, start_grace_s=30)
    slot.began(Process(), now=0.0)
    assert slot.overdue(100.0, live) is None  # never judged by heartbeats
    slot.ended(code=1, now=2.0, liveness=live)
    assert slot.boots.failed == 1 and slot.not_before == 2.0
    slot.began(Process(), now=3.0)
    slot.ended(code=1, now=40.0, liveness=live)
    assert slot.boots.failed == 0
