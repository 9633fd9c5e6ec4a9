"""A streaming client in a thread: a python-socketio client that sends frames with acks at
a steady rate, reconnects by itself (unless told not to), and records every answer."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import socketio

from tests.helpers import make_jpeg


class Streamer:
    def __init__(self, url: str, name: str, fps: float = 20.0, password: str = "",
                 frames: list[bytes] | None = None, transports=("websocket",),
                 reconnection: dict | bool | None = None,
                 frame: Callable[[int], bytes] | None = None, timeout: float = 5,
                 catch_up: bool = False, failures_as_acks: bool = False) -> None:
        """``reconnection``: python-socketio's reconnection options (default: back within
        0.2-1 s); ``{}`` keeps the library's own (1-5 s); ``False``: none, so that a dropped
        connection shows as errors.
        ``frame``: a callable giving the n-th frame (default: ``frames`` in turn), for a test
        that must tell one frame from another; ``sent[n]`` is when it left.
        ``catch_up``: keep to a fixed schedule, a slow ack made up by shorter waits after it,
        for a test that counts frames over a window.
        ``failures_as_acks``: a failed call goes into ``acks`` too, as ``{"accepted": False,
        "reason": ...}``, so that a check over ``acks`` sees it."""
        self.url, self.name, self.fps, self.password = url, name, fps, password
        self.frames = frames or [make_jpeg(seed=i) for i in range(8)]
        self.frame = frame or (lambda n: self.frames[n % len(self.frames)])
        self.timeout, self.catch_up, self.failures_as_acks = timeout, catch_up, failures_as_acks
        self.acks: list[dict] = []
        self.sent: dict[int, float] = {}
        self.errors = 0
        self.disconnects = 0
        self._stop = threading.Event()
        self.transports = list(transports)
        self.connects = 0
        if reconnection is False:
            options = {"reconnection": False}
        elif reconnection is None:
            options = {"reconnection": True, "reconnection_delay": 0.2,
                       "reconnection_delay_max": 1}
        else:
            options = {"reconnection": True, **reconnection}
        self.sio = socketio.Client(**options)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_connect(self, *args) -> None:
        self.connects += 1

    def _on_disconnect(self, *args) -> None:
        if not self._stop.is_set():  # not the one stop() asks for
            self.disconnects += 1

    def start(self) -> Streamer:
        self.sio.connect(self.url, transports=self.transports, wait_timeout=10,
                         auth={"username": self.name, "password": self.password})
        self.thread.start()
        return self

    def _run(self) -> None:
        n = 0
        due = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            self.sent[n] = started
            try:
                ack = self.sio.call("frame", ({}, self.frame(n)), timeout=self.timeout)
                self.acks.append(ack)
            except socketio.exceptions.SocketIOError as e:
                self.errors += 1
                if self.failures_as_acks:
                    self.acks.append({"accepted": False, "reason": repr(e)})
                time.sleep(0.1)
            n += 1
            if self.fps:
                due = (due if self.catch_up else started) + 1.0 / self.fps
                self._stop.wait(max(0.0, due - time.monotonic()))

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.acks if a.get("accepted"))

    @property
    def failed(self) -> int:
        """Frames refused or calls that failed."""
        return len(self.acks) - self.accepted + (0 if self.failures_as_acks else self.errors)

    def stop(self) -> None:
        self._stop.set()
        if self.thread.ident is not None:  # started (a failed connect starts nothing)
            self.thread.join(timeout=self.timeout + 5)
        if self.sio.connected:
            self.sio.disconnect()


class AsyncStreamer:
    """python-socketio's asyncio client (``AsyncClient``, on aiohttp) in a thread of its own
    with its event loop: it logs in with ``auth`` at connect and sends ``frame`` with an ack at
    a steady rate, with the library's default reconnection (1 s doubling to 5 s)."""

    def __init__(self, url: str, name: str, fps: float = 10.0,
                 transports=("websocket",)) -> None:
        self.url, self.name, self.fps, self.transports = url, name, fps, list(transports)
        self.frame = make_jpeg(seed=1)
        self.acks: list[dict] = []
        self.connects = 0
        self.disconnects = 0
        self.failed: BaseException | None = None
        self._stopping = False
        self._loop = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AsyncStreamer:
        self.thread.start()
        if not self._ready.wait(15) or self.failed:
            raise AssertionError(f"{self.name} did not connect: {self.failed!r}")
        return self

    def _run(self) -> None:
        import asyncio
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 (reported by start() or the test)
            self.failed = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        import asyncio

        import aiohttp
        http = aiohttp.ClientSession()  # ours, so that it is closed at the end
        sio = socketio.AsyncClient(http_session=http)
        self.sio = sio

        @sio.event
        async def connect():
            self.connects += 1

        @sio.event
        async def disconnect(*args):
            if not self._stopping:
                self.disconnects += 1
        await sio.connect(self.url, transports=self.transports, wait_timeout=10,
                          auth={"username": self.name, "password": ""})
        self._ready.set()
        while not self._stopping:
            if sio.connected:
                try:
                    self.acks.append(await sio.call("frame", ({}, self.frame), timeout=5))
                except socketio.exceptions.SocketIOError:
                    pass
            await asyncio.sleep(1 / self.fps)
        await sio.disconnect()
        await http.close()

    def stop(self) -> None:
        self._stopping = True
        self.thread.join(timeout=10)


def send_frames(sio: socketio.Client, frames: list[bytes], fps: float | None = None,
                timeout: float = 10) -> list[dict]:
    """Each frame as a ``frame`` event (header ``{"n": index}``) waiting for its ack, paced at
    ``fps`` when given; the acks in order."""
    acks = []
    for n, jpeg in enumerate(frames):
        acks.append(sio.call("frame", ({"n": n}, jpeg), timeout=timeout))
        if fps:
            time.sleep(1 / fps)
    return acks
