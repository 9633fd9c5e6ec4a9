"""Hostile clients over the network, each attack performed against a real daemon on loopback
and what it cost measured: ingest's memory (psutil), another client's frames, what got in."""
from __future__ import annotations

import base64
import json
import resource
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from conftest import make_jpeg, make_users, wait_for
from rawclient import CLOSED, TIMEOUT, RawPoll, RawWS

from camstream.users import UsersError, check_name

MiB = 1024 * 1024


def ingest_rss(d) -> float:
    """Ingest's resident memory in MB."""
    return d.child("ingest").memory_info().rss / MiB


def streamer(url: str, name: str, stop: threading.Event, fps: float = 10.0) -> dict:
    """A real python-socketio client sending acked frames at ``fps`` in a thread of its own,
    until ``stop``; its counts in the returned dict."""
    import socketio
    out = {"accepted": 0, "failed": 0, "error": None}
    jpeg = make_jpeg(160, 120)

    def run():
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(url, transports=["websocket"], wait_timeout=10,
                        auth={"username": name, "password": ""})
            while not stop.is_set():
                try:
                    ack = sio.call("frame", ({}, jpeg), timeout=5)
                    out["accepted" if ack.get("accepted") else "failed"] += 1
                except Exception:  # noqa: BLE001 (a timeout counts as a failure)
                    out["failed"] += 1
                stop.wait(1 / fps)
        except Exception as e:  # noqa: BLE001
            out["error"] = repr(e)
        finally:
            sio.disconnect()
    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


# -- 15. user names: a full match ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["bob\n", "bob\r", "bob\0", "bo\x1bb", "bob\t", "\nbob",
                                  "bob\x7f", "bob\u0085", "bob\u2028"])
def test_a_user_name_with_a_control_character_is_refused(tmp_path, name):
    with pytest.raises(UsersError):
        check_name(name)
    path = tmp_path / "users"
    add = subprocess.run([sys.executable, "-m", "camstream", "users", "add", "alice",
                          "--password-stdin", "--users", str(path)], input="pw\n", text=True,
                         capture_output=True, timeout=30)
    assert add.returncode == 0
    if "\0" in name:
        return  # no argv can carry a NUL
    bad = subprocess.run([sys.executable, "-m", "camstream", "users", "add", name,
                          "--password-stdin", "--users", str(path)], input=b"pw\n",
                         capture_output=True, timeout=30)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    listed = subprocess.run([sys.executable, "-m", "camstream", "users", "list", "--users",
                             str(path)], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and listed.stdout.split() == ["alice"]


def test_a_name_with_a_trailing_newline_gets_no_stream_of_its_own(daemons):
    """Without -a any name names a stream: ``alice\\n`` must not get a row that looks like
    alice's."""
    d = daemons(workers=1)
    for name in ("alice\n", "alice\r", "alice\0"):
        ws = RawWS(d.port, eio=3)
        assert ws.login(name, "") is False
        ws.close()
    ws = RawWS(d.port, eio=3)
    assert ws.login("alice", "") is True
    ws.close()
    assert set(d.health()["clients"]) <= {"alice", "(unauthenticated)"}


# -- 16. escape codes in the log ----------------------------------------------------------------

def test_control_characters_from_a_client_are_escaped_in_the_log(daemons):
    d = daemons("--log-level", "debug", workers=1)
    s = socket.create_connection(("127.0.0.1", d.port), 5)
    s.sendall(b"GET /\x1b[2J\x1b[31mpwned\x07 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    s.recv(1000)
    s.close()
    s = socket.create_connection(("127.0.0.1", d.port), 5)
    s.sendall(b"GET /healthz?\x1b]0;title\x07 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(1000)
    s.close()
    ws = RawWS(d.port, eio=4)
    ws.connect({"username": "a\x1b[31mb", "password": ""})
    ws.send('42["ev\x1b[0mil\\u001b[1m"]')
    ws.probe()
    ws.close()
    wait_for(lambda: "pwned" in d.output() and "title" in d.output(), 10,
             what="the request lines in the access log")
    out = d.output()
    assert "\x1b" not in out and "\x07" not in out, [ln for ln in out.splitlines()
                                                     if "\x1b" in ln or "\x07" in ln]
    assert "\\x1b[2J\\x1b[31mpwned\\x07" in out
