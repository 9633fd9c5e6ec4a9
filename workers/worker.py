"""A worker process: the PULL end of the frame pipeline.

Loop: pull ``[header, jpeg]``, ``cv2.imdecode``, run the processor, publish the result on the
bus; every half second publish cumulative per-client counters (they double as the worker's
heartbeat). A frame that does not decode is counted as an error, never a crash. On SIGTERM the
worker drains what is already queued to it, then exits.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import cv2
import numpy as np
import zmq

from camstream import bus, proc, wire
from camstream.wire import Header
from workers import processors

log = logging.getLogger("camstream.worker")

STATS_INTERVAL = 0.25  # also bounds what a killed worker had processed but not yet reported
DRAIN_IDLE_MS = 200


def decode(jpeg: memoryview) -> tuple[np.ndarray | None, str]:
    """A whole JPEG decoded, or None and why. imdecode alone would also take a PNG, and would
    return the top of a truncated JPEG; its pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS, set by the
    supervisor) stops a small file that declares huge dimensions before it allocates them."""
    if jpeg[:2] != b"\xff\xd8":
        return None, "is not a JPEG"
    if b"\xff\xd9" not in bytes(jpeg[-32:]):
        return None, "is a truncated JPEG (no end marker)"
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    return (image, "") if image is not None else (None, "is not a decodable JPEG")


class Counts:
    __slots__ = ("processed", "errors")

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0


class Worker:
    def __init__(self, config, index: int, ctx: zmq.Context) -> None:
        self.index = index
        self.process = processors.load(config.processor)
        self.frames_pull = bus.frames_pull(ctx, config.runtime_dir, config.worker_hwm)
        self.bus_pub = bus.bus_pub(ctx, config.runtime_dir)
        self.counts: dict[str, Counts] = {}
        self.stopping = False
        self.started = time.time()
        self._errors_logged: set[str] = set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frames_pull, zmq.POLLIN)
        next_stats = 0.0
        while True:
            now = time.monotonic()
            if now >= next_stats:
                self.publish_stats()
                next_stats = now + STATS_INTERVAL
            timeout = DRAIN_IDLE_MS if self.stopping else int(STATS_INTERVAL * 1000)
            if not poller.poll(timeout):
                if self.stopping:
                    break
                continue
            self.handle(self.frames_pull.recv_multipart(copy=False))
        self.publish_stats()

    def handle(self, parts: list) -> None:
        header = Header.unpack(parts[0].buffer)
        counts = self.counts.get(header.client)
        if counts is None:
            counts = self.counts[header.client] = Counts()
        image, problem = decode(parts[1].buffer)
        if image is None:
            counts.errors += 1
            self.log_once(problem, "%s: frame %d (%d bytes) %s", header.client, header.seq,
                          header.size, problem)
            return
        try:
            result = self.process(image, header)
        except Exception as exc:  # a processor bug costs this frame, not the worker
            counts.errors += 1
            self.log_once(type(exc).__name__, "processor failed on %s frame %d: %r",
                          header.client, header.seq, exc)
            return
        counts.processed += 1
        result["done_ns"] = time.time_ns()
        self.bus_pub.send_multipart(
            [wire.topic(wire.PROCESSED, header.client), parts[0],
             json.dumps(result, separators=(",", ":")).encode(), b""], copy=False)

    def publish_stats(self) -> None:
        clients = {name: {"processed": c.processed, "errors": c.errors}
                   for name, c in self.counts.items()}
        self.bus_pub.send_multipart(wire.pack_json(
            wire.STATS, f"worker {self.index}",
            {"role": "worker", "index": self.index, "pid": os.getpid(), "started": self.started,
             "clients": clients}))

    def log_once(self, kind: str, msg: str, *args) -> None:
        """Log the first error of each kind; the counters carry the rest."""
        if kind not in self._errors_logged:
            self._errors_logged.add(kind)
            log.warning(msg + " (further errors of this kind are only counted)", *args)


def main() -> int:
    index = int(sys.argv[2])
    config = proc.child_start(f"worker {index}")
    ctx = zmq.Context()
    worker = Worker(config, index, ctx)

    def stop(signum, frame):
        worker.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    log.info("pulling frames from %s", bus.endpoint(config.runtime_dir, bus.FRAMES))
    worker.run()
    ctx.destroy(linger=500)
    log.info("stopped")
    return 0
