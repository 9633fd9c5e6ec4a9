"""Every ZeroMQ endpoint and socket option of camstream, in one place.

Two patterns (names as in the ZeroMQ guide):

- **pipeline** (PUSH/PULL): ingest's ``frames_push`` binds, each worker's ``frames_pull``
  connects. High-water marks are tiny on purpose: a full pipeline makes ingest drop the oldest
  frame instead of queueing (nothing downstream may stall ingest).
- **pub-sub through an XSUB/XPUB proxy** (the bus): every process publishes with ``bus_pub``
  (frames, results, stats, events) into the proxy's XSUB; displays, taps, ingest and the
  supervisor subscribe with ``bus_sub`` on its XPUB. A slow subscriber loses messages at its own
  high-water mark; a publisher never blocks.

The endpoints are ``ipc://`` files in the runtime directory (:mod:`camstream.rundir`), whose
file modes are the only access control ipc has: every socket is the daemon's user's alone
except ``bus-out``, the bus's subscribing side, which its group may reach too (displays and
taps read; only the daemon's own processes publish). A bound socket whose file is removed
keeps listening where no new peer can reach it, so binders check their files
(:class:`IpcBinds`) and bind again. Beyond one machine the same
sockets also bind (or connect to) ``tcp://`` endpoints, always with CURVE (:mod:`camstream.keys`):

- ``serve --worker-endpoint tcp://H:P``: ingest's ``frames_push`` binds P as well, and the bus
  binds P+1 (XSUB: remote workers publish there) and P+2 (XPUB), unless ``--bus-endpoint``
  names another port (then that port and the next). ``camstream worker --connect`` connects.
- ``pool`` (several ingest nodes, one worker pool): a **streamer** (the guide's name for a
  PULL->PUSH proxy) binds a PULL on tcp P, which every ingest node's ``frames_push``
  connects to (PUSH may connect), and a PUSH on the ipc frames endpoint for its local
  workers; the pool hosts the bus on P+1/P+2 and ingest nodes publish into it.

With ``--route client`` (processors that need each client's frames in order,
:mod:`camstream.ingest.routing`) the pipeline is one PUSH per worker instead: ingest binds
``frames-N`` for worker N once that worker reports, and worker N's PULL connects to it. Local
workers only: a shared pipeline is what remote workers and pools pull from.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zmq

from camstream import rundir, wire
from camstream.keys import Curve

log = logging.getLogger("camstream.bus")

FRAMES = "frames"
BUS_IN = "bus-in"
BUS_OUT = "bus-out"

BUS_SUB_HWM = 64      # messages a subscriber may fall behind before it loses the oldest
BUS_PUB_HWM = 1000    # the proxy drains it at memory speed; this only absorbs bursts

T = TypeVar("T")


def endpoint(runtime_dir: str, name: str) -> str:
    return f"ipc://{Path(runtime_dir) / name}"


class IpcBinds:
    """The ipc endpoints one thread bound, with each socket file's inode, so that it notices
    a file removed (or replaced) and binds it again: libzmq would go on listening on a file
    nobody can reach, and a restarted worker or a new display would never join."""

    def __init__(self) -> None:
        self._bound: list[list] = []   # [socket, path, inode]

    def bind(self, sock: zmq.Socket, runtime_dir: str, name: str) -> None:
        path = str(Path(runtime_dir) / name)
        _bind_closed(sock, path)
        self._bound.append([sock, path, os.lstat(path).st_ino])

    def gone(self) -> list[str]:
        """Paths whose socket file is no longer the one this thread bound."""
        out = []
        for _, path, inode in self._bound:
            try:
                if os.lstat(path).st_ino == inode:
                    continue
            except OSError:
                pass
            out.append(path)
        return out

    def rebind(self) -> list[str]:
        """Bind again every endpoint whose file is gone; returns their paths, each logged.
        The same socket binds the path a second time (no unbind: the old listener's close
        would unlink the new file, later, from libzmq's I/O thread); established connections
        stay, and the old listener, reachable by nobody, lives on with the socket."""
        gone = set(self.gone())
        for entry in self._bound:
            sock, path, _ = entry
            if path not in gone:
                continue
            rundir.ensure(os.path.dirname(path))
            try:
                os.unlink(path)  # an impostor in its place (the directory is ours alone)
            except OSError:
                pass
            _bind_closed(sock, path)
            entry[2] = os.lstat(path).st_ino
            log.warning("ipc endpoint %s was removed from the runtime directory: bound it "
                        "again", path)
        return sorted(gone)


def _bind_closed(sock: zmq.Socket, path: str) -> None:
    """Bind an ipc socket file closed to everyone but this user (umask 0077 for the bind:
    no moment when the group could connect), then give it its mode: the group may reach
    ``bus-out``, nothing else. Binds happen in one thread per process, which creates no other
    files meanwhile."""
    old = os.umask(0o077)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old)
    rundir.restrict(path, rundir.SHARED if os.path.basename(path) == BUS_OUT
                    else rundir.PRIVATE)


def tcp_plus(tcp: str, n: int) -> str:
    """``tcp://host:port`` with the port moved by ``n``."""
    host, _, port = tcp.rpartition(":")
    return f"{host}:{int(port) + n}"


@dataclass(frozen=True)
class Remote:
    """The tcp side of a process: the endpoints it binds besides its ipc ones (``offered``),
    or those of another machine it connects to (``reached``), with its CURVE keys."""

    frames: str     # tcp://HOST:PORT of the frame pipeline
    bus: str        # tcp://HOST:PORT: the bus's XSUB (publishers); PORT+1 is its XPUB
    curve: Curve

    @property
    def bus_out(self) -> str:
        return tcp_plus(self.bus, 1)


def offered(config) -> Remote | None:
    """The tcp endpoints this daemon binds (``serve --worker-endpoint``, ``pool``), if any."""
    if config.tcp_side != "bind":
        return None
    return Remote(config.worker_endpoint, config.bus_endpoint, Curve.server(config.curve_keys))


def reached(config) -> Remote | None:
    """The endpoints of another machine this process connects to (``serve --ingest-only``,
    ``camstream worker``), if any: it then uses no ipc endpoint at all."""
    if config.tcp_side != "connect":
        return None
    return Remote(config.worker_endpoint, config.bus_endpoint,
                  Curve.client(config.curve_keys, config.curve_key))


def _connect(sock: zmq.Socket, ipc: str, tcp: str, remote: Remote | None,
             local: bool = False) -> None:
    """ipc, or tcp with CURVE; with ``local`` both (ipc first: its NULL mechanism is taken at
    connect, before the CURVE options are set)."""
    if remote is None or local:
        sock.connect(ipc)
    if remote is not None:
        remote.curve.connect_with(sock)
        sock.connect(tcp)


def frames_push(ctx: zmq.Context, runtime_dir: str, hwm: int, offer: Remote | None = None,
                to: Remote | None = None, binds: IpcBinds | None = None) -> zmq.Socket:
    """Ingest's end of the pipeline: binds (ipc, and tcp with ``offer``), or connects to a
    pool's streamer (``to``); sends only to peers that are connected."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.LINGER, 0)
    if to is not None:
        _connect(sock, "", to.frames, to)
        return sock
    (binds or IpcBinds()).bind(sock, runtime_dir, FRAMES)
    if offer is not None:
        offer.curve.serve_on(sock)   # after the ipc bind: ipc keeps the NULL mechanism
        sock.bind(offer.frames)
    return sock


def worker_frames(index: int) -> str:
    """The name of worker ``index``'s own pipeline endpoint (``--route client``)."""
    return f"{FRAMES}-{index}"


def worker_push(ctx: zmq.Context, runtime_dir: str, index: int, hwm: int,
                binds: IpcBinds | None = None) -> zmq.Socket:
    """``--route client``: ingest's end of worker ``index``'s own pipeline."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        (binds or IpcBinds()).bind(sock, runtime_dir, worker_frames(index))
    except zmq.ZMQError:
        sock.close()  # (ingest goes on without this worker: nothing else would close it)
        raise
    return sock


def frames_pull(ctx: zmq.Context, runtime_dir: str, hwm: int, to: Remote | None = None,
                own: int | None = None) -> zmq.Socket:
    """A worker's end of the pipeline: connects (ipc, or tcp with ``to``), and reconnects by
    itself when ingest restarts. With ``own`` (``--route client``), to worker ``own``'s own
    pipeline instead of the shared one."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    name = FRAMES if own is None else worker_frames(own)
    _connect(sock, endpoint(runtime_dir, name), to.frames if to else "", to)
    return sock


def bus_pub(ctx: zmq.Context, runtime_dir: str, to: Remote | None = None,
            local: bool = False) -> zmq.Socket:
    """A publisher on the bus (of another machine with ``to``; with ``local`` as well on this
    machine's, as an ingest node's supervisor and ingest do: their heartbeats must not depend
    on the pool being there)."""
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, BUS_PUB_HWM)
    sock.setsockopt(zmq.LINGER, 200)
    _connect(sock, endpoint(runtime_dir, BUS_IN), to.bus if to else "", to, local)
    return sock


