"""Frames in your own script: ``camstream.frames()``, the public way onto a running daemon's bus.

::

    import camstream
    for frame in camstream.frames():          # attaches to the running daemon's bus
        print(frame.client, frame.seq, frame.image.shape, frame.result)

A **subscriber** in the bus's pub-sub pattern, like ``camstream display``: it connects to the
proxy's XPUB in the same runtime directory (``--runtime-dir``'s default; readable by the
daemon's group, as the display needs) and never sends, so a slow or frozen script only loses
messages at its own high-water mark; ingest never waits for it. Leaving the loop (``break``,
an exception, the end of the script) closes the sockets: the daemon does not notice.

This module is the one reader of bus frame messages: the X display, the web view and
``camstream tap`` all take their frames from :class:`Subscription`.
"""
from __future__ import annotations

import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camstream import bus, wire

if TYPE_CHECKING:
    import numpy as np

FRAME_HWM = 64          # frames a subscriber may hold unread; the proxy drops the rest for it
EVENT_HWM = 10000       # join/leave are tiny and must not be lost with the frames
RECENT_RAW = 16         # raw frames kept per client to give a result without a picture one


class NoDaemon(RuntimeError):
    """No camstream daemon serves a bus in this runtime directory."""


def check_daemon(runtime_dir: str) -> None:
    """Raise :class:`NoDaemon` (one readable line) when no daemon serves the bus here: no
    socket file, or a stale one."""
    path = Path(runtime_dir) / bus.BUS_OUT
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise FileNotFoundError
    except PermissionError:
        raise NoDaemon(f"cannot reach the camstream daemon in {runtime_dir}: permission "
                       "denied (join the daemon's group, or pass --runtime-dir)") from None
    except OSError:
        raise NoDaemon(f"no camstream daemon is running in {runtime_dir} (no {bus.BUS_OUT} "
                       "socket there); start 'camstream serve', or pass its --port or "
                       "--runtime-dir") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except PermissionError:
            raise NoDaemon(f"cannot reach the camstream daemon in {runtime_dir}: permission "
                           f"denied on {bus.BUS_OUT} (join the daemon's group)") from None
        except OSError:
            raise NoDaemon(f"no camstream daemon is running in {runtime_dir} (its "
                           f"{bus.BUS_OUT} socket is stale); start 'camstream serve', or pass "
                           "its --port or --runtime-dir") from None


@dataclass
class Frame:
    """One frame off the bus.

    ``processed`` is False for a frame as ingest accepted it, True for a worker's output; then
    ``result`` is the processor's result dict and ``annotated`` says whether ``jpeg`` is the
    worker's own picture (else it is the raw frame the result is about, or the newest raw
    frame seen, when raw frames are received too: results that come before any raw frame of
    their client, just after attaching, are skipped then, so every frame has a picture).
    ``image`` is decoded from ``jpeg`` on first use (BGR, as OpenCV makes it), or None when
    there are no bytes or they are not a JPEG that OpenCV can decode (a client sent garbage).
    """

    client: str
    session: str
    seq: int
    recv_ns: int                      # time.time_ns() when ingest received it
    jpeg: Any                         # bytes-like (a zmq.Frame's buffer), or b"" when none
    processed: bool = False
    result: dict | None = None
    annotated: bool = False
    arrived_ns: int = field(default_factory=time.time_ns)
    _image: Any = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray | None:
        if self._image is None and len(self.jpeg):
            import cv2
            import numpy as np
            self._image = cv2.imdecode(np.frombuffer(memoryview(self.jpeg), np.uint8),
                                       cv2.IMREAD_COLOR)
        return self._image

    @property
    def latency_ms(self) -> float:
        """From ingest receiving the frame to this process receiving it (or its result)."""
        return (self.arrived_ns - self.recv_ns) / 1e6

    def jpeg_bytes(self) -> bytes:
        return bytes(memoryview(self.jpeg))


@dataclass(frozen=True)
class Event:
    """A client joined or left (``kind`` is "join" or "leave")."""

    client: str
    kind: str


class StreamRate:
    """A stream's frames a second, from ingest's sequence numbers (so frames this subscriber
    lost on the bus still count), updated about once a second."""

    def __init__(self) -> None:
        self.fps: float | None = None
        self._anchor: tuple[float, int] | None = None   # (monotonic time, seq)

    def update(self, seq: int, now: float) -> None:
        if self._anchor is None or seq < self._anchor[1]:
            self._anchor = (now, seq)
        elif now - self._anchor[0] >= 1.0:
            self.fps = (seq - self._anchor[1]) / (now - self._anchor[0])
            self._anchor = (now, seq)


