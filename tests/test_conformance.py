"""Both protocol revisions behave as the reference servers do (npm socket.io 4.x for Engine.IO 4
/ Socket.IO 5, socket.io 2.x for Engine.IO 3 / Socket.IO 4), and clients survive every restart.

Raw packets (tests/rawclient.py) go to camstream and, where the behaviour is in doubt, to the
reference server run beside it (tests/js/server.js); real clients (JS 2.x, JS 4.x,
python-socketio 5) do the restarts. Deliberate differences from the reference, each asserted
below:

- a PUT (any method but GET, POST, OPTIONS) on a session is a 400 here; the reference answers
  500 with no body;
- a graceful stop closes a polling session by releasing its pending poll with a noop, not the
  reference's close packet ``1``: python-socketio's client takes a close packet as "sent away"
  and never reconnects (JS clients reconnect either way);
- a second long poll at once is refused and the session closed on both revisions (the
  reference does so on Engine.IO 4; its Engine.IO 3 server does the same).
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest import Daemon, free_port, wait_for
from jsclient import JS_DIR, jpeg_file, js  # noqa: F401 (fixtures)
from streaming import Streamer

SERVER_JS = JS_DIR / "server.js"


# -- the reference servers ---------------------------------------------------------------------

class Reference:
    """tests/js/server.js: the official socket.io server (2 or 4) on a port of its own."""

    def __init__(self, version: str, ping_interval_ms: int = 25000,
                 ping_timeout_ms: int = 20000) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["node", str(SERVER_JS), "--server", version, "--port", str(self.port),
             "--ping-interval", str(ping_interval_ms), "--ping-timeout", str(ping_timeout_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # bounded: node exits on error, closing stdout
        if not line.startswith("listening"):
            self.stop()
            raise AssertionError(f"reference server {version} did not start: "
                                 f"{self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- (1) restart without stranding anyone ------------------------------------------------------

def received(d: Daemon, name: str) -> int:
    return d.health()["clients"].get(name, {}).get("received", 0)


def test_restart_every_real_client_streams_again_with_default_reconnection(tmp_path, js,
                                                                           jpeg_file):
    """SIGHUP disconnects nobody; SIGTERM then a new start on the same port (what
    ``systemctl restart`` does): each real client, with its library's default reconnection
    (1 s doubling to 5 s), is back and logged in again within its reconnection delay."""
    first = Daemon(tmp_path, workers=1)
    second = None
    streamers = []
    try:
        first.wait_ready()
        runs = {
            # as the app: polling then the upgrade, authenticate again after each reconnect
            "js2-app": js.start(first.url, "2", "js2-app", frames=jpeg_file, count=10**6,
                                fps=10, timeout=120),
            "js2-poll": js.start(first.url, "2", "js2-poll", frames=jpeg_file, count=10**6,
                                 fps=10, timeout=120, mode="polling"),
        }
        for name, mode in (("js4-ws", "websocket"), ("js4-poll", "polling")):
            argv = js.start(first.url, "4", name, frames=jpeg_file, count=10**6, fps=10,
                            timeout=120, mode=mode)
            runs[name] = argv
        streamers = [Streamer(first.url, "py-ws", fps=10, reconnection={}).start(),
                     Streamer(first.url, "py-poll", fps=10, transports=("polling",),
                              reconnection={}).start()]
        names = [*runs, "py-ws", "py-poll"]
        wait_for(lambda: all(received(first, n) >= 5 for n in names), 30,
                 what="every client streaming into the first daemon")

        first.proc.send_signal(signal.SIGHUP)
        before = {n: received(first, n) for n in names}
        wait_for(lambda: all(received(first, n) >= before[n] + 10 for n in names), 15,
                 what="every client streaming on after SIGHUP")
        assert "closed" not in first.output().split("SIGHUP")[-1], "SIGHUP dropped a client"

        stopped_at = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=20) == 0, first.output()
        out = first.output()
        assert f"closed {len(names)} client connections" in out, out
        second = Daemon(tmp_path, workers=1, port=first.port)
        second.wait_ready()
        ready_at = time.monotonic()
        wait_for(lambda: all(received(second, n) >= 5 for n in names), 5 + 5,
                 what="every client streaming into the new daemon (reconnection delay at "
                      "most 5 s, then 5 frames at 10 Hz)")
        back = time.monotonic()
        health = second.health()
        for n in names:
            assert health["clients"][n]["connected"] == 1, (n, health["clients"][n])
        for name, proc in runs.items():
            proc.send_signal(signal.SIGTERM)
            rc, summary = js.result(proc, timeout=10)
            # one disconnect (the stop, a closed transport, never "io server disconnect"),
            # one reconnect, logged in again (authenticate again, or auth with the connect)
            assert rc == 0 and summary["connects"] == 2 and summary["logins"] == 2, summary
            assert summary["disconnects"] in (["transport close"], ["transport error"]), summary
        for s in streamers:
            assert s.connects == 2 and s.disconnects == 1, (s.name, s.connects, s.disconnects)
        print(f"stop took {ready_at - stopped_at:.1f} s to a ready new daemon; every client "
              f"streaming again {back - ready_at:.1f} s after it was ready")
    finally:
        for s in streamers:
            s.stop()
        first.shutdown()
        if second is not None:
            second.shutdown()
