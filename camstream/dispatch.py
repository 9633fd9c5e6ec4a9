"""From accepted frame to worker pool, without ever blocking the socket.io handlers.

Each connection has a small mailbox (``queue_depth`` frames). A new frame goes in at once;
if the mailbox is full the *oldest* frame in it is dropped and counted: the newest frames win,
so a processed frame is never older than the pipeline's few slots. One dispatcher greenlet
drains the mailboxes round-robin into the pipeline's PUSH socket (pyzmq's gevent API: a full
pipeline parks this greenlet only), so a 1 Hz camera gets its turn beside a 30 Hz one.
Every accepted frame is also published on the bus for displays and taps (PUB never blocks).
"""
from __future__ import annotations

import collections
import time

import gevent
import gevent.event
import zmq.green as zmq

from camstream import wire
from camstream.stats import ClientCounts


class Mailbox:
    __slots__ = ("frames", "counts", "topic", "closed")

    def __init__(self, counts: ClientCounts, topic: bytes) -> None:
        self.frames: collections.deque = collections.deque()
        self.counts = counts
        self.topic = topic
        self.closed = False


class Dispatcher:
    def __init__(self, frames_push: zmq.Socket, bus_pub: zmq.Socket, queue_depth: int) -> None:
        self.frames_push = frames_push
        self.bus_pub = bus_pub
        self.depth = queue_depth
        self.boxes: dict[str, Mailbox] = {}
        self.ready: collections.deque[str] = collections.deque()  # round-robin order
        self.waiting = 0     # frames in mailboxes
        self.in_hand = 0     # the frame the dispatcher is handing to the pipeline right now
        self._wakeup = gevent.event.Event()

    def open(self, session: str, client: str, counts: ClientCounts) -> None:
        self.boxes[session] = Mailbox(counts, wire.topic(wire.RAW, client))

    def close(self, session: str) -> None:
        """Forget a connection; frames it already had accepted are still dispatched."""
        box = self.boxes.get(session)
        if box is not None:
            box.closed = True
            if not box.frames:
                del self.boxes[session]

    def offer(self, session: str, header: bytes, jpeg: bytes, seq: int) -> None:
        box = self.boxes[session]
        was_empty = not box.frames
        if len(box.frames) >= self.depth:
            box.frames.popleft()
            box.counts.dropped += 1
            self.waiting -= 1
        box.frames.append((header, jpeg, seq))
        self.waiting += 1
        self.bus_pub.send_multipart((box.topic, header, jpeg), copy=False, flags=zmq.NOBLOCK)
        if was_empty:  # a session is in `ready` exactly while its mailbox holds frames
            self.ready.append(session)
            self._wakeup.set()

    def run(self) -> None:
        """The dispatcher greenlet."""
        while True:
            self._wakeup.wait()
            self.send_ready()
            self._wakeup.clear()

    def send_ready(self) -> None:
        while self.ready:
            session = self.ready.popleft()
            box = self.boxes[session]
            header, jpeg, seq = box.frames.popleft()
            self.waiting -= 1
            if box.frames:
                self.ready.append(session)
            elif box.closed:
                del self.boxes[session]
            self.in_hand = 1
            self.hand_over(header, jpeg)
            self.in_hand = 0
            box.counts.dispatched += 1
            box.counts.outstanding[seq] = time.monotonic()  # until a worker reports it

    def hand_over(self, header: bytes, jpeg: bytes) -> None:
        """Send to the pipeline, parking this greenlet while it is full. The wait re-checks
        every 100 ms: ZeroMQ signals readiness by edges, and a worker that connects while we
        wait must not be missed."""
        while True:
            try:
                self.frames_push.send_multipart((header, jpeg), flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                self.frames_push.poll(100, zmq.POLLOUT)

    def drain(self, deadline: float) -> int:
        """Dispatch what is waiting, until ``deadline`` (monotonic); return what is left."""
        self._wakeup.set()
        while (self.waiting or self.in_hand) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return self.waiting + self.in_hand
