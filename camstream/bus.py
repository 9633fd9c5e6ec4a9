"""Every ZeroMQ endpoint and socket option of camstream, in one place.

Two patterns (names as in the ZeroMQ guide):

- **pipeline** (PUSH/PULL): ingest's ``frames_push`` binds, each worker's ``frames_pull``
  connects. High-water marks are tiny on purpose: a full pipeline makes ingest drop the oldest
  frame instead of queueing (nothing downstream may stall ingest).
- **pub-sub through an XSUB/XPUB proxy** (the bus): every process publishes with ``bus_pub``
  (frames, results, stats, events) into the proxy's XSUB; displays, taps, ingest and the
  supervisor subscribe with ``bus_sub`` on its XPUB. A slow subscriber loses messages at its own
  high-water mark; a publisher never blocks.

The endpoints are ``ipc://`` files in the runtime directory.
"""
from __future__ import annotations

import threading
from pathlib import Path

import zmq

FRAMES = "frames"
BUS_IN = "bus-in"
BUS_OUT = "bus-out"

BUS_SUB_HWM = 64      # messages a subscriber may fall behind before it loses the oldest
BUS_PUB_HWM = 1000    # the proxy drains it at memory speed; this only absorbs bursts


def endpoint(runtime_dir: str, name: str) -> str:
    return f"ipc://{Path(runtime_dir) / name}"


def frames_push(ctx: zmq.Context, runtime_dir: str, hwm: int) -> zmq.Socket:
    """Ingest's end of the pipeline: binds; sends only to workers that are connected."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint(runtime_dir, FRAMES))
    return sock


def frames_pull(ctx: zmq.Context, runtime_dir: str, hwm: int) -> zmq.Socket:
    """A worker's end of the pipeline: connects, and reconnects by itself when ingest restarts."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint(runtime_dir, FRAMES))
    return sock


def bus_pub(ctx: zmq.Context, runtime_dir: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, BUS_PUB_HWM)
    sock.setsockopt(zmq.LINGER, 200)
    sock.connect(endpoint(runtime_dir, BUS_IN))
    return sock


def bus_sub(ctx: zmq.Context, runtime_dir: str, *topics: bytes,
            hwm: int = BUS_SUB_HWM, conflate: bool = False) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t)
    sock.connect(endpoint(runtime_dir, BUS_OUT))
    return sock


class BusProxy:
    """The bus: an XSUB/XPUB proxy run by libzmq in a thread (it holds no GIL while it runs)."""

    def __init__(self, ctx: zmq.Context, runtime_dir: str) -> None:
        self.xsub = ctx.socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.RCVHWM, BUS_PUB_HWM)
        self.xsub.setsockopt(zmq.LINGER, 0)
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, BUS_SUB_HWM)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.control = ctx.socket(zmq.PAIR)
        self._control_ep = f"inproc://bus-control-{id(self)}"
        self.control.bind(self._control_ep)
        self.xsub.bind(endpoint(runtime_dir, BUS_IN))
        self.xpub.bind(endpoint(runtime_dir, BUS_OUT))
        self._ctx = ctx
        self._thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        ctl = self._ctx.socket(zmq.PAIR)
        ctl.connect(self._control_ep)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            ctl.close(0)
            self.xsub.close(0)
            self.xpub.close(0)

    def stop(self) -> None:
        self.control.send(b"TERMINATE")
        self._thread.join(timeout=2)
        self.control.close(0)
