"""A worker process: the PULL end of the frame pipeline.

Loop: pull ``[header, jpeg]``, ``cv2.imdecode``, run the processor (see
:mod:`workers.processors`), publish the result (and the annotated image, JPEG-encoded, if the
processor made one) on the bus, and hand the frame to the recorder with ``--record``; every
quarter second publish cumulative per-client counters (they double as the worker's
heartbeat). A frame that does not decode is counted as an error, never a crash.

On SIGTERM the worker says it is stopping in a report at once, drains, then exits. On its own
pipeline (``--route client``) ingest stops routing to it once it reads that report, so the
worker waits for that (``HANDOFF_S``) and then for its pipe to run dry: nothing is lost. The
shared pipeline deals frames to every connected worker while ingest runs (SIGTTOU): there it
drains for at most a third of the stop timeout, and what its pipe still holds then (a few
frames) ingest counts as lost. When the whole daemon stops, ingest has gone first, so both
pipelines run dry at once.

The same loop runs in two ways: as a child of the supervisor (``main``: config on stdin, ipc
endpoints) and standalone on another machine (``run_standalone``, from ``camstream worker
--connect tcp://...``: CURVE-authenticated tcp, stats tagged ``remote`` with its host name).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

import cv2
import numpy as np
import zmq

from camstream import bus, proc, wire
from camstream.reach import Reach
from camstream.wire import Header
from workers import jpeg as jpeg_check
from workers import processors
from workers.recorder import Recorder

log = logging.getLogger("camstream.worker")

STATS_INTERVAL = 0.25  # also bounds what a killed worker had processed but not yet reported
# a full snapshot of every client's counters this often; the reports between carry only the
# clients that had frames lately, so their cost follows the active names, not all names seen
FULL_STATS_INTERVAL = 5.0
DRAIN_IDLE_MS = 200    # a stopping worker's pipe has run dry when nothing came for this long
HANDOFF_S = 1.0        # ingest reads reports every 0.5 s: then routes no more to a stopping one


def decode(jpeg: memoryview, max_pixels: int = jpeg_check.DEFAULT_MAX_PIXELS
           ) -> tuple[np.ndarray | None, str, str]:
    """A whole JPEG decoded, or None, a reason (a counter's key) and the detail. Its markers
    are read first (:mod:`workers.jpeg`): imdecode alone would take a PNG, return the top of a
    truncated JPEG, allocate what a tiny file declares, and replay every scan of a progressive
    one; OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS) stays as a second line."""
    reason, detail = jpeg_check.problem(jpeg, max_pixels)
    if reason:
        return None, reason, detail
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        return None, "not decodable", "is not a decodable JPEG"
    return image, "", ""


class Counts:
    __slots__ = ("processed", "errors", "processor_errors", "recorded", "record_errors",
                 "record_dropped", "errors_by")

    NUMBERS = __slots__[:-1]   # what a report carries per client; errors_by goes apart

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0            # frames not processed: undecodable, or the processor failed
        self.errors_by: dict[str, int] = {}  # errors per reason (a few fixed words)
        self.processor_errors = 0  # of which the processor failed (raised, or a bad result)
        self.recorded = 0          # --record: files written
        self.record_errors = 0     # --record: writes that failed (disk full, unwritable...)
        self.record_dropped = 0    # --record: frames the disk could not keep up with

    def error(self, reason: str) -> None:
        self.errors += 1
        self.errors_by[reason] = self.errors_by.get(reason, 0) + 1


class Deadline:
    """``--frame-timeout``: a frame whose decoding and processing outlast it is counted as an
    error, reported, and the worker exits (status EXIT_STUCK) so that the supervisor replaces
    it at once: a stuck decode cannot be interrupted, and would hold its frames and its slot
    in the pipeline until the heartbeat timeout. A thread of its own, which touches the bus
    only while the worker's loop is inside the frame (never while the loop uses the bus)."""

    EXIT_STUCK = 3

    def __init__(self, worker: Worker, seconds: float) -> None:
        self.worker = worker
        self.seconds = seconds
        self.lock = threading.Lock()
        self.current: tuple | None = None   # (header, counts, monotonic start)
        threading.Thread(target=self._watch, name="frame-deadline", daemon=True).start()

    def begin(self, header: Header, counts: Counts) -> None:
        with self.lock:
            self.current = (header, counts, time.monotonic())

    def end(self) -> None:
        with self.lock:
            self.current = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(0.1, self.seconds / 4))
            with self.lock:
                if self.current is None or time.monotonic() - self.current[2] < self.seconds:
                    continue
                header, counts, _ = self.current
                counts.error("over --frame-timeout")
                log.error("%s: frame %d (%d bytes) took over %g s (--frame-timeout): counted "
                          "as an error; this worker exits to be replaced", header.client,
                          header.seq, header.size, self.seconds)
                self.worker.publish_stats(last=True)
                time.sleep(0.2)  # the report leaves through libzmq's I/O thread
                os._exit(self.EXIT_STUCK)


