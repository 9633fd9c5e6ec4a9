"""The dispatcher's mailboxes: the newest frames win, each session is queued once, and the
round-robin reaches every client. Real ZeroMQ sockets (pyzmq's gevent API) over inproc."""
from __future__ import annotations

import gevent
import zmq.green as zmq

from camstream.ingest.dispatch import Dispatcher, Pending
from camstream.ingest.ledger import ClientCounts


def pipeline(hwm: int = 1000):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.bind("inproc://frames")
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://bus")
    pull = ctx.socket(zmq.PULL)
    pull.connect("inproc://frames")
    return ctx, Dispatcher(push, pub, queue_depth=1), pull


def test_newest_frame_wins_and_the_session_is_queued_once():
    ctx, dispatcher, pull = pipeline()
    counts = ClientCounts()
    dispatcher.open("s1", "alice", counts)
    for n in range(3):
        dispatcher.offer("s1", b"h%d" % n, b"jpeg", n + 1)
    assert [box.session for box in dispatcher.ready] == ["s1"]
    assert counts.dropped == 2 and dispatcher.waiting == 1
    dispatcher.send_ready()
    assert pull.recv_multipart() == [b"h2", b"jpeg"]
    assert counts.dispatched == 1 and dispatcher.waiting == 0 and not dispatcher.ready
    assert list(counts.outstanding) == [3]  # until a worker reports seq 3 done
    ctx.destroy(linger=0)


def test_round_robin_gives_every_client_its_turn():
    ctx, dispatcher, pull = pipeline()
    for name in ("fast", "slow"):
        dispatcher.open(name, name, ClientCounts())
    dispatcher.offer("fast", b"f1", b"x", 1)
    dispatcher.offer("slow", b"s1", b"x", 1)
    dispatcher.offer("fast", b"f2", b"x", 2)   # replaces f1, fast keeps its place in the round
    runner = gevent.spawn(dispatcher.run)
    got = [pull.recv_multipart()[0] for _ in range(2)]
    runner.kill()
    assert got == [b"f2", b"s1"]
    ctx.destroy(linger=0)


def test_a_closed_connections_accepted_frame_is_still_dispatched():
    ctx, dispatcher, pull = pipeline()
    dispatcher.open("s1", "bob", ClientCounts())
    dispatcher.offer("s1", b"h", b"last words", 1)
    dispatcher.close("s1")
    dispatcher.send_ready()
    assert pull.recv_multipart() == [b"h", b"last words"]
    assert "s1" not in dispatcher.boxes
    ctx.destroy(linger=0)


def test_logging_in_again_keeps_the_old_logins_frames_and_the_dispatcher_alive():
    ctx, dispatcher, pull = pipeline(hwm=1)
    old, new = ClientCounts(), ClientCounts()
    dispatcher.open("s1", "alice", old)
    dispatcher.offer("s1", b"before", b"x", 1)
    dispatcher.open("s1", "bob", new)  # the same connection logs in again, as another user
    dispatcher.offer("s1", b"after", b"x", 1)
    runner = gevent.spawn(dispatcher.run)
    got = [pull.recv_multipart()[0] for _ in range(2)]
    runner.kill()
    assert got == [b"before", b"after"]
    assert (old.dispatched, new.dispatched, dispatcher.waiting) == (1, 1, 0)
    assert dispatcher.boxes["s1"].client == "bob"
    ctx.destroy(linger=0)


def test_a_lane_survives_an_unexpected_error_and_goes_on():
    ctx, dispatcher, pull = pipeline()
    real = dispatcher.hand_over
    calls = []

    def flaky(lane, header, jpeg):  # a bug in the dispatcher, once
        calls.append(header)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(lane, header, jpeg)
    dispatcher.hand_over = flaky
    counts = {}
    for name in ("a", "b"):
        counts[name] = ClientCounts()
        dispatcher.open(name, name, counts[name])
        dispatcher.offer(name, name.encode(), b"x", 1)
    runner = gevent.spawn(dispatcher.run)
    assert pull.poll(2000) and pull.recv_multipart()[0] == b"b"  # the one after the error
    assert not runner.dead and dispatcher.in_hand == 0
    assert (counts["a"].dropped, counts["a"].dispatched, dispatcher.waiting) == (1, 0, 0)
    dispatcher.offer("a", b"a2", b"x", 2)
    assert pull.poll(2000) and pull.recv_multipart()[0] == b"a2"
    runner.kill()
    ctx.destroy(linger=0)


