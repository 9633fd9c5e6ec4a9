"""--route client: the Router's choices (sticky, balanced, failover), and the dispatcher's
per-worker lanes over real ZeroMQ sockets (pyzmq's gevent API, inproc): a full or dead worker
holds up its own clients only."""
from __future__ import annotations

import gevent
import zmq.green as zmq

from camstream.ingest.dispatch import Dispatcher
from camstream.ingest.routing import Router
from camstream.ingest.ledger import ClientCounts


def router_with(*workers: int, now: float = 100.0) -> Router:
    r = Router(stale_s=3.0, idle_s=60.0)
    for i in workers:
        r.worker_seen(i, now)
    return r


def bind(r: Router, clients: list[str], now: float) -> dict[str, int]:
    out = {}
    for c in clients:
        r.frame(c, now)
        out[c] = r.worker_for(c, now)
    return out


def test_clients_spread_evenly_and_stay_put():
    r = router_with(1, 2, 3)
    first = bind(r, ["cam1", "cam2", "cam3", "cam4"], 100.0)
    assert sorted(first.values()) in ([1, 1, 2, 3], [1, 2, 2, 3], [1, 2, 3, 3])
    assert len(set(first.values())) == 3
    for t in range(1, 20):  # frames keep coming: nobody moves
        for w in (1, 2, 3):
            r.worker_seen(w, 100.0 + t * 0.5)
        again = bind(r, list(first), 100.0 + t * 0.5)
        r.check(100.0 + t * 0.5)
        assert again == first
    assert r.moves == 0


def test_a_new_client_goes_to_the_worker_with_the_lightest_load():
    r = router_with(1, 2)
    now = 100.0
    owners = bind(r, ["fast", "slow"], now)
    for step in range(1, 11):  # fast sends 10 frames a check, slow 1
        now += 0.5
        for _ in range(10):
            r.frame("fast", now)
        r.frame("slow", now)
        for w in (1, 2):
            r.worker_seen(w, now)
        r.check(now)
    assert r.worker_for("new", now) == owners["slow"]


def test_a_silent_worker_loses_its_clients_and_a_new_one_gets_its_share():
    r = router_with(1, 2, 3)
    owners = bind(r, ["a", "b", "c", "d", "e", "f"], 100.0)
    lost = [c for c, w in owners.items() if w == 2]
    now = 104.0  # worker 2 silent for 4 s (> 3 s)
    for w in (1, 3):
        r.worker_seen(w, now)
    moved = bind(r, list(owners), now)
    assert all(moved[c] in (1, 3) for c in lost)
    assert all(moved[c] == owners[c] for c in owners if c not in lost)
    counts = [list(moved.values()).count(w) for w in (1, 3)]
    assert sorted(counts) == [3, 3]
    # worker 4 joins (SIGTTIN): the pool rebalances, one client per check
    r.worker_seen(4, now)
    for step in range(5):
        now += 0.5
        for w in (1, 3, 4):
            r.worker_seen(w, now)
        bind(r, list(owners), now)
        r.check(now)
    final = bind(r, list(owners), now)
    assert sorted(list(final.values()).count(w) for w in (1, 3, 4)) == [2, 2, 2]


def test_no_live_worker_means_no_binding_and_idle_clients_are_forgotten():
    r = Router(stale_s=3.0, idle_s=60.0)
    assert r.worker_for("a", 100.0) is None
    r.worker_seen(1, 100.0)
    r.frame("a", 100.0)
    assert r.worker_for("a", 100.0) == 1
    r.worker_seen(1, 170.0)
    r.check(170.0)
    assert "a" not in r.owner


def test_a_stopping_worker_takes_no_clients_and_loses_its_own():
    r = router_with(1, 2)
    owners = bind(r, ["a", "b"], 100.0)
    retiring = owners["a"]
    r.worker_seen(retiring, 100.5, stopping=True)  # SIGTTOU: it drains, and says so
    assert r.worker_for("a", 100.5) != retiring
    assert r.worker_for("c", 100.5) != retiring


