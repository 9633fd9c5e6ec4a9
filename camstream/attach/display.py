"""``camstream display``: attach to a running daemon and show each client's newest frame.

A **subscriber** in the bus's pub-sub pattern and nothing else: it connects ``bus_sub`` sockets
to the proxy's XPUB and never sends, so whatever it does (being slow, frozen by SIGSTOP, killed)
cannot reach ingest. A display that falls behind loses messages at its own small high-water
mark, and before drawing it drains everything waiting and keeps only the newest frame per
client, so it never shows a backlog. Join/leave events travel on a socket of their own with a
roomy high-water mark, so dropping frames never drops a "leave".

Two sinks for the same loop: windows (one per client, titled with the client's name, with an
overlay of name, fps and end-to-end latency), or with ``--snapshot DIR`` files
``DIR/<client>.jpg`` rewritten atomically once a second, for machines without a screen.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from camstream.attach import subscribe
from camstream.cli.args import (CliError, add_log_level, add_runtime_dir, positive_float,
                                require_opencv, runtime_dir_of)
from camstream.attach.subscribe import Frame, StreamRate, Subscription
from camstream.names import safe

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("camstream.display")

# cv2, numpy and zmq are imported where they are used: every camstream verb builds this
# module's flags, and only the display should pay for loading OpenCV.

FRAME_HWM = 8           # frames a display may hold unread; the proxy drops the rest for it
MAX_DRAIN = 10000       # messages read per turn at most, so the windows stay responsive
STALL = 1.0             # a turn this late means the display itself was stopped
TURN = 0.02             # seconds between turns when nothing arrives (Qt needs its events)
SNAPSHOT_EVERY = 1.0    # seconds between snapshot writes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``display`` verb's own flags (camstream.cli.display adds the web view's)."""
    add_runtime_dir(parser, port=True)
    parser.add_argument("--client", metavar="NAME",
                        help="show only this client's stream (default: every client)")
    parser.add_argument("--processed", action="store_true",
                        help="show the workers' output (their annotated frame, or the raw "
                        "frame with the result as text) instead of the raw frames")
    parser.add_argument("--snapshot", metavar="DIR",
                        help="no windows: write the newest frame of each client to "
                        "DIR/<client>.jpg once a second (atomically), with DIR/<client>.json "
                        "saying which frame it is; works without a screen. A client's files "
                        "stay when it leaves (its JSON then says \"left\": true)")
    parser.add_argument("--idle", type=positive_float, default=5.0, metavar="SECONDS",
                        help="close a client's window after this long without frames "
                        "(default: %(default)s)")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="exit when process PID exits (used by 'camstream serve -d')")
    add_log_level(parser)


def run(args: argparse.Namespace) -> int:
    """Check the edges (a daemon, a screen), then show frames until detached."""
    from camstream import proc

    args.runtime_dir = runtime_dir_of(args)
    if args.client is not None:
        from camstream.users import UsersError, check_name
        try:
            check_name(args.client)
        except UsersError as e:
            raise CliError(f"--client: {e}") from None
    check_daemon(args.runtime_dir)
    require_opencv(gui=not args.snapshot)
    if args.snapshot:
        try:
            Path(args.snapshot).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"--snapshot {args.snapshot}: {e.strerror}") from None
    else:
        check_screen()
    if args.parent_pid:
        proc.become("display", args.parent_pid)
    else:
        import setproctitle
        setproctitle.setproctitle("camstream: display")
    proc.setup_logging(args.log_level)

    sink = Snapshots(Path(args.snapshot)) if args.snapshot else Windows()
    display = Display(args.runtime_dir, sink, client=args.client, processed=args.processed,
                      idle=args.idle)
    signal.signal(signal.SIGTERM, lambda *_: display.detach())
    try:
        display.run()
    except KeyboardInterrupt:
        pass
    finally:
        display.close()
    return 0


# -- the edges ----------------------------------------------------------------------------------