def decode(message: wire.Frame | wire.Result,
           recent_raw: dict[str, dict[int, Any]] | None = None) -> Frame:
    """A Frame from a bus message (unpacked by :mod:`camstream.wire`): a raw frame or a
    worker's result. ``recent_raw`` (client -> seq -> jpeg) is filled with raw frames and gives
    a processed frame without a picture the raw one it is about."""
    header = message.header
    if isinstance(message, wire.Frame):
        if recent_raw is not None:
            kept = recent_raw.setdefault(header.client, {})
            kept[header.seq] = message.jpeg
            while len(kept) > RECENT_RAW:
                del kept[next(iter(kept))]
        return Frame(header.client, header.session, header.seq, header.recv_ns, message.jpeg)
    try:
        result = message.result
    except wire.WireError:  # not a worker's (they publish JSON objects): kept, marked
        result = {"result": "not a JSON object"}
    jpeg = message.jpeg
    annotated = message.annotated
    if not annotated and recent_raw is not None:  # the raw frame it is about, or
        kept = recent_raw.get(header.client, {})   # the newest one seen
        jpeg = kept.get(header.seq) or next(reversed(kept.values()), b"")
    return Frame(header.client, header.session, header.seq, header.recv_ns, jpeg,
                 processed=True, result=result, annotated=annotated)


def _picture(parts: list) -> wire.Frame | wire.Result:
    """A raw frame or a result: the messages a frame subscription receives."""
    message = wire.unpack(parts)
    if not isinstance(message, (wire.Frame, wire.Result)):
        raise wire.WireError(f"a {type(message).__name__} message among the frames")
    return message


class Subscription:
    """Frames (and, with ``events=True``, join/leave events) of a running daemon: the one
    serving ``port`` (its default runtime directory, as ``camstream serve -p PORT`` uses), or
    the one in ``runtime_dir``.

    ``client``: a name or names to receive (default: every client). ``raw`` and
    ``processed``: which kinds of frame. ``hwm``: frames held unread before the bus drops the
    oldest for this subscriber. Iterate it, or poll it (``poll``, ``drain``, ``events``) from a
    loop of your own; ``close()`` (or leaving a ``with`` block) detaches.
    """

    def __init__(self, runtime_dir: str | None = None, client: str | Iterable[str] | None = None,
                 raw: bool = True, processed: bool = True, events: bool = False,
                 hwm: int = FRAME_HWM, check: bool = True, port: int = 8080) -> None:
        import zmq

        from camstream.rundir import default
        if not raw and not processed:
            raise ValueError("frames(): raw=False and processed=False leaves nothing to receive")
        self.runtime_dir = runtime_dir or default(port)
        if check:
            check_daemon(self.runtime_dir)
        names = [client] if isinstance(client, str) else list(client or [])
        kinds = ([wire.RAW] if raw else []) + ([wire.PROCESSED] if processed else [])
        topics = [wire.topic(k, n) for k in kinds for n in names] if names else kinds
        self.raw = raw
        self.recent_raw: dict[str, dict[int, Any]] | None = {} if raw and processed else None
        self.ctx = zmq.Context()
        self.frames_sub = bus.bus_sub(self.ctx, self.runtime_dir, *topics, hwm=hwm)
        self.poller = zmq.Poller()
        self.poller.register(self.frames_sub, zmq.POLLIN)
        self.events_sub = None
        if events:
            event_topics = [wire.topic(wire.EVENTS, n) for n in names] or [wire.EVENTS]
            self.events_sub = bus.bus_sub(self.ctx, self.runtime_dir, *event_topics,
                                          hwm=EVENT_HWM)
            self.poller.register(self.events_sub, zmq.POLLIN)

    def poll(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: forever) for a frame or an event."""
        return bool(self.poller.poll(None if timeout is None else timeout * 1000))

    def drain(self, limit: int = 10000) -> Iterator[Frame]:
        """The frames waiting now, without blocking (at most ``limit`` messages read)."""
        for message in bus.drain(self.frames_sub, _picture, limit, copy=False):
            frame = decode(message, self.recent_raw)
            if not (frame.processed or self.raw):
                continue
            if frame.processed and not len(frame.jpeg) and self.recent_raw is not None:
                continue  # a result from before we attached: no raw frame of it to show yet
            yield frame

    def events(self) -> Iterator[Event]:
        """The join/leave events waiting now, without blocking."""
        if self.events_sub is None:
            return
        for event in bus.drain(self.events_sub, wire.Event.unpack):
            yield Event(event.name, event.kind)

    def next(self, timeout: float | None = None) -> Frame | None:
        """The next frame, waiting up to ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for frame in self.drain(limit=1):
                return frame
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.frames_sub.poll(None if left is None else max(1, int(left * 1000)))

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.next()
            if frame is not None:
                yield frame

    def close(self) -> None:
        if not self.ctx.closed:
            self.ctx.destroy(linger=0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frames(client: str | Iterable[str] | None = None, *, raw: bool = True,
           processed: bool = True, port: int = 8080, runtime_dir: str | None = None,
           timeout: float | None = None) -> Iterator[Frame]:
    """Yield the frames of a running daemon, newest first-come, until the loop ends.

    ``client``: only this name (or these names). ``raw``/``processed``: which kinds (a
    processed frame carries ``result``; its ``image`` is the worker's annotated picture or the
    raw frame it is about). ``port``: the daemon's port, which names its default runtime
    directory (as ``camstream display -p PORT`` finds it); ``runtime_dir``: its
    ``--runtime-dir`` instead.
    ``timeout``: stop after this many seconds without a frame (default: wait forever).
    Raises :class:`NoDaemon` when no daemon is running there.
    """
    sub = Subscription(runtime_dir, client, raw=raw, processed=processed, port=port)
    try:
        while True:
            frame = sub.next(timeout)
            if frame is None:
                return
            yield frame
    finally:
        sub.close()