def bus_sub(ctx: zmq.Context, runtime_dir: str, *topics: bytes,
            hwm: int = BUS_SUB_HWM, conflate: bool = False,
            to: Remote | None = None, local: bool = False) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t)
    _connect(sock, endpoint(runtime_dir, BUS_OUT), to.bus_out if to else "", to, local)
    return sock


def drain(sock: zmq.Socket, unpack: Callable[[list], T], limit: int | None = None,
          copy: bool = True, malformed: Callable[[wire.WireError], None] | None = None
          ) -> Iterator[T]:
    """The messages waiting on ``sock`` now, each unpacked (an unpacker of :mod:`camstream.wire`),
    without blocking; at most ``limit`` read. A message that does not unpack is skipped, after
    ``malformed`` is told: a subscriber never stops for one bad message on a shared bus."""
    taken = 0
    while limit is None or taken < limit:
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
        taken += 1
        try:
            message = unpack(parts)
        except wire.WireError as e:
            if malformed is not None:
                malformed(e)
            continue
        yield message


def receive(sock: zmq.Socket, unpack: Callable[[list], T], copy: bool = True) -> T:
    """The next message on ``sock``, waiting for it, unpacked; WireError if it does not unpack
    (the caller decides whether that ends it)."""
    return unpack(sock.recv_multipart(copy=copy))