def check_daemon(runtime_dir: str) -> None:
    """One line if no daemon serves the bus here: no socket file, or a stale one."""
    try:
        subscribe.check_daemon(runtime_dir)
    except subscribe.NoDaemon as e:
        raise CliError(str(e)) from None


def check_screen() -> None:
    """Fail in one line where Qt would abort the process: no screen, or one we cannot open."""
    x11 = os.environ.get("DISPLAY")
    if not x11 and not os.environ.get("WAYLAND_DISPLAY"):
        raise CliError("no screen to show windows on (neither DISPLAY nor WAYLAND_DISPLAY is "
                       "set); use --snapshot DIR to write the newest frames to files instead")
    if not x11:
        return  # Wayland only: Qt finds its own way, or says why
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    lib = ctypes.util.find_library("X11")
    if lib is None:
        return
    xlib = ctypes.CDLL(lib)
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = xlib.XOpenDisplay(x11.encode())
    if not handle:
        raise CliError(f"cannot open the screen DISPLAY={x11}; use --snapshot DIR to write "
                       "the newest frames to files instead")
    xlib.XCloseDisplay(handle)


# -- what the display knows about each client ---------------------------------------------------

@dataclass
class Stream:
    """One client's newest frame (not yet decoded) and the rates shown in its overlay."""

    name: str
    frame: Frame | None = None
    fresh: bool = False               # newer than what the sink last showed
    # monotonic time of the newest frame; a new stream's idle time starts when it appears
    last_arrival: float = field(default_factory=time.monotonic)
    rate: StreamRate = field(default_factory=StreamRate)

    @property
    def fps(self) -> float | None:
        return self.rate.fps

    @property
    def result(self) -> dict | None:
        return self.frame.result if self.frame is not None else None

    def take(self, frame: Frame) -> None:
        now = time.monotonic()
        self.rate.update(frame.seq, now)
        self.frame = frame
        self.fresh = True
        self.last_arrival = now


def render(stream: Stream) -> np.ndarray | None:
    """Decode the newest frame (or the worker's picture) and draw the overlay on it."""
    frame = stream.frame
    image = frame.image if frame is not None else None
    if image is None:
        return None
    latency_ms = (time.time_ns() - frame.recv_ns) / 1e6
    fps = f"{stream.fps:.1f} fps" if stream.fps is not None else "-- fps"
    lines = [f"{stream.name}  {fps}  {latency_ms:.0f} ms"]
    if frame.result is not None:
        lines += [f"{k}: {v}" for k, v in frame.result.items() if k != "done_ns"]
    draw_overlay(image, lines)
    return image


def draw_overlay(image: np.ndarray, lines: list[str]) -> None:
    """White text on a black band at the top right (senders often stamp the top left)."""
    import cv2

    height, width = image.shape[:2]
    scale = max(0.35, min(1.0, width / 800))
    thick = 1 if scale < 0.8 else 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, th), base = cv2.getTextSize("Ag", font, scale, thick)
    step = th + base + 4
    box_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in lines) + 8
    left = max(0, width - box_w)
    cv2.rectangle(image, (left, 0), (width - 1, min(height - 1, step * len(lines) + 2)),
                  (0, 0, 0), -1)
    for i, text in enumerate(lines):
        cv2.putText(image, text, (left + 4, step * (i + 1) - base), font, scale,
                    (255, 255, 255), thick, cv2.LINE_AA)


# -- the loop -----------------------------------------------------------------------------------