class Worker:
    def __init__(self, config, index: int, ctx: zmq.Context) -> None:
        self.index = index
        self.remote = config.tcp_side == "connect"  # standalone, over tcp
        self.process = processors.load(config.processor, config.processor_options)
        self.recorder: Recorder | None = None
        if config.record_dir:
            self.recorder = Recorder(config.record_dir, int(config.record_max_gb * 1e9), index,
                                     self.log_once)
            self.recorder.start()
        to = bus.reached(config)
        own = index if config.route == "client" and not self.remote else None
        self.routed = own is not None  # its own pipeline: ingest stops feeding it when told
        self.drain_max = config.stop_timeout / 3
        self.frames_pull = bus.frames_pull(ctx, config.runtime_dir, config.worker_hwm, to=to,
                                           own=own)
        # standalone over tcp: say when the serving machine is not reached (wrong keys, a dead
        # endpoint), which ZeroMQ would retry in silence
        self.reach = Reach(self.frames_pull, config.worker_endpoint) if self.remote else None
        self.bus_pub = bus.bus_pub(ctx, config.runtime_dir, to=to)
        self.counts: dict[str, Counts] = {}
        self.finished: dict[str, list[int]] = {}  # per client, seqs done since the last stats
        # clients with frames since the last stats, and in the interval before (what the
        # recorder thread counts for them may land one report late)
        self.changed: set[str] = set()
        self.changed_before: set[str] = set()
        self.next_full = 0.0  # monotonic time of the next full report
        self.stopping = False
        self.started = time.time()
        self._errors_logged: set[str] = set()
        self.max_pixels = config.max_pixels
        self.deadline = Deadline(self, config.frame_timeout)

    def run(self, wakeup: int | None = None) -> None:
        """Until told to stop and drained. ``wakeup``: a file descriptor that becomes
        readable when a signal arrives (the stop is then reported at once, not after the
        poll's timeout)."""
        poller = zmq.Poller()
        poller.register(self.frames_pull, zmq.POLLIN)
        if wakeup is not None:
            poller.register(wakeup, zmq.POLLIN)
        if self.reach is not None:
            poller.register(self.reach.monitor, zmq.POLLIN)
        next_stats = 0.0
        told = None  # when the stop was reported
        while True:
            now = time.monotonic()
            if now >= next_stats or (self.stopping and told is None):
                self.publish_stats()
                next_stats = now + STATS_INTERVAL
                if self.stopping and told is None:
                    told = now
            if told is not None and self.drained(now - told, poller):
                break
            ready = dict(poller.poll(int(STATS_INTERVAL * 1000)))
            if wakeup in ready:
                os.read(wakeup, 512)
            if self.reach is not None:
                if self.reach.monitor in ready:
                    self.reach.read()
                self.reach.tick()
            if self.frames_pull in ready:
                self.handle(bus.receive(self.frames_pull, wire.Frame.unpack, copy=False))
        self.publish_stats(last=True)

    def drained(self, since_told: float, poller: zmq.Poller) -> bool:
        """Whether a stopping worker may exit now (see the module's docstring)."""
        if self.routed and since_told < HANDOFF_S:
            return False
        if not self.routed and since_told >= self.drain_max:
            return True
        return not poller.poll(DRAIN_IDLE_MS)  # (a wake-up byte only delays this once)

    def handle(self, frame: wire.Frame) -> None:
        header = frame.header
        counts = self.counts.get(header.client)
        if counts is None:
            counts = self.counts[header.client] = Counts()
        self.changed.add(header.client)
        self.finished.setdefault(header.client, []).append(header.seq)  # reported once done
        self.deadline.begin(header, counts)
        try:
            outcome = self.work(frame.jpeg, header, counts)
        finally:
            self.deadline.end()
        if outcome is None:
            return
        payload, jpeg = outcome
        counts.processed += 1
        self.bus_pub.send_multipart(wire.Result.of(frame, payload, jpeg).pack(), copy=False)
        if self.recorder:
            self.recorder.put(header, frame.jpeg, payload, counts)

    def work(self, data: memoryview, header: Header, counts: Counts
             ) -> tuple[bytes, bytes] | None:
        """Decode and process one frame (under the deadline): the result's JSON and the
        annotated JPEG, or None when it was counted as an error."""
        image, reason, problem = decode(data, self.max_pixels)
        if image is None:
            counts.error(reason)
            self.log_once(reason, "%s: frame %d (%d bytes) %s", header.client, header.seq,
                          header.size, problem)
            if self.recorder:
                self.recorder.put(header, data, json.dumps({"error": problem}).encode(),
                                  counts)
            return None
        try:
            result = self.process(image, header)
            annotated = None
            if type(result) is tuple:
                result, annotated = result
            if not isinstance(result, dict):
                raise TypeError(f"returned {type(result).__name__}, expected a dict or a "
                                "(dict, image) tuple")
            result["seq"] = header.seq
            result["worker"] = self.index
            result["done_ns"] = time.time_ns()
            payload = json.dumps(result, separators=(",", ":")).encode()
            jpeg = b"" if annotated is None else cv2.imencode(".jpg", annotated)[1]
        except Exception as exc:  # a processor bug costs this frame, not the worker
            counts.error("processor failed")
            counts.processor_errors += 1
            self.log_once("processor " + type(exc).__name__, "processor failed on %s frame "
                          "%d: %r", header.client, header.seq, exc)
            if self.recorder:
                self.recorder.put(header, data, json.dumps(
                    {"error": f"processor failed: {exc!r}"}).encode(), counts)
            return None
        return payload, jpeg

    def publish_stats(self, last: bool = False) -> None:
        """Cumulative counters per client: of every client in a full report (``"full":
        true``, every FULL_STATS_INTERVAL, and the ``last`` one before the worker exits), of
        the clients with frames lately in the others; readers merge a partial report into
        what they hold for this pid."""
        now = time.monotonic()
        full = last or now >= self.next_full
        changed, self.changed = self.changed, set()
        if full:
            self.next_full = now + FULL_STATS_INTERVAL
            counts = list(self.counts.items())
        else:
            counts = [(name, self.counts[name]) for name in changed | self.changed_before]
        self.changed_before = changed
        finished, self.finished = self.finished, {}
        clients = {name: {key: getattr(c, key) for key in Counts.NUMBERS}
                   for name, c in counts}
        self.bus_pub.send_multipart(wire.Stats(
            f"worker {self.index}",
            {"role": "worker", "index": self.index, "pid": os.getpid(), "started": self.started,
             "host": proc.HOST, "remote": self.remote, "stopping": self.stopping, "full": full,
             "clients": clients, "done": finished,
             "errors_by": {name: dict(c.errors_by) for name, c in counts if c.errors_by}}).pack())

    def log_once(self, kind: str, msg: str, *args) -> None:
        """Log the first error of each kind; the counters carry the rest."""
        if kind not in self._errors_logged:
            self._errors_logged.add(kind)
            log.warning(msg + " (further errors of this kind are only counted)", *args)


