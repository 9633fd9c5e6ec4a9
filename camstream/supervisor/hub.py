"""The supervisor's place on the bus: where it publishes its status and hears its children's
heartbeats, and what it hosts for them.

- :class:`Hub` (``serve``, ``pool``): hosts the bus (on tcp too with --worker-endpoint,
  CURVE-checked by a ZAP thread);
- :class:`PoolHub` (``pool``): the same, and the streamer that deals the ingest nodes' frames
  to the local workers;
- :class:`NodeHub` (``serve --ingest-only``): joins the pool's bus over tcp, and hosts a local
  one (ipc only) that it and its ingest publish on as well, so that ingest's heartbeat reaches
  it while the pool is gone (a missing pool is not a hung ingest), and a display on this
  machine can attach to this node's frames.
"""
from __future__ import annotations

import logging

import zmq

from camstream import bus, wire
from camstream.config import Config

log = logging.getLogger("camstream.supervisor.hub")


class Hub:
    def __init__(self, ctx: zmq.Context, config: Config) -> None:
        self.ctx = ctx
        self.config = config
        self.zap = None
        self.proxy: bus.BusProxy | None = None
        self.pub: zmq.Socket | None = None
        self.beats: zmq.Socket | None = None

    def open(self) -> None:
        """Host the bus (or join a pool's, with --ingest-only), then publish and listen."""
        offer, to = bus.offered(self.config), bus.reached(self.config)
        self.zap = offer.curve.authenticator(self.ctx) if offer else None
        self.proxy = None if to else bus.BusProxy(self.ctx, self.config.runtime_dir, offer)
        if self.proxy is not None:
            self.proxy.start()
        self.pub = bus.bus_pub(self.ctx, self.config.runtime_dir, to=to)
        self.beats = bus.bus_sub(self.ctx, self.config.runtime_dir, wire.STATS, hwm=10000,
                                 to=to)

    def check(self) -> None:
        """Bind the bus again if its socket files were removed (raises if it cannot)."""
        if self.proxy is not None:
            self.proxy.check()

    def stop_feeding(self) -> None:
        """The stop begins: nothing new for the children that drain."""

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.zap is not None:
            self.zap.stop()


class PoolHub(Hub):
    def open(self) -> None:
        super().open()
        c = self.config
        self.streamer = bus.Streamer(self.ctx, c.runtime_dir, bus.offered(c), c.worker_hwm)
        self.streamer.start()
        log.info("frames from ingest nodes on %s, bus on %s and %s", c.worker_endpoint,
                 c.bus_endpoint, bus.tcp_plus(c.bus_endpoint, 1))

    def stop_feeding(self) -> None:
        self.streamer.stop()  # no new frames for workers that are draining


class NodeHub(Hub):
    def open(self) -> None:
        to = bus.reached(self.config)
        self.proxy = bus.BusProxy(self.ctx, self.config.runtime_dir)
        self.proxy.start()
        self.pub = bus.bus_pub(self.ctx, self.config.runtime_dir, to=to, local=True)
        self.beats = bus.bus_sub(self.ctx, self.config.runtime_dir, wire.STATS, hwm=10000,
                                 to=to, local=True)