def test_at_start_clients_wait_for_the_expected_workers_a_few_seconds_at_most():
    r = Router(stale_s=3.0, expected=3)
    r.worker_seen(1, 100.0)
    assert r.worker_for("early", 100.1) is None  # workers 2 and 3 have not reported yet
    r.worker_seen(2, 100.2)
    r.worker_seen(3, 100.3)
    assert bind(r, ["early", "b", "c"], 100.4) == {"early": 1, "b": 2, "c": 3}
    late = Router(stale_s=3.0, expected=2)
    late.worker_seen(1, 100.0)
    assert late.worker_for("a", 102.9) is None
    late.worker_seen(1, 103.0)
    assert late.worker_for("a", 103.1) == 1  # worker 2 never came: not waited for longer


def test_staleness_is_judged_when_reports_are_read_not_by_the_clock():
    r = router_with(1, 2)
    bind(r, ["a", "b"], 100.0)
    # ingest itself was stopped for 10 s: before it reads the reports, nobody is stale
    assert r.worker_for("a", 110.0) == r.owner["a"] and r.moves == 0
    r.worker_seen(1, 110.0)  # then it reads: worker 2 said nothing for 10 s
    assert r.live() == [1]


def test_parked_clients_spread_once_the_round_of_reports_is_read():
    pool = Pool()
    try:
        for name in ("a", "b", "c", "d"):
            pool.dispatcher.open(name, name, ClientCounts())
            pool.dispatcher.offer(name, b"h", b"x", 1)
        assert len(pool.dispatcher.parked) == 4
        pool.worker(1)
        pool.worker(2)
        pool.dispatcher.check()
        assert not pool.dispatcher.parked
        assert sorted(pool.router.owner.values()) == [1, 1, 2, 2]
    finally:
        pool.close()


# -- the dispatcher's lanes, over real sockets ----------------------------------------------------

class Pool:
    """Per-worker PUSH sockets bound on inproc, PULLs the test reads as the workers."""

    def __init__(self, hwm: int = 1000) -> None:
        self.ctx = zmq.Context()
        self.hwm = hwm
        self.pulls: dict[int, zmq.Socket] = {}
        pub = self.ctx.socket(zmq.PUB)
        pub.bind("inproc://bus")
        self.router = Router(stale_s=3.0)
        self.dispatcher = Dispatcher(None, pub, 1, router=self.router, worker_push=self.push)

    def push(self, index: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.bind(f"inproc://frames-{index}")
        return sock

    def worker(self, index: int, rcvhwm: int = 1000) -> zmq.Socket:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, rcvhwm)
        self.dispatcher.worker_seen(index)
        pull.connect(f"inproc://frames-{index}")
        self.pulls[index] = pull
        return pull

    def close(self) -> None:
        gevent.killall(self.dispatcher.greenlets)
        self.ctx.destroy(linger=0)


def recv_all(pull: zmq.Socket, timeout_ms: int = 300) -> list[bytes]:
    got = []
    while pull.poll(timeout_ms):
        got.append(pull.recv_multipart()[0])
    return got


def test_each_client_reaches_one_worker_in_order():
    pool = Pool()
    try:
        for i in (1, 2):
            pool.worker(i)
        counts = {}
        for name in ("alice", "bob"):
            counts[name] = ClientCounts()
            pool.dispatcher.open(name, name, counts[name])
        for n in range(1, 21):
            for name in ("alice", "bob"):
                pool.dispatcher.offer(name, b"%s %d" % (name.encode(), n), b"jpeg", n)
            gevent.sleep(0)  # the lanes' greenlets take each frame before the next
        got = {i: recv_all(pull) for i, pull in pool.pulls.items()}
        assert {len(v) for v in got.values()} == {20}
        for frames in got.values():
            names = {f.split()[0] for f in frames}
            assert len(names) == 1  # one client per worker
            assert [int(f.split()[1]) for f in frames] == list(range(1, 21))
        assert all(c.dispatched == 20 and c.dropped == 0 for c in counts.values())
    finally:
        pool.close()


def test_a_full_worker_holds_up_its_own_clients_only():
    pool = Pool(hwm=1)
    try:
        stuck = pool.worker(1, rcvhwm=1)  # never read: fills after a couple of frames
        free = pool.worker(2)
        for name in ("a", "b"):
            pool.dispatcher.open(name, name, ClientCounts())
        for name in ("a", "b"):
            pool.dispatcher.offer(name, b"first", b"x", 0)
        owners = pool.router.owner
        assert owners["a"] != owners["b"]
        slow = "a" if owners["a"] == 1 else "b"
        fast = "b" if slow == "a" else "a"
        assert free.poll(1000) and free.recv_multipart()[0] == b"first"
        for n in range(1, 51):
            pool.dispatcher.offer(slow, b"s", b"x", n)
            pool.dispatcher.offer(fast, b"f%d" % n, b"x", n)
            gevent.sleep(0.001)
        got = recv_all(free)
        assert len(got) == 50  # every frame of the client on the free worker, none lost
        assert pool.dispatcher.boxes[slow].counts.dropped > 40  # newest wins for the other
        assert stuck.poll(0)
    finally:
        pool.close()


