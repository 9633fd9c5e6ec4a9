"""Several ingest nodes, one worker pool: the two supervisors of that shape.

``camstream pool`` (:class:`Pool`) runs the workers and hosts what the ingest nodes share:
the bus (XSUB/XPUB, ipc and CURVE tcp) and a **streamer** (``zmq.proxy`` PULL -> PUSH, see
:class:`camstream.bus.Streamer`) whose PULL binds the tcp frames endpoint. Every ingest node
(``camstream serve --ingest-only``, :class:`IngestNode`) connects its PUSH to that endpoint
and its bus sockets to the pool's bus, so the pool binds and the nodes connect: nodes come and
go without the pool noticing, as workers do on one machine. nginx spreads clients over the
nodes (systemd/nginx-camstream.conf).

Both are the gunicorn-style :class:`camstream.supervisor.Supervisor` with one role fewer:
the pool has no ingest (and no listening socket), an ingest node has no workers.
"""
from __future__ import annotations

import logging
import os
import time

from camstream import bus, proc, wire
from camstream.config import Config
from camstream.supervisor.notify import Notifier
from camstream.ingest.ledger import WORKER_STALE_S
from camstream.supervisor.arbiter import FRESH, Supervisor, plural

log = logging.getLogger("camstream.pool")


class Pool(Supervisor):
    """Workers, the shared bus and the streamer; no ingest."""

    def __init__(self, config: Config, notifier: Notifier, reload=None) -> None:
        super().__init__(config, None, notifier, reload)
        self.slots = [s for s in self.slots if s.role == "worker"]

    def open_bus(self) -> None:
        super().open_bus()
        self.streamer = bus.Streamer(self.ctx, self.config.runtime_dir, bus.offered(self.config),
                                     self.config.worker_hwm)
        self.streamer.start()
        log.info("frames from ingest nodes on %s, bus on %s and %s",
                 self.config.worker_endpoint, self.config.bus_endpoint,
                 bus.tcp_plus(self.config.bus_endpoint, 1))

    def stop(self) -> None:
        self.streamer.stop()  # first: no new frames for workers that are draining
        super().stop()

    def started_up(self) -> bool:
        return all(s.last_beat for s in self.slots)

    def ready_line(self) -> str:
        return plural(self.worker_count(), "worker")

    def healthy(self, now: float) -> bool:
        return any(s.last_beat and now - s.last_beat < FRESH for s in self.slots)

    def status_line(self) -> str:
        now = time.monotonic()
        alive = sum(1 for s in self.slots if s.last_beat and now - s.last_beat < FRESH)
        return f"pool: workers {alive}/{self.worker_count()}"

    def publish_status(self) -> None:
        """What every ingest node shows as its workers in /healthz."""
        now = time.monotonic()
        self.bus_pub.send_multipart(wire.Stats("pool", {
            "role": "pool", "pid": os.getpid(), "host": proc.HOST,
            "workers_expected": self.worker_count(),
            "workers_alive": sum(1 for s in self.slots if s.proc is not None and s.last_beat
                                 and now - s.last_beat < WORKER_STALE_S),
            "worker_restarts": sum(s.restarts for s in self.slots)}).pack())


class IngestNode(Supervisor):
    """``serve --ingest-only``: an ingest and no workers; the pool's bus is its bus. It also
    hosts a local bus (ipc only) that it and its ingest publish on as well, so that ingest's
    heartbeat reaches it while the pool is gone (a missing pool is not a hung ingest), and a
    display on this machine can attach to this node's frames."""

    def open_bus(self) -> None:
        to = bus.reached(self.config)
        self.zap = None
        self.proxy = bus.BusProxy(self.ctx, self.config.runtime_dir)
        self.proxy.start()
        self.bus_pub = bus.bus_pub(self.ctx, self.config.runtime_dir, to=to, local=True)
        self.beats = bus.bus_sub(self.ctx, self.config.runtime_dir, wire.STATS, hwm=10000,
                                 to=to, local=True)

    def healthy(self, now: float) -> bool:
        ingest = self.slots[0]
        return bool(ingest.last_beat and now - ingest.last_beat < FRESH)
