"""From accepted frame to worker pool, without ever blocking the socket.io handlers.

Each connection has a small mailbox (``queue_depth`` frames). A new frame goes in at once;
if the mailbox is full the *oldest* frame in it is dropped and counted: the newest frames win,
so a processed frame is never older than the pipeline's few slots. A **lane** (a PUSH socket
and the sessions waiting to send into it) is drained round-robin by a greenlet of its own
(plain ZeroMQ sockets sent to without blocking; a full pipeline parks that greenlet only, on
a watcher of ZeroMQ's fd), so a 1 Hz camera gets its turn
beside a 30 Hz one. There is one lane, the shared PUSH that deals frames to any free worker;
with ``--route client`` there is one lane per worker instead, and the
:class:`~camstream.ingest.routing.Router` says which lane each client's frames take: a full or dead
worker then holds up its own clients only.
Every accepted frame is also published on the bus for displays and taps (PUB never blocks).

Backpressure for clients that pace themselves on acks: a frame offered with a ``release``
callback (``frame`` with an ack) is acked by that callback when it leaves the mailbox, for a
worker or dropped, not when it arrives. Such a client then sends as fast as the pipeline
takes its frames, and its mailbox holds up to ``ACK_WINDOW`` of them (its frames in flight)
before the oldest is dropped; frames without an ack (``receiveImage``) keep ``queue_depth``,
newest wins. A frame never waits for its ack longer than ``ACK_HOLD_S``: past it (the pool
is down, a worker is gone) it is dropped and acked, so the client keeps its pace and no
stale frame is processed later.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import gevent
import gevent.event
import zmq

from camstream import wire
from camstream.ingest.routing import Router
from camstream.ingest.ledger import ClientCounts

log = logging.getLogger("camstream.ingest")

# frames with a pending ack a mailbox holds (at least queue_depth): a client's window of
# frames in flight; beyond it, the oldest is dropped (and acked) as for any frame
ACK_WINDOW = 8
# the longest an ack waits for its frame to leave the mailbox (the client's pace, at worst)
ACK_HOLD_S = 1.0


class Pending:
    """A frame in a mailbox (or in a lane's hand): what goes to the pipeline, and its ack,
    owed once, whichever comes first of leaving the mailbox and :data:`ACK_HOLD_S`."""
    __slots__ = ("header", "jpeg", "seq", "ack", "paced", "arrived")

    def __init__(self, header: bytes, jpeg: bytes, seq: int,
                 ack: Callable[[], None] | None, arrived: float) -> None:
        self.header = header
        self.jpeg = jpeg
        self.seq = seq
        self.ack = ack               # until it has gone out
        self.paced = ack is not None  # offered with an ack: its client paces itself on them
        self.arrived = arrived

    @property
    def owed(self) -> bool:
        """Its ack has not gone out yet."""
        return self.ack is not None

    def release(self) -> None:
        """Ack the frame, once."""
        ack, self.ack = self.ack, None
        if ack is not None:
            try:
                ack()
            except Exception:  # noqa: BLE001 (a dead client's ack must not stop a lane)
                log.debug("an ack could not be released", exc_info=True)


class Mailbox:
    """One connection's frames waiting for a worker. Lanes hold the mailbox itself, not its
    session id: a connection that logs in again gets a new one while the old one drains."""
    __slots__ = ("frames", "counts", "session", "client", "topic", "closed")

    def __init__(self, session: str, counts: ClientCounts, client: str) -> None:
        self.frames: collections.deque[Pending] = collections.deque()
        self.counts = counts
        self.session = session
        self.client = client
        self.topic = wire.topic(wire.RAW, client)
        self.closed = False


class Lane:
    """A PUSH socket and, in round-robin order, the mailboxes whose next frame goes into it."""
    __slots__ = ("push", "room", "worker", "ready", "wakeup", "in_hand", "frame")

    def __init__(self, push: zmq.Socket, worker: int | None = None) -> None:
        self.push = push
        # ZeroMQ's notification fd, watched for as long as the lane lives (a poll per wait
        # would add and remove an epoll watcher each time: the pipeline is full at every frame
        # when ingest outpaces the workers)
        self.room = gevent.get_hub().loop.io(push.getsockopt(zmq.FD), 1)
        self.worker = worker   # --route client: the worker index behind it
        self.ready: collections.deque[Mailbox] = collections.deque()
        self.wakeup = gevent.event.Event()
        self.in_hand = 0       # the frame being handed to the pipeline right now
        self.frame: Pending | None = None  # that frame (its ack may be overdue)

    def add(self, box: Mailbox) -> None:
        self.ready.append(box)
        self.wakeup.set()


NOBLOCK = int(zmq.NOBLOCK)  # (pyzmq's flags are enums: each | costs a Python call)
MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
ZERO_COPY = 1 << 16  # a frame this large is lent to ZeroMQ, not copied (pyzmq's threshold)


def send_parts(sock: zmq.Socket, parts: tuple) -> None:
    """``sock.send_multipart(parts, NOBLOCK)``, at half its cost: a part is copied unless it
    is large (a small ``copy=False`` part is copied too, after a ``zmq.Frame`` is made for
    it). zmq.Again when the socket has no room; then nothing was sent (ZeroMQ takes the rest
    of a message whose first part it took)."""
    for part in parts[:-1]:
        sock.send(part, MORE)
    last = parts[-1]
    sock.send(last, NOBLOCK, copy=len(last) < ZERO_COPY)


def wait_for_room(lane: Lane, timeout: float) -> None:
    """Park until the lane's PUSH can take a message, or ``timeout`` s. ZeroMQ's fd only says
    "look at ZMQ_EVENTS" (edge-triggered), so the events are read before each wait."""
    with gevent.Timeout(timeout, False):
        while not lane.push.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            gevent.get_hub().wait(lane.room)


class Dispatcher:
    def __init__(self, frames_push: zmq.Socket | None, bus_pub: zmq.Socket, queue_depth: int,
                 router: Router | None = None,
                 worker_push: Callable[[int], zmq.Socket] | None = None) -> None:
        """Round-robin into ``frames_push``; or, with ``router``, into one PUSH per worker,
        made by ``worker_push(index)`` when that worker first reports."""
        self.bus_pub = bus_pub
        self.depth = queue_depth
        self.router = router
        self.worker_push = worker_push
        self.shared = Lane(frames_push) if frames_push is not None else None
        self.lanes: dict[int, Lane] = {}      # --route client: per worker index
        self.unbound: set[int] = set()        # workers whose endpoint could not be bound
        self.greenlets: list[gevent.Greenlet] = []
        self.boxes: dict[str, Mailbox] = {}
        # a mailbox is in exactly one lane's `ready` (or in `parked`, when no worker is alive
        # to take its client) exactly while it holds frames; parked in order of arrival
        self.parked: dict[Mailbox, None] = {}
        self.waiting = 0     # frames in mailboxes
        self.ack_depth = max(queue_depth, ACK_WINDOW)

    @property
    def ready(self) -> collections.deque:
        return self.shared.ready

    @property
    def in_hand(self) -> int:
        lanes = list(self.lanes.values()) + ([self.shared] if self.shared else [])
        return sum(lane.in_hand for lane in lanes)

    def open(self, session: str, client: str, counts: ClientCounts) -> None:
        self.close(session)  # logged in again: what the old login accepted still goes out
        self.boxes[session] = Mailbox(session, counts, client)

    def close(self, session: str) -> None:
        """Forget a connection; frames it already had accepted are still dispatched, unless
        no worker is alive to take them (parked): they are dropped, or a client reconnecting
        while the pool is down would leave a mailbox behind each time."""
        box = self.boxes.get(session)
        if box is not None:
            box.closed = True
            if box in self.parked:
                del self.parked[box]
                box.counts.dropped += len(box.frames)
                self.waiting -= len(box.frames)
                for frame in box.frames:
                    frame.release()
                box.frames.clear()
            if not box.frames:
                self.forget(box)

    def forget(self, box: Mailbox) -> None:
        if self.boxes.get(box.session) is box:
            del self.boxes[box.session]

    def offer(self, session: str, header: bytes, jpeg: bytes, seq: int,
              on_release: Callable[[], None] | None = None) -> None:
        """Mail a frame; ``on_release`` (its ack) is called once it leaves the mailbox."""
        box = self.boxes[session]
        was_empty = not box.frames
        if len(box.frames) >= self.room(on_release is not None):
            box.frames.popleft().release()
            box.counts.dropped += 1
            self.waiting -= 1
        box.frames.append(Pending(header, jpeg, seq, on_release, time.monotonic()))
        self.waiting += 1
        send_parts(self.bus_pub, wire.Frame.published_parts(box.topic, header, jpeg))
        if self.router is not None:
            self.router.frame(box.client, time.monotonic())
        if was_empty:
            self.enqueue(box)

    def room(self, paced: bool) -> int:
        """Frames a mailbox holds before its oldest is dropped: a paced client's window, or
        ``queue_depth`` (newest wins)."""
        return self.ack_depth if paced else self.depth

    def lane_for(self, box: Mailbox) -> Lane | None:
        if self.router is None:
            return self.shared
        index = self.router.worker_for(box.client, time.monotonic())
        return None if index is None else self.lanes[index]

    def enqueue(self, box: Mailbox) -> None:
        self.place(box, self.lane_for(box))

    def place(self, box: Mailbox, lane: Lane | None) -> None:
        if lane is None:
            self.parked[box] = None
        else:
            lane.add(box)

    # -- --route client: workers come and go -----------------------------------------------------

    def worker_seen(self, index: int, stopping: bool = False) -> None:
        """A worker reported on the bus: give it a lane the first time. Parked clients are
        placed by :meth:`check`, once every report of the round is read (placed at the first
        report, they would all go to the first worker)."""
        if index in self.unbound:
            return
        if index not in self.lanes:
            try:
                push = self.worker_push(index)
            except zmq.ZMQError as e:  # e.g. an ipc path over the system's 107 bytes
                log.error("worker %d gets no frames: its endpoint: %s", index, e)
                self.unbound.add(index)
                return
            lane = self.lanes[index] = Lane(push, index)
            self.greenlets.append(gevent.spawn(self.run, lane))
        self.router.worker_seen(index, time.monotonic(), stopping)

    def check(self) -> None:
        """Twice a second (ingest's heartbeat, after the reports): rebalance, place parked
        clients."""
        self.router.check(time.monotonic())
        for box in list(self.parked):
            lane = self.lane_for(box)
            if lane is not None:
                del self.parked[box]
                lane.add(box)

    # -- the lanes' greenlets --------------------------------------------------------------------

    def run(self, lane: Lane | None = None) -> None:
        """A lane's greenlet (the shared lane's by default). A bug here must not stop the
        lane: every client behind it would stall, silently."""
        lane = lane or self.shared
        while True:
            lane.wakeup.wait()
            try:
                self.send_ready(lane)
            except Exception:
                log.exception("dispatcher: a frame could not be dispatched (counted as dropped)")
                gevent.sleep(0.1)  # then go on with the mailboxes still waiting
                continue
            lane.wakeup.clear()

    def send_ready(self, lane: Lane | None = None) -> None:
        lane = lane or self.shared
        while lane.ready:
            box = lane.ready[0]  # taken off only once it is placed: an error loses no mailbox
            if self.router is not None:
                target = self.lane_for(box)
                if target is not lane:  # its client moved to another worker (or to none)
                    lane.ready.popleft()
                    self.place(box, target)
                    continue
            lane.ready.popleft()
            frame = box.frames.popleft()
            self.waiting -= 1
            if box.frames:
                lane.ready.append(box)
            elif box.closed:
                self.forget(box)
            lane.in_hand, lane.frame = 1, frame
            try:
                sent = self.hand_over(lane, frame.header, frame.jpeg)
            except BaseException:  # every frame ends in a counter, even on an error
                box.counts.dropped += 1
                frame.release()
                raise
            finally:
                lane.in_hand, lane.frame = 0, None
            if sent:
                box.counts.dispatched += 1
                box.counts.outstanding[frame.seq] = time.monotonic()  # until a worker reports it
                frame.release()
            else:
                self.give_back(box, frame)

    def give_back(self, box: Mailbox, frame: Pending) -> None:
        """A frame whose worker went away before taking it: first in its mailbox again, and
        routed anew; unless a newer frame has filled the mailbox meanwhile (newest wins)."""
        if len(box.frames) >= self.room(frame.paced):
            box.counts.dropped += 1
            frame.release()
            return
        box.frames.appendleft(frame)
        self.waiting += 1
        if len(box.frames) == 1:  # it was in no lane while empty
            self.enqueue(box)

    def hand_over(self, lane: Lane, header: bytes, jpeg: bytes) -> bool:
        """Send to the lane's pipeline, parking this greenlet while it is full. The wait
        re-checks every 100 ms: ZeroMQ signals readiness by edges, and a worker that connects
        while we wait must not be missed. False: the lane's worker is gone (stopped reporting,
        or stopping) and the frame is still ours."""
        while True:
            try:
                send_parts(lane.push, wire.Frame.parts(header, jpeg))
                return True
            except zmq.Again:
                if lane.worker is not None and not self.router.alive(lane.worker):
                    return False
                wait_for_room(lane, 0.1)

    def release_overdue(self, now: float) -> int:
        """Ingest's heartbeat (twice a second): frames that have waited :data:`ACK_HOLD_S` for
        a worker are dropped and acked, as a full mailbox drops its oldest (newest wins: a
        frame that old is stale, and its client is owed an answer); a frame in hand, stuck
        in a full pipeline, is acked and kept. Returns how many acks went out."""
        released = 0
        for box in list(self.boxes.values()):
            frames = box.frames
            while frames and frames[0].owed and now - frames[0].arrived > ACK_HOLD_S:
                frames.popleft().release()
                box.counts.dropped += 1
                self.waiting -= 1
                released += 1
            if not frames:
                self.unqueue(box)
        for lane in self.all_lanes():
            frame = lane.frame
            if frame is not None and frame.owed and now - frame.arrived > ACK_HOLD_S:
                frame.release()
                released += 1
        return released

    def all_lanes(self) -> list[Lane]:
        return [lane for lane in [self.shared, *self.lanes.values()] if lane is not None]

    def unqueue(self, box: Mailbox) -> None:
        """A mailbox emptied outside its lane: out of its lane's (or the parked) queue."""
        self.parked.pop(box, None)
        for lane in self.all_lanes():
            if box in lane.ready:
                lane.ready.remove(box)
        if box.closed:
            self.forget(box)

    def drain(self, deadline: float) -> int:
        """Dispatch what is waiting, until ``deadline`` (monotonic); return what is left."""
        for lane in [self.shared, *self.lanes.values()]:
            if lane is not None:
                lane.wakeup.set()
        while (self.waiting or self.in_hand) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return self.waiting + self.in_hand