def test_frames_wait_for_a_worker_and_follow_their_client_when_one_dies():
    pool = Pool()
    try:
        counts = ClientCounts()
        pool.dispatcher.open("s", "cam", counts)
        pool.dispatcher.offer("s", b"early", b"x", 1)  # no worker yet: parked
        assert {box.session for box in pool.dispatcher.parked} == {"s"}
        first = pool.worker(1)
        pool.dispatcher.check()  # the heartbeat places parked clients, after the reports
        assert first.poll(1000) and first.recv_multipart()[0] == b"early"
        # worker 1 stops reporting: after stale_s its client goes to worker 2
        second = pool.worker(2)
        pool.router.seen[1] -= 10
        pool.dispatcher.check()
        pool.dispatcher.offer("s", b"later", b"x", 2)
        assert second.poll(1000) and second.recv_multipart()[0] == b"later"
        assert not first.poll(100)
        assert counts.dispatched == 2 and counts.dropped == 0
    finally:
        pool.close()


def test_the_frame_in_hand_follows_its_client_when_its_worker_goes():
    """A worker that stops taking frames and then stops reporting: the frame the lane was
    holding for it is not dropped but handed to the client's new worker."""
    pool = Pool(hwm=1)
    try:
        pool.worker(1, rcvhwm=1)  # never read: its pipe fills after a frame or two
        counts = ClientCounts()
        pool.dispatcher.open("s", "cam", counts)
        box = pool.dispatcher.boxes["s"]
        for seq in range(1, 20):
            pool.dispatcher.offer("s", b"%d" % seq, b"x", seq)
            gevent.sleep(0.05)
            if pool.dispatcher.in_hand and not box.frames:
                break
        assert pool.dispatcher.in_hand and not box.frames, "worker 1's pipe never filled"
        held = seq
        second = pool.worker(2)
        pool.router.seen[1] -= 10  # worker 1 stopped reporting
        pool.dispatcher.check()
        assert second.poll(1000) and second.recv_multipart()[0] == b"%d" % held
        assert pool.router.owner["cam"] == 2
        assert counts.dropped == 0 and counts.dispatched == held
        assert pool.dispatcher.waiting == 0 and pool.dispatcher.in_hand == 0
    finally:
        pool.close()


def test_a_connection_that_closes_while_no_worker_is_alive_leaves_nothing_behind():
    pool = Pool()
    try:
        counts = ClientCounts()
        pool.dispatcher.open("s", "cam", counts)
        pool.dispatcher.offer("s", b"h", b"x", 1)  # parked: no worker yet
        pool.dispatcher.close("s")
        assert not pool.dispatcher.parked and "s" not in pool.dispatcher.boxes
        assert counts.dropped == 1 and pool.dispatcher.waiting == 0
        pull = pool.worker(1)
        pool.dispatcher.check()
        assert not pull.poll(200)
    finally:
        pool.close()


def test_a_routing_error_leaves_the_client_in_its_lane():
    """A bug while choosing a client's lane: the lane's greenlet logs it and goes on, and
    the client's frames are not stranded (its mailbox stays queued)."""
    pool = Pool()
    try:
        pull = pool.worker(1)
        counts = ClientCounts()
        pool.dispatcher.open("s", "cam", counts)
        real, calls = pool.router.worker_for, []

        def flaky(client, now):
            calls.append(client)
            if len(calls) == 2:  # the lane's own check, once
                raise RuntimeError("a bug")
            return real(client, now)
        pool.router.worker_for = flaky
        pool.dispatcher.offer("s", b"h", b"x", 1)
        assert pull.poll(2000) and pull.recv_multipart()[0] == b"h"
        assert len(calls) >= 3 and counts.dispatched == 1 and counts.dropped == 0
    finally:
        pool.close()
