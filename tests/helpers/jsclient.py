"""Helpers for the legacy-revision tests: the real JS socket.io clients driven through
tests/js/client.js (run tests/setup.sh once to install them), JPEG frame files, and daemons
shared by the tests of one module (a daemon start costs seconds on 2 cores)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.helpers import Daemon, make_jpeg, make_users

JS_DIR = Path(__file__).resolve().parent.parent / "js"
CLIENT_JS = JS_DIR / "client.js"


def js_client(url: str, client: str = "2", user: str = "alice", password: str = "",
              frames: Path | None = None, count: int = 0, fps: float = 10, mode: str = "default",
              hold: float = 0, timeout: float = 30, real_ip: str = "",
              insecure: bool = False, auth: bool = False) -> subprocess.Popen:
    """Start client.js (``client`` "2" or "4"); ``mode``: default, websocket, polling, b64;
    ``insecure``: accept a self-signed TLS certificate; ``auth``: log in with the connect
    (4.x) instead of the ``authenticate`` event."""
    if not (JS_DIR / "node_modules").is_dir():
        raise AssertionError("the JS clients are not installed: run tests/setup.sh")
    argv = ["node", str(CLIENT_JS), "--client", client, "--url", url, "--user", user,
            "--password", password, "--count", str(count), "--fps", str(fps),
            "--hold", str(hold), "--timeout", str(timeout)]
    if frames is not None:
        argv += ["--frames", str(frames)]
    if real_ip:  # behind nginx with realip: the address ip_hash sees
        argv += ["--real-ip", real_ip]
    if insecure:
        argv.append("--insecure")
    if auth:
        argv.append("--auth")
    if mode == "websocket":
        argv.append("--websocket")
    elif mode == "polling":
        argv.append("--polling")
    elif mode == "b64":
        argv += ["--polling", "--b64"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def js_result(proc: subprocess.Popen, timeout: float = 40) -> tuple[int, dict]:
    """Wait (bounded) for a client.js run: its exit status and JSON summary line."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"client.js did not finish in {timeout} s: {out} {err}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"client.js printed no summary (exit {proc.returncode}): {err}")
    return proc.returncode, json.loads(lines[-1])


class JsClients:
    """``start(...)`` client.js runs (arguments of :func:`js_client`), ``result(proc)`` one;
    runs still going when the test ends are killed."""

    result = staticmethod(js_result)

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args, **kw) -> subprocess.Popen:
        p = js_client(*args, **kw)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture
def js():
    clients = JsClients()
    yield clients
    clients.kill_all()


@pytest.fixture(scope="session")
def jpeg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "one.jpg"
    path.write_bytes(make_jpeg(320, 240, 80))
    return path


@pytest.fixture(scope="session")
def app_frames(tmp_path_factory) -> Path:
    """What the app sends: 160x120 up to 1280x960, JPEG quality 100."""
    folder = tmp_path_factory.mktemp("app-frames")
    for i, (w, h) in enumerate([(160, 120), (640, 480), (1280, 960), (320, 240)]):
        (folder / f"{i:02d}.jpg").write_bytes(make_jpeg(w, h, 100, seed=i))
    return folder


def _shared_daemon(tmp: Path, *args: str):
    d = Daemon(tmp, *args, workers=2)
    try:
        d.wait_ready()
        yield d
    finally:
        d.shutdown()


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory):
    """``serve`` without --auth, with a 1 MiB frame limit (so oversize tests stay small) and
    heartbeats of 2 + 2 s (so a silent client is dropped within a test's patience)."""
    yield from _shared_daemon(tmp_path_factory.mktemp("open"), "--max-frame-size", "1MiB",
                              "--ping-interval", "2", "--ping-timeout", "2")


USERS = {"alice": "wonderland", "bob": "builder", "carol": "singer", "dave": "diver"}


@pytest.fixture(scope="module")
def auth_daemon(tmp_path_factory):
    """``serve -a`` with the users in USERS (also its ``users`` attribute)."""
    tmp = tmp_path_factory.mktemp("auth")
    users = make_users(tmp, **USERS)
    for daemon in _shared_daemon(tmp, "-a", "--users", str(users), "--metrics-trust-loopback"):
        daemon.users = USERS
        yield daemon