class Display:
    """Drain the bus, keep the newest frame per client, hand it to the sink; close a client's
    view when it leaves or goes quiet."""

    def __init__(self, runtime_dir: str, sink: Windows | Snapshots, client: str | None = None,
                 processed: bool = False, idle: float = 5.0) -> None:
        self.sink = sink
        self.processed = processed
        self.idle = idle
        self.streams: dict[str, Stream] = {}
        self.left_ns: dict[str, int] = {}   # frames received before a leave are stale
        self.dismissed: set[str] = set()    # windows the user closed, until the client rejoins
        self.detached = False
        self.bus = Subscription(runtime_dir, client, raw=True, processed=processed,
                                events=True, hwm=FRAME_HWM, check=False)
        log.info("attached to %s%s", runtime_dir, f" (client {client})" if client else "")

    def detach(self) -> None:
        self.detached = True

    def run(self) -> None:
        last_turn = time.monotonic()
        while not self.detached:
            self.bus.poll(TURN)
            now = time.monotonic()
            if now - last_turn > STALL:  # we were stopped (SIGSTOP, a suspended machine):
                for stream in self.streams.values():  # not the clients' silence, ours
                    stream.last_arrival += now - last_turn
            last_turn = now
            self.read_events()
            self.read_frames()
            self.read_events()  # a leave that came while draining frames wins over them
            self.expire()
            for name in self.sink.closed_by_user():
                self.dismissed.add(name)
                self.streams.pop(name, None)
                log.info("%s: window closed by the user", name)
                if not self.sink.open_count():
                    log.info("last window closed: detaching")
                    return
            self.sink.show(s for s in self.streams.values()
                           if s.fresh and s.name not in self.dismissed)
            if self.sink.quit_requested():
                log.info("q pressed: detaching")
                return

    def read_frames(self) -> None:
        for frame in self.bus.drain(MAX_DRAIN):
            if self.processed and not frame.processed:
                continue  # kept by the subscription, to give a result its picture
            name = frame.client
            stale = self.left_ns.get(name)
            if stale is not None:
                if frame.recv_ns <= stale:
                    continue
                del self.left_ns[name]
            stream = self.streams.get(name)
            if stream is None:
                stream = self.streams[name] = Stream(name)
                log.info("%s: showing its stream", name)
            stream.take(frame)

    def read_events(self) -> None:
        for event in self.bus.events():
            if event.kind == "leave":
                self.left_ns[event.client] = time.time_ns()
                self.forget(event.client, "left")
            elif event.kind == "join":
                self.dismissed.discard(event.client)

    def expire(self) -> None:
        now = time.monotonic()
        for name, stream in list(self.streams.items()):
            if now - stream.last_arrival > self.idle:
                self.forget(name, f"no frames for {self.idle:g} s")

    def forget(self, name: str, why: str) -> None:
        if self.streams.pop(name, None) is not None:
            log.info("%s: closing its view (%s)", name, why)
        self.sink.close(name)

    def close(self) -> None:
        self.sink.shutdown()
        self.bus.close()


# -- the sinks ----------------------------------------------------------------------------------

def hand_x_events_to_qt() -> None:
    """Make Xlib leave the X events to Qt, as Qt asks it to; call before the first window.

    OpenCV's wheel bundles its own libX11-xcb, built from an older libX11 than the system's
    libX11 it runs with, and the two disagree on where Xlib keeps its event-queue owner: Qt's
    ``XSetEventQueueOwner(dpy, XCBOwnsEventQueue)`` writes beside it (offset 0x40 for 0x48
    with libX11 1.8), so Xlib still thinks it owns the queue. Each Xlib call Qt then makes
    (its ``XFlush`` after every batch of events, ``XSetTextProperty`` for a title) pulls
    whatever X has sent but Qt's reader thread has not yet read into Xlib's own queue, which
    nobody reads. Under CPU load that catches a new window's MapNotify: Qt never counts the
    window as shown and never paints it (a black window that stays black), and it can as
    well swallow a "q", an expose or a close. Loading the system's libX11-xcb globally first
    binds Qt to the copy that matches the libX11 in use.
    """
    path = ctypes.util.find_library("X11-xcb")
    if path is None:
        return
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    except OSError as e:
        log.debug("could not load %s: %s", path, e)


