"""A streaming client in a thread: a python-socketio client that sends frames with acks at
a steady rate, reconnects by itself, and records every answer."""
from __future__ import annotations

import threading
import time

import socketio

from tests.helpers import make_jpeg


class Streamer:
    def __init__(self, url: str, name: str, fps: float = 20.0, password: str = "",
                 frames: list[bytes] | None = None, transports=("websocket",),
                 reconnection: dict | None = None) -> None:
        """``reconnection``: python-socketio's reconnection options (default: back within
        0.2-1 s); ``{}`` keeps the library's own (1-5 s)."""
        self.url, self.name, self.fps, self.password = url, name, fps, password
        self.frames = frames or [make_jpeg(seed=i) for i in range(8)]
        self.acks: list[dict] = []
        self.errors = 0
        self.disconnects = 0
        self._stop = threading.Event()
        self.transports = list(transports)
        self.connects = 0
        self.sio = socketio.Client(reconnection=True, **(
            {"reconnection_delay": 0.2, "reconnection_delay_max": 1}
            if reconnection is None else reconnection))
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
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ack = self.sio.call("frame", ({}, self.frames[n % len(self.frames)]), timeout=5)
                self.acks.append(ack)
            except socketio.exceptions.SocketIOError:
                self.errors += 1
                time.sleep(0.1)
            n += 1
            if self.fps:
                self._stop.wait(max(0.0, 1.0 / self.fps - (time.monotonic() - started)))

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.acks if a.get("accepted"))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
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
