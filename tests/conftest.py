"""Test helpers: real daemons on 127.0.0.1, started and stopped by pid, with bounded waits."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import requests
import socketio

ROOT = Path(__file__).resolve().parent.parent


def free_port(span: int = 1) -> int:
    """A port P such that P .. P+span-1 are free on 127.0.0.1 (``--worker-endpoint`` takes P
    and the bus the next two). Drawn below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) is also a source port for any outgoing connection, which can take it
    between this check and the daemon's bind ("Address already in use", seen in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = _PORTS.randrange(10000, low - span)
        socks = []
        try:
            for p in range(port, port + span):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {span} free consecutive ports below {low}")


_PORTS = random.Random(os.getpid())


def terminate(proc: subprocess.Popen, timeout: float = 5) -> int:
    """Stop a process a test started, by its pid: SIGTERM, a bounded wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def make_jpeg(width: int = 320, height: int = 240, quality: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (9, 9), 0)
    cv2.putText(img, str(seed), (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.5,
                (255, 255, 255), 3)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def proc_title(p: psutil.Process) -> str:
    """The title a process gave itself, as ps shows it (setproctitle pads with spaces)."""
    return " ".join(p.cmdline()).strip()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (requests.RequestException, KeyError, ValueError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Daemon:
    """``camstream serve`` in a subprocess of its own."""

    def __init__(self, tmp: Path, *args: str, workers: int = 2, env: dict | None = None,
                 port: int | None = None):
        self.port = port or free_port()  # a port: the daemon that ran there before is back
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = tmp / f"run-{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        for n in range(2, 100):  # each start on one port logs to a file of its own
            if not self.log_path.exists():
                break
            self.log_path = tmp / f"serve-{self.port}-{n}.log"
        self.workers = workers
        self.argv = [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
                     "-p", str(self.port), "-w", str(workers),
                     "--runtime-dir", str(self.runtime_dir), *args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=2).json()

    def wait_ready(self, timeout: float = 30) -> dict:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.output()}")
            h = self.health()
            return h if h["workers"]["alive"] >= self.workers else None
        return wait_for(ready, timeout, what="the daemon to be ready")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def child(self, title: str) -> psutil.Process | None:
        """The child process titled ``camstream: <title>``, if there is one now."""
        for p in self.children():
            try:
                if proc_title(p) == f"camstream: {title}":
                    return p
            except psutil.Error:
                pass
        return None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def shutdown(self) -> None:
        """Stop the daemon, then kill any child it left behind (a test must leave nothing)."""
        leftovers = self.children()
        self.stop()
        for p in leftovers:
            if p.is_running():
                p.kill()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in self.children():
                    p.kill()
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def daemons(tmp_path):
    """Start daemons with ``daemons(*args, workers=N)``; all are stopped after the test."""
    started: list[Daemon] = []

    def start(*args: str, workers: int = 2, ready: bool = True, env: dict | None = None):
        d = Daemon(tmp_path, *args, workers=workers, env=env)
        started.append(d)
        if ready:
            d.wait_ready()
        return d
    yield start
    for d in started:
        d.shutdown()


@pytest.fixture
def clients():
    """python-socketio clients, disconnected after the test."""
    made: list[socketio.Client] = []

    def connect(url: str, username: str | None = "alice", password: str = "",
                transports=("websocket",), auth: bool = True, **kw) -> socketio.Client:
        sio = socketio.Client(reconnection=False, **kw)
        made.append(sio)
        sio.connect(url, transports=list(transports), wait_timeout=10,
                    auth={"username": username, "password": password}
                    if auth and username is not None else None)
        return sio
    yield connect
    for sio in made:
        if sio.connected:
            sio.disconnect()


def make_users(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "users"
    for name, password in users.items():
        subprocess.run([sys.executable, "-m", "camstream", "users", "add", name,
                        "--password-stdin", "--users", str(path)],
                       input=password + "\n", text=True, check=True, capture_output=True,
                       timeout=30)
    return path
