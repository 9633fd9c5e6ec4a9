"""The daemon end to end: frames in over socket.io, processed by the worker pool, counted."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.helpers import make_jpeg, proc_title, wait_for
from tests.helpers.streaming import send_frames


def stream(sio, frames: list[bytes], event: str = "frame") -> list[dict]:
    if event == "frame":
        return send_frames(sio, frames)
    for jpeg in frames:  # the app's events have no ack
        sio.emit(event, jpeg)
        time.sleep(0.005)
    return []


def test_frames_flow_through_the_pool(daemons, clients):
    d = daemons("--max-fps", "10000", workers=2)  # as fast as acks come back
    current = clients(d.url, "alice")
    legacy = clients(d.url, None)
    assert legacy.call("authenticate", ("bob", "x", "onAuthentication"), timeout=10) is True
    frames = [make_jpeg(seed=i) for i in range(20)]
    acks = stream(current, frames * 10)
    assert all(a["accepted"] for a in acks), acks[:3]
    assert [a["seq"] for a in acks] == list(range(1, 201))
    stream(legacy, frames * 5, event="receiveImage")

    def all_processed():
        h = d.health()["clients"]
        a, b = h.get("alice"), h.get("bob")
        return a and b and a["processed"] + a["dropped"] == 200 and \
            b["processed"] + b["dropped"] == 100 and h
    h = wait_for(all_processed, 20, what="every frame processed or counted as dropped")
    for name, n in (("alice", 200), ("bob", 100)):
        row = h[name]
        assert row["received"] == n and row["refused"] == 0 and row["errors"] == 0
        assert row["dispatched"] == row["processed"]
    # acks pace the client, so drops are rare: only when no worker was free for a moment
    assert h["alice"]["dropped"] < 20
    totals = d.health()["totals"]
    assert totals["processed"] + totals["dropped"] == 300


def test_process_titles_name_their_roles(daemons):
    d = daemons(workers=2)
    titles = sorted(proc_title(p) for p in d.children())
    assert titles == ["camstream: ingest", "camstream: worker 1", "camstream: worker 2"]
    assert proc_title(psutil.Process(d.proc.pid)) == "camstream: supervisor"


def test_killed_worker_is_restarted_while_ingest_accepts(daemons, clients):
    d = daemons(workers=2)
    sio = clients(d.url, "carol")
    victim = d.child("worker 1")
    assert victim is not None
    victim.kill()
    # ingest keeps accepting while the worker is down and being replaced
    acks = stream(sio, [make_jpeg(seed=i) for i in range(30)])
    assert all(a["accepted"] for a in acks)
    new = wait_for(lambda: (c := d.child("worker 1")) and c.pid != victim.pid and c, 15,
                   what="worker 1 to be replaced")
    assert new.is_running()
    h = wait_for(lambda: (h := d.health())["workers"]["restarts"] == 1 and
                 h["workers"]["alive"] == 2 and h, 15,
                 what="the restart and 2 live workers to show in /healthz")
    assert h["clients"]["carol"]["received"] == 30
    assert "worker 1" in d.output() and "SIGKILL" in d.output()


@pytest.mark.serial
def test_sigterm_stops_everything_within_the_bound(daemons, clients):
    d = daemons("--stop-timeout", "5", workers=2)
    sio = clients(d.url, "dave")
    stream(sio, [make_jpeg(seed=i) for i in range(10)])
    children = d.children()
    assert len(children) == 3
    started = time.monotonic()
    code = d.stop(timeout=15)
    assert code == 0
    assert time.monotonic() - started < 6
    gone, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, f"children left behind: {alive}"


def test_no_orphans_when_the_supervisor_is_killed(daemons):
    d = daemons(workers=2)
    children = d.children()
    assert len(children) == 3
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=5)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans: {[p.pid for p in alive]}"


def test_healthz_and_metrics(daemons, clients):
    d = daemons(workers=1)
    sio = clients(d.url, "erin")
    for n in range(1, 6):  # each once the last is done: none replaced while the worker is busy
        stream(sio, [make_jpeg(seed=n)])
        h = wait_for(lambda: d.health()["clients"]["erin"]["processed"] == n and d.health(), 10,
                     what=f"{n} processed frames")
    assert h["status"] == "ok" and h["workers"] == {"alive": 1, "expected": 1, "restarts": 0}
    assert h["clients"]["erin"]["connected"] == 1
    import requests
    text = requests.get(d.url + "/metrics", timeout=5).text
    assert 'camstream_frames_processed_total{client="erin"} 5.0' in text
    assert 'camstream_frames_received_total{client="erin"} 5.0' in text
    assert "camstream_workers_alive 1.0" in text
    assert requests.get(d.url + "/nope", timeout=5).status_code == 404


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_both_transports(daemons, clients, transport):
    d = daemons(workers=1)
    sio = clients(d.url, "frank", transports=[transport])
    acks = stream(sio, [make_jpeg(seed=i) for i in range(5)])
    assert all(a["accepted"] for a in acks)
    assert sio.transport() == transport
    # (a frame the workers were not ready for yet may be replaced by the next: dropped)
    row = wait_for(lambda: (r := d.health()["clients"]["frank"])["processed"] + r["dropped"]
                   == 5 and r, 10, what="5 frames processed or dropped")
    assert row["processed"] >= 1 and row["errors"] == 0
