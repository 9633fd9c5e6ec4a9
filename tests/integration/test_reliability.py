"""Faults under a streaming load: the daemon keeps working, and what it loses is counted."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from camstream import bus, wire
from workers.worker import STATS_INTERVAL
from tests.helpers import free_port, make_jpeg, wait_for
from tests.helpers.streaming import Streamer


@pytest.fixture
def streamers():
    made: list[Streamer] = []

    def start(url: str, name: str, **kw) -> Streamer:
        s = Streamer(url, name, **kw).start()
        made.append(s)
        return s
    yield start
    for s in made:
        s.stop()


def settled(d, names: list[str], timeout: float = 20) -> dict:
    """Wait until nothing is in flight any more (lost is decided LOST_AFTER after dispatch)."""
    def done():
        h = d.health()
        rows = [h["clients"].get(n) for n in names]
        return all(r and r["in_flight"] == 0 and
                   r["dispatched"] == r["processed"] + r["errors"] + r["lost"] for r in rows) \
            and h
    return wait_for(done, timeout, interval=0.3, what="every dispatched frame settled")


def test_worker_killed_20_times(daemons, streamers):
    d = daemons(workers=2)
    names = ["k1", "k2", "k3"]
    clients = [streamers(d.url, n, fps=25) for n in names]
    rng = random.Random(7)
    kills = 0
    while kills < 20:
        time.sleep(rng.uniform(0.2, 0.6))
        alive = [p for p in (d.child("worker 1"), d.child("worker 2")) if p is not None]
        if not alive:
            continue
        victim = rng.choice(alive)
        try:
            victim.kill()
            kills += 1
        except Exception:
            continue
    time.sleep(1)
    for c in clients:
        c.stop()
    # ingest never stopped accepting: every frame of the paced clients got an accepted ack
    for c in clients:
        assert c.acks and all(a["accepted"] for a in c.acks), c.name
        assert c.disconnects == 0 or not c.sio.connected
    wait_for(lambda: (w := d.health()["workers"])["restarts"] == 20 and w["alive"] == 2, 20,
             what="20 restarts and 2 workers alive again")
    h = settled(d, names)
    lost = 0
    for c in clients:
        row = h["clients"][c.name]
        # a call whose ack did not come back in time counts as an error on the client's side
        assert len(c.acks) <= row["received"] <= len(c.acks) + c.errors, (row, c.errors)
        assert row["received"] == row["dispatched"] + row["dropped"] + row["refused"], \
            [ln for ln in d.output().splitlines() if "ingest" in ln or "Error" in ln
             or "raceback" in ln or "File" in ln][-40:]
        lost += row["lost"]
    # On average per kill, what the killed worker held: what its pipe holds (at most 9 of
    # these 13 KB frames, both high-water marks and ZeroMQ's batching together: measured), the
    # frame in hand, and what it processed since its last report (half a stats interval, on
    # average, at its share of the 75 fps). The mean, not the worst case, so that the bound
    # still bites: lost was 129-221 in four runs here, the bound is 294.
    per_kill = 9 + 1 + 75 / 2 * STATS_INTERVAL / 2
    assert lost <= 20 * per_kill, lost
    assert h["totals"]["lost"] == lost


def test_ingest_killed_clients_reconnect(daemons):
    d = daemons(workers=1)
    sender = subprocess.Popen(
        [sys.executable, "-m", "camstream", "send", d.url, "-u", "phoenix", "--fps", "20",
         "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: d.health()["clients"]["phoenix"]["processed"] > 10, 15,
                 what="streaming to start")
        wait_for(lambda: d.child("ingest"), 10, what="the ingest process").kill()
        h = wait_for(lambda: (h := d.health())["ingest"]["restarts"] == 1 and
                     h["clients"].get("phoenix", {}).get("processed", 0) > 10 and h, 30,
                     what="ingest to come back and the client to stream again")
        assert h["clients"]["phoenix"]["connected"] == 1
        assert "ingest (pid" in d.output() and "SIGKILL" in d.output()
    finally:
        sender.send_signal(signal.SIGINT)
        try:
            sender.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sender.kill()
            sender.wait()


def test_hung_worker_is_killed_and_replaced(daemons, streamers):
    d = daemons("--worker-timeout", "2", workers=2)
    s = streamers(d.url, "steady", fps=20)
    time.sleep(1)
    hung = wait_for(lambda: d.child("worker 1"), 10, what="worker 1")
    hung.suspend()
    new = wait_for(lambda: (c := d.child("worker 1")) and c.pid != hung.pid and c, 15,
                   what="the hung worker to be replaced")
    assert new.is_running()
    assert "worker 1 (pid %d) silent for" % hung.pid in d.output()
    # what it held is counted as lost while the client goes on streaming
    wait_for(lambda: d.health()["clients"]["steady"]["lost"] > 0, 15,
             what="the hung worker's frames to be counted as lost during streaming")
    s.stop()
    h = settled(d, ["steady"])
    row = h["clients"]["steady"]
    assert all(a["accepted"] for a in s.acks)
    assert row["lost"] <= 12   # what the hung worker held
    assert row["processed"] + row["lost"] + row["errors"] == row["dispatched"]


def test_routed_clients_follow_a_killed_and_a_hung_worker(daemons, streamers):
    """--route client: a killed worker is replaced under the same index and keeps its
    clients; a hung one loses them to the other worker until it is replaced."""
    d = daemons("--route", "client", "--worker-timeout", "8", workers=2)
    names = ["r1", "r2", "r3", "r4"]
    senders = [streamers(d.url, n, fps=15) for n in names]

    def owners():
        rows = d.health()["clients"]
        return all("worker" in rows.get(n, {}) for n in names) and \
            {n: rows[n]["worker"] for n in names}
    # (clients whose first frame came before ingest heard from worker 2 are moved over to it)
    before = wait_for(lambda: (o := owners()) and sorted(o.values()) == [1, 1, 2, 2] and o, 20,
                      what="the clients bound, two to each worker")

    def progress(within: float) -> None:
        start = {n: d.health()["clients"][n]["processed"] for n in names}
        wait_for(lambda: all(d.health()["clients"][n]["processed"] > start[n] + 5
                             for n in names), within, what="every client processed again")

    killed = wait_for(lambda: d.child("worker 1"), 10, what="worker 1")
    killed.kill()
    wait_for(lambda: (c := d.child("worker 1")) and c.pid != killed.pid, 15,
             what="worker 1 to be replaced")
    progress(15)
    assert owners() == before  # the replacement kept worker 1's clients

    hung = d.child("worker 2")
    hung.suspend()
    progress(7)  # before worker 2 is replaced: its clients moved to worker 1
    assert set(owners().values()) == {1}
    assert "(worker 2 stopped reporting)" in d.output()
    wait_for(lambda: (c := d.child("worker 2")) and c.pid != hung.pid, 20,
             what="the hung worker to be replaced")
    # and the pool rebalances onto the new worker 2
    wait_for(lambda: sorted((o := owners()) and o.values()) == [1, 1, 2, 2], 20,
             what="two clients back on worker 2")
    for sender in senders:
        sender.stop()
    h = settled(d, names)
    for sender in senders:
        assert all(a["accepted"] for a in sender.acks), sender.name
        row = h["clients"][sender.name]
        assert row["received"] == row["dispatched"] + row["dropped"] + row["refused"], row
        assert row["lost"] <= 12, row  # what the killed or hung worker held of this client


def test_routed_clients_spread_to_an_added_worker_and_leave_a_retiring_one(daemons,
                                                                             streamers):
    """--route client with SIGTTIN/SIGTTOU while 4 clients stream: a new worker takes its share
    of the clients; a retiring one gives them back and exits though they never stop."""
    d = daemons("--route", "client", workers=2)
    names = ["t1", "t2", "t3", "t4"]
    streaming = [streamers(d.url, n, fps=10) for n in names]

    def owners():
        rows = d.health()["clients"]
        return sorted(rows[n]["worker"] for n in names if "worker" in rows.get(n, {}))
    wait_for(lambda: owners() == [1, 1, 2, 2], 20, what="clients on workers 1 and 2")
    d.proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: set(owners()) == {1, 2, 3}, 20, what="worker 3 to get a client")
    retiring = wait_for(lambda: d.child("worker 3"), 10, what="worker 3")
    d.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: not retiring.is_running() or retiring.status() == "zombie", 15,
             what="worker 3 to finish while its client streams on")
    # its client moves on its next frame after ingest reads the worker's last report
    wait_for(lambda: "(worker 3 is stopping)" in d.output(), 10,
             what="ingest to move worker 3's client, saying why")
    wait_for(lambda: set(owners()) == {1, 2} and len(owners()) == 4, 10,
             what="the four clients on workers 1 and 2")
    start = {n: d.health()["clients"][n]["processed"] for n in names}
    wait_for(lambda: all(d.health()["clients"][n]["processed"] > start[n] + 5 for n in names),
             15, what="every client processed on the two workers left")
    for s in streaming:
        s.stop()
    # the retiring worker drained its own pipeline, and the frame ingest held for it went
    # to the client's next worker: nothing was lost
    h = settled(d, names)
    assert [h["clients"][n]["lost"] for n in names] == [0, 0, 0, 0], h["clients"]


@pytest.mark.serial
def test_a_worker_retires_under_load_from_the_shared_pipeline(daemons, streamers):
    """SIGTTOU while clients stream faster than a worker could ever go idle: the shared
    pipeline deals to the retiring worker until it goes, so it drains for a third of the stop
    timeout at most, then exits; what its pipe still held is counted as lost."""
    d = daemons("--stop-timeout", "3", workers=2)
    names = ["r1", "r2", "r3"]
    streaming = [streamers(d.url, n, fps=30) for n in names]
    wait_for(lambda: all(d.health()["clients"].get(n, {}).get("processed", 0) > 10
                         for n in names), 20, what="the clients streaming")
    retiring = d.child("worker 2")
    told = time.monotonic()
    d.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: not retiring.is_running() or retiring.status() == "zombie", 10,
             what="worker 2 to retire while the clients stream on")
    took = time.monotonic() - told
    assert took < 1 + 2.5, took  # drains for 1 s (3 s / 3), plus starting to notice
    sent = [len(s.acks) for s in streaming]
    wait_for(lambda: all(len(s.acks) > n + 20 for s, n in zip(streaming, sent)), 15,
             what="the clients streaming on into worker 1")
    for s in streaming:
        s.stop()
    h = settled(d, names)
    assert h["workers"]["alive"] == 1
    lost = sum(h["clients"][n]["lost"] for n in names)
    assert lost <= 9 + 1, lost  # its pipe (measured: at most 9 of these frames) and one in hand


@pytest.mark.serial
def test_sigterm_drains_every_accepted_frame(daemons, tmp_path):
    d = daemons("--stop-timeout", "10", "--max-fps", "10000", workers=2)
    ctx = zmq.Context()
    sub = bus.bus_sub(ctx, str(d.runtime_dir), wire.PROCESSED, hwm=100000)
    processed: dict[str, set[int]] = {}
    stop = threading.Event()

    def collect():
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                for result in bus.drain(sub, wire.Result.unpack):
                    header = result.header
                    processed.setdefault(header.client, set()).add(header.seq)
    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    time.sleep(0.5)  # the subscription reaches the bus
    clients = [Streamer(d.url, f"drain{i}", fps=30).start() for i in range(3)]
    try:
        time.sleep(3)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0
    finally:
        for c in clients:
            c.stop()
        time.sleep(0.3)
        stop.set()
        collector.join(timeout=5)
        sub.close(0)
        ctx.term()
    total = 0
    for c in clients:
        accepted = {a["seq"] for a in c.acks if a.get("accepted")}
        total += len(accepted)
        refused = {a.get("reason") for a in c.acks if not a.get("accepted")}
        assert refused <= {"shutting down"}, refused
        # an accepted frame is processed, or was replaced by a newer one of the same client
        # while the workers were busy (counted as dropped; the last ack says how many)
        dropped = max(a.get("dropped", 0) for a in c.acks if a.get("accepted"))
        missing = accepted - processed.get(c.name, set())
        assert len(missing) <= dropped, f"{c.name}: {len(missing)} accepted frames lost"
    assert total > 50
    assert "draining" in d.output()


def test_new_connections_are_refused_while_draining(daemons, streamers):
    d = daemons("--stop-timeout", "10", workers=1)
    s = streamers(d.url, "busy", fps=0)
    time.sleep(1)
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    import socketio
    late = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        late.connect(d.url, transports=["websocket"], wait_timeout=3,
                     auth={"username": "late", "password": ""})
    assert d.proc.wait(timeout=15) == 0
    assert s.accepted > 0


@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp: tmp / "a-file" / "run", "Not a directory"),
    (lambda tmp: "/proc/camstream-run", "runtime directory /proc/camstream-run"),
])
def test_unusable_runtime_dir(tmp_path, make_dir, message):
    (tmp_path / "a-file").write_text("in the way")
    result = subprocess.run(
        [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1", "-p", str(free_port()),
         "--runtime-dir", str(make_dir(tmp_path))], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


def test_bad_frames_are_errors_never_crashes(daemons, clients, tmp_path):
    import cv2
    import numpy as np
    d = daemons(workers=1)
    sio = clients(d.url, "fuzzy")
    good = make_jpeg()
    bomb = bytearray(good)
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2   # declares 60000 x 60000
    png = cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8))[1].tobytes()
    bad = [good[: len(good) // 2], png, bytes(np.random.default_rng(1).integers(
        0, 255, 5000, dtype=np.uint8)), bytes(bomb)]
    worker = d.child("worker 1")
    for n, frame in enumerate(bad + [good], 1):  # one at a time: a newer one may not replace it
        assert sio.call("frame", ({}, frame), timeout=10)["accepted"] is True
        wait_for(lambda n=n: (r := d.health()["clients"]["fuzzy"])["errors"] + r["processed"]
                 == n, 15, what=f"frame {n} reported")
    h = wait_for(lambda: (h := d.health())["clients"]["fuzzy"]["errors"] == 4 and
                 h["clients"]["fuzzy"]["processed"] == 1 and h, 15,
                 what="4 errors and 1 processed")
    assert d.child("worker 1").pid == worker.pid, "the worker survived"
    assert worker.memory_info().rss < 400 * 1024 * 1024
    assert h["workers"]["restarts"] == 0
    out = d.output()
    for problem in ("truncated JPEG", "is not a JPEG", "over --max-pixels"):
        assert problem in out
    assert h["clients"]["fuzzy"]["errors_by"] == {"truncated": 1, "not a JPEG": 2,
                                                  "over --max-pixels": 1}


def test_a_stopped_supervisor_kills_nobody_when_it_resumes(daemons):
    """SIGSTOP the supervisor (it hosts the bus) for three times --worker-timeout: on SIGCONT
    nobody was silent but the supervisor itself; ingest and the workers live on, and the
    client streaming meanwhile stays connected."""
    d = daemons("--worker-timeout", "2", workers=2)
    titles = ("ingest", "worker 1", "worker 2")
    pids = {t: d.child(t).pid for t in titles}
    s = Streamer(d.url, "alice", fps=10).start()
    try:
        time.sleep(1)
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(6)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        time.sleep(5)  # more than --worker-timeout from the resumption on
        assert {t: getattr(d.child(t), "pid", None) for t in titles} == pids, d.output()
        before = d.health()["clients"]["alice"]["processed"]
        wait_for(lambda: d.health()["clients"]["alice"]["processed"] >= before + 10, 10,
                 what="alice's frames still processed")
    finally:
        s.stop()
    assert s.disconnects == 0
    out = d.output()
    assert "the supervisor did not run for" in out and "silent for" not in out, out