def test_an_ack_waits_for_its_frame_to_leave_but_never_past_the_hold():
    """Backpressure acks a frame when it leaves the mailbox; with no worker to take it (the
    pool is down) it is dropped and acked after ACK_HOLD_S, once, and the mailbox is out of
    its lane; a frame that leaves in time is acked as it leaves."""
    import time
    from camstream.ingest import dispatch
    ctx, dispatcher, pull = pipeline()
    acks, counts = [], ClientCounts()
    dispatcher.open("s1", "alice", counts)
    dispatcher.offer("s1", b"h1", b"jpeg", 1, lambda: acks.append(1))
    now = time.monotonic()
    assert dispatcher.release_overdue(now) == 0 and acks == []  # nobody has waited yet
    assert dispatcher.release_overdue(now + dispatch.ACK_HOLD_S + 0.1) == 1 and acks == [1]
    assert counts.dropped == 1 and dispatcher.waiting == 0 and not dispatcher.ready
    assert dispatcher.release_overdue(now + 2 * dispatch.ACK_HOLD_S + 0.1) == 0
    dispatcher.offer("s1", b"h2", b"jpeg", 2, lambda: acks.append(2))
    assert [box.session for box in dispatcher.ready] == ["s1"]  # queued once, again
    dispatcher.send_ready()
    assert pull.recv_multipart() == [b"h2", b"jpeg"] and acks == [1, 2]
    assert counts.dispatched == 1 and counts.dropped == 1
    ctx.destroy(linger=0)


def test_a_frame_is_acked_once_and_a_failing_ack_stops_nothing():
    """Leaving the mailbox and the hold can both release a frame: its ack goes out once; an
    ack that raises (its client is gone) is logged, not raised into the lane."""
    acks = []
    frame = Pending(b"h", b"jpeg", 1, lambda: acks.append(1), 0.0)
    assert frame.owed and frame.paced
    frame.release()
    frame.release()
    assert acks == [1] and not frame.owed and frame.paced

    def gone():
        raise ConnectionError("client gone")
    failing = Pending(b"h", b"jpeg", 2, gone, 0.0)
    failing.release()
    assert not failing.owed


def test_a_full_pipeline_parks_the_lane_until_a_worker_takes_a_frame(monkeypatch):
    """Ingest's sockets are plain ZeroMQ sockets: a full PUSH parks the lane's greenlet on a
    watcher of ZeroMQ's fd, woken when the worker takes a frame, not by the wait's bound
    (a missed wake-up would make each frame wait the whole bound)."""
    import time

    import zmq as plain

    from camstream.ingest import dispatch
    ctx = plain.Context()
    push = ctx.socket(plain.PUSH)
    push.setsockopt(plain.SNDHWM, 1)
    push.bind("inproc://frames")
    pub = ctx.socket(plain.PUB)
    pub.bind("inproc://bus")
    pull = ctx.socket(plain.PULL)
    pull.setsockopt(plain.RCVHWM, 1)
    pull.connect("inproc://frames")
    dispatcher = Dispatcher(push, pub, queue_depth=1)
    waits = []
    real = dispatch.wait_for_room

    def timed(lane, timeout):  # the bound made 1 s: a missed wake-up would show plainly
        t0 = time.monotonic()
        real(lane, 1.0)
        waits.append(time.monotonic() - t0)
    monkeypatch.setattr(dispatch, "wait_for_room", timed)
    for i in range(20):  # a session each: none is dropped by its mailbox
        dispatcher.open(f"s{i}", f"c{i}", ClientCounts())
        dispatcher.offer(f"s{i}", b"h%d" % i, b"jpeg", 1)
    runner = gevent.spawn(dispatcher.run)
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:  # a slow worker: 50 frames/s
        gevent.sleep(0.02)
        try:
            got.append(pull.recv_multipart(plain.NOBLOCK)[0])
        except plain.Again:
            pass
    runner.kill()
    assert got == [b"h%d" % i for i in range(20)]
    assert len(waits) >= 10  # the lane did park on a full pipeline
    assert sorted(waits)[len(waits) // 2] < 0.5, waits  # woken by the fd, not the bound
    ctx.destroy(linger=0)