class Streamer:
    """The pool's front: the guide's **streamer** (PULL -> PUSH), in a thread. Its PULL binds
    the tcp frames endpoint that every ingest node's PUSH connects to (fair-queued between
    them); its PUSH binds the ipc frames endpoint that the pool's workers pull from, so they
    are the same workers as ``serve`` starts. It takes a frame only when a worker can take it
    and high-water marks stay tiny, so a full pool makes each ingest drop, never queue.

    A Python loop rather than ``zmq.proxy``: libzmq 4.3.5's proxy gave up with EAGAIN once the
    workers' queues were full (seen in the pool's first test run)."""

    def __init__(self, ctx: zmq.Context, runtime_dir: str, offer: Remote, hwm: int) -> None:
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, hwm)
        self.pull.setsockopt(zmq.LINGER, 0)
        offer.curve.serve_on(self.pull)
        self.pull.bind(offer.frames)
        self.push = ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, hwm)
        self.push.setsockopt(zmq.IMMEDIATE, 1)
        self.push.setsockopt(zmq.LINGER, 0)
        self.binds = IpcBinds()
        self.binds.bind(self.push, runtime_dir, FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pending = None
        checked = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - checked >= 1.0:  # in this thread: it owns the sockets
                    checked = time.monotonic()
                    self.binds.rebind()
                if pending is None:
                    if not self.pull.poll(100):
                        continue
                    pending = self.pull.recv_multipart(copy=False)
                if self.push.poll(100, zmq.POLLOUT):
                    try:
                        self.push.send_multipart(pending, copy=False, flags=zmq.NOBLOCK)
                        pending = None
                    except zmq.Again:
                        pass
        except zmq.ContextTerminated:
            pass
        finally:
            self.pull.close(0)
            self.push.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class BusProxy:
    """The bus: an XSUB/XPUB proxy run by libzmq in a thread (it holds no GIL while it runs).
    :meth:`check`, from its owner's loop, starts it again on fresh sockets when one of its
    socket files was removed."""

    def __init__(self, ctx: zmq.Context, runtime_dir: str, offer: Remote | None = None) -> None:
        self._ctx, self._runtime_dir, self._offer = ctx, runtime_dir, offer
        self._open()

    def _open(self) -> None:
        self._running = False
        self.xsub = self._ctx.socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.RCVHWM, BUS_PUB_HWM)
        self.xsub.setsockopt(zmq.LINGER, 0)
        self.xpub = self._ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, BUS_SUB_HWM)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.control = self._ctx.socket(zmq.PAIR)
        self._control_ep = f"inproc://bus-control-{id(self)}-{id(self.control)}"
        self.control.bind(self._control_ep)
        self.binds = IpcBinds()
        try:
            self.binds.bind(self.xsub, self._runtime_dir, BUS_IN)
            self.binds.bind(self.xpub, self._runtime_dir, BUS_OUT)
        except (zmq.ZMQError, OSError, rundir.RuntimeDirError):
            for sock in (self.xsub, self.xpub, self.control):
                sock.close(0)
            raise
        offer = self._offer
        if offer is not None:  # remote workers and ingest nodes; CURVE after the ipc binds
            for sock, tcp in ((self.xsub, offer.bus), (self.xpub, offer.bus_out)):
                offer.curve.serve_on(sock)
                sock.bind(tcp)
        self._thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._running = True

    def check(self) -> list[str]:
        """Socket files of the bus that were removed: if any, the proxy is started again on
        new sockets (peers reconnect by themselves; what was in transit is lost). Raises if
        it cannot bind them; the next call tries again."""
        gone = self.binds.gone() if self._running else ["(the bus is not bound)"]
        if not gone:
            return []
        if self._running:
            log.warning("bus endpoints %s were removed from the runtime directory: binding "
                        "the bus again", ", ".join(gone))
            left = [p for p in (endpoint(self._runtime_dir, n)[6:] for n in (BUS_IN, BUS_OUT))
                    if p not in gone]
            self.stop()
            # the old listeners unlink their files from libzmq's I/O thread: let them first
            deadline = time.monotonic() + 1.0
            while any(os.path.exists(p) for p in left) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.05)
        rundir.ensure(self._runtime_dir)
        self._open()
        self.start()
        return gone

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
        if not self._running:
            return
        self._running = False
        self.control.send(b"TERMINATE")
        self._thread.join(timeout=2)
        self.control.close(0)