def main() -> int:
    index = int(sys.argv[2])
    config = proc.child_start(f"worker {index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    own = bus.worker_frames(index) if config.route == "client" else bus.FRAMES
    return serve(config, index, bus.endpoint(config.runtime_dir, own))


def run_standalone(config) -> int:
    """``camstream worker``: one worker on another machine, pulling over CURVE tcp. SIGTERM
    or Ctrl-C drains what it holds, then it exits; nothing restarts it but its own service
    manager (the pool of the serving machine goes on without it)."""
    import setproctitle
    setproctitle.setproctitle(f"camstream: remote worker ({config.worker_endpoint})")
    proc.setup_logging(config.log_level)
    return serve(config, 0, config.worker_endpoint)


def serve(config, index: int, source: str) -> int:
    """Run one worker until SIGTERM (or SIGINT, standalone), then drain and stop."""
    ctx = zmq.Context()
    worker = Worker(config, index, ctx)

    def stop(signum, frame):
        worker.stopping = True  # reported at once: the signal also wakes the loop's poll
    signal.signal(signal.SIGTERM, stop)
    if config.tcp_side == "connect":
        signal.signal(signal.SIGINT, stop)
    wakeup, wakeup_w = os.pipe()
    for fd in (wakeup, wakeup_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    log.info("pulling frames from %s", source)
    worker.run(wakeup)
    if worker.recorder:
        worker.recorder.close(timeout=min(5.0, config.stop_timeout / 3))
    ctx.destroy(linger=500)
    log.info("stopped")
    return 0