class Windows:
    """One resizable OpenCV window per client, titled with the client's name."""

    def __init__(self) -> None:
        hand_x_events_to_qt()
        self.open: set[str] = set()
        self.placed = 0                 # where the next new window goes: a cursor over
        self.x = self.y = self.row_height = 0   # rows of three, back to the top after six
        self.quit = False

    def show(self, streams) -> None:
        import cv2
        for stream in streams:
            stream.fresh = False
            image = render(stream)
            if image is None:
                continue
            if stream.name not in self.open:
                # pixels 1:1, zoom from Qt's toolbar (GUI_EXPANDED: GUI_NORMAL windows stay
                # black under Xvfb)
                cv2.namedWindow(stream.name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_EXPANDED)
                # side by side, three to a row; without a move Qt never paints a window
                # that no window manager placed (Xvfb)
                height, width = image.shape[:2]
                if self.placed % 3 == 0:
                    self.x, self.y = 0, (self.y + self.row_height if self.placed else 0)
                    self.row_height = 0
                cv2.moveWindow(stream.name, self.x, self.y)
                self.x += max(400, width) + 20
                self.row_height = max(self.row_height, height + 80)
                self.placed = (self.placed + 1) % 6
                self.open.add(stream.name)
            cv2.imshow(stream.name, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q")):
            self.quit = True

    def closed_by_user(self) -> list[str]:
        import cv2
        closed = [name for name in self.open
                  if cv2.getWindowProperty(name, cv2.WND_PROP_VISIBLE) < 1]
        for name in closed:
            self.open.discard(name)
            try:
                cv2.destroyWindow(name)
            except cv2.error:
                pass
        return closed

    def open_count(self) -> int:
        return len(self.open)

    def quit_requested(self) -> bool:
        return self.quit

    def close(self, name: str) -> None:
        import cv2
        if name in self.open:
            self.open.discard(name)
            cv2.destroyWindow(name)
            cv2.waitKey(1)

    def shutdown(self) -> None:
        import cv2
        if self.open:
            cv2.destroyAllWindows()
            cv2.waitKey(1)
        self.open.clear()


class Snapshots:
    """Headless: ``DIR/<client>.jpg`` (the newest frame) and ``DIR/<client>.json`` (which
    frame it is), each replaced atomically once a second. When the client leaves they stay
    (the last picture is what a user wants to look at), and the JSON says ``"left": true``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.next_write = 0.0
        self.written: set[str] = set()

    def show(self, streams) -> None:
        now = time.monotonic()
        if now < self.next_write:
            return
        self.next_write = now + SNAPSHOT_EVERY
        for stream in streams:
            stream.fresh = False
            frame = stream.frame
            if frame.result is None:
                jpeg = frame.jpeg_bytes()  # the frame as sent: no re-encoding
            else:
                import cv2
                image = render(stream)
                if image is None:
                    continue
                jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            info = {"client": stream.name, "seq": frame.seq, "session": frame.session,
                    "recv_ns": frame.recv_ns, "written_ns": time.time_ns(),
                    "latency_ms": round((time.time_ns() - frame.recv_ns) / 1e6, 1),
                    "fps": None if stream.fps is None else round(stream.fps, 2)}
            if frame.result is not None:
                info["result"] = frame.result
            self._replace(f"{safe(stream.name)}.jpg", jpeg)
            self._replace(f"{safe(stream.name)}.json", json.dumps(info).encode())
            self.written.add(stream.name)

    def _replace(self, filename: str, data: bytes) -> None:
        tmp = self.folder / f".{filename}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / filename)

    def close(self, name: str) -> None:
        if name in self.written:
            self.written.discard(name)
            path = self.folder / f"{safe(name)}.json"
            try:
                info = json.loads(path.read_bytes())
            except (OSError, ValueError):
                return
            info.update(left=True, left_ns=time.time_ns())
            self._replace(path.name, json.dumps(info).encode())

    def closed_by_user(self) -> list[str]:
        return []

    def open_count(self) -> int:
        return len(self.written)

    def quit_requested(self) -> bool:
        return False

    def shutdown(self) -> None:
        pass
