"""Several ingest nodes, one worker pool: the two supervisors of that shape, as lists of
children handed to the one arbiter (:class:`camstream.supervisor.arbiter.Supervisor`).

``camstream pool`` (:func:`pool`) runs the workers and hosts what the ingest nodes share:
the bus (XSUB/XPUB, ipc and CURVE tcp) and a **streamer** (PULL -> PUSH, a Python loop: see
:class:`camstream.bus.Streamer`) whose PULL binds the tcp frames endpoint. Every ingest node
(``camstream serve --ingest-only``, :func:`ingest_node`) connects its PUSH to that endpoint
and its bus sockets to the pool's bus, so the pool binds and the nodes connect: nodes come and
go without the pool noticing, as workers do on one machine. nginx spreads clients over the
nodes (systemd/nginx-camstream.conf).

The pool has no ingest (and no listening socket); an ingest node has no workers.
"""
from __future__ import annotations

import socket
from typing import Callable

from camstream.config import Config
from camstream.supervisor import children
from camstream.supervisor.arbiter import Supervisor
from camstream.supervisor.hub import NodeHub, PoolHub
from camstream.supervisor.notify import Notifier


def pool(config: Config, notifier: Notifier,
         reload: Callable[[], Config] | None = None) -> Supervisor:
    """Workers, the shared bus and the streamer; no ingest."""
    return Supervisor(config, [children.worker(i) for i in range(1, config.workers + 1)],
                      notifier, hub=PoolHub, name="pool", reload=reload)


def ingest_node(config: Config, listener: socket.socket, notifier: Notifier,
                reload: Callable[[], Config] | None = None) -> Supervisor:
    """``serve --ingest-only``: an ingest (and a display if asked) and no workers; the pool's
    bus is its bus."""
    specs = [children.ingest(listener)]
    if config.display:
        specs.append(children.display(config))
    return Supervisor(config, specs, notifier, hub=NodeHub, grow=None, reload=reload)
