"""A newcomer's mistakes, each made for real: one line saying what to do, exit 2 (1 when the
mistake is only known after trying, as for a server that does not answer), never a
traceback, and nothing started before it is said."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, Daemon, free_port, wait_for
from test_security import make_cert


def camstream(*args: str, cwd: Path = ROOT, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camstream", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, **kw)


def one_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def plain_daemon(tmp_path_factory):
    """One ``serve -w 1`` for the tests that only send as a client name of their own and read
    its row: started once, not once per test (its tests share an xdist group)."""
    d = Daemon(tmp_path_factory.mktemp("plain"), workers=1)
    try:
        d.wait_ready()
        yield d
    finally:
        d.shutdown()


PLAIN = pytest.mark.xdist_group("test_mistakes-plain")


@pytest.fixture
def listener():
    """A port something listens on, counting connections: a source checked too late would
    connect before it complains."""
    import socket
    import threading
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(8)
    accepted: list = []

    def accept():
        while True:
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", accepted
    sock.close()
    for conn in accepted:
        conn.close()


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "empty", "no .jpg or .jpeg files in that folder"),
    (lambda d: (d / "texts").mkdir() or (d / "texts" / "a.txt").write_text("x") and
     d / "texts", "no .jpg or .jpeg files in that folder"),
    (lambda d: (d / "clip.mp4").write_text("not a video") and d / "clip.mp4",
     "cannot read a frame (not a video OpenCV can read)"),
    (lambda d: "9", "--source camera 9: cannot read a frame (no such camera, or it is busy)"),
    (lambda d: d / "missing.mp4", "not 'synthetic', a camera number, a folder or a video file"),
])
def test_send_source_that_gives_no_frames(tmp_path, listener, make, says):
    (tmp_path / "empty").mkdir()
    source = str(make(tmp_path))
    url, accepted = listener
    line = one_line(camstream("send", url, "--source", source))
    assert says in line and line.startswith("camstream send: error: --source"), line
    time.sleep(0.2)
    assert accepted == [], "send connected before it checked its source"


@PLAIN
def test_send_and_status_take_host_and_port(plain_daemon):
    d = plain_daemon
    host_port = d.url.removeprefix("http://")
    r = camstream("send", host_port, "-u", "noscheme", "--count", "3", "--fps", "20")
    assert r.returncode == 0 and "accepted 3" in r.stderr, r.stderr
    status = camstream("status", host_port)
    assert status.returncode == 0 and "noscheme" in status.stdout, status.stderr
    for bad in ("ftp://127.0.0.1:1", "http://127.0.0.1:port", "http://"):
        line = one_line(camstream("send", bad))
        assert "expected a server URL such as http://HOST:8080 (or HOST:PORT)" in line, line


def test_status_says_why_nothing_answers(tmp_path):
    port = free_port()
    line = one_line(camstream("status", f"127.0.0.1:{port}"), code=1)
    assert line == (f"camstream status: no daemon answers at http://127.0.0.1:{port}: "
                    "connection refused (is camstream serve running, on this port?)")


def test_status_of_a_self_signed_daemon_gives_the_hint(daemons, tmp_path):
    """Over https with a lab's own certificate, status says what send says: --cafile or
    --insecure; and plain http to the TLS port costs the server one rate-limited line."""
    cert, key = make_cert(tmp_path)
    d = daemons("--certfile", cert, "--keyfile", key, workers=1, ready=False)
    https = d.url.replace("http://", "https://")
    wait_for(lambda: requests.get(https + "/healthz", verify=cert, timeout=2).json()[
        "workers"]["alive"] >= 1, 30, what="the TLS daemon ready")
    line = one_line(camstream("status", https), code=1)
    assert "(a certificate of your own? --cafile PEM, or --insecure)" in line, line
    assert one_line(camstream("status", d.url), code=1).endswith(
        "it closed the connection (an https port? try https://)")
    # the server: a line for plain http, at most one every 10 s however many come (a failed
    # handshake of the readiness polls above may have taken this window's line already)
    line = "TLS handshake with 127.0.0.1 failed"
    start = time.monotonic()
    while "HTTP_REQUEST" not in d.output() and time.monotonic() - start < 15:
        camstream("status", d.url)
        time.sleep(0.5)
    assert "HTTP_REQUEST" in d.output(), d.output()
    windows = (time.monotonic() - start) / 10
    assert d.output().count(line) <= windows + 2, d.output()
    assert "Traceback" not in d.output()


def test_config_file_that_is_not_text(tmp_path):
    conf = tmp_path / "camstream.conf"
    conf.write_bytes(b"port = 8080\n\xff\xfe\x00binary\n")
    line = one_line(camstream("serve", "--config", str(conf), "-p", str(free_port())))
    assert line == f"camstream: error: --config {conf}:2: not UTF-8 text (byte 0xff); is it " \
                   "the right file?"


def test_users_add_without_a_terminal(tmp_path):
    """No terminal (a script, ssh without -t, a service): say to use --password-stdin."""
    users = tmp_path / "users"
    r = camstream("users", "add", "bob", "--users", str(users), stdin=subprocess.DEVNULL,
                  start_new_session=True)  # no controlling terminal: /dev/tty cannot open
    line = one_line(r)
    assert "no terminal to ask for the password on: pipe it in with --password-stdin" in line
    assert not users.exists()


# -- what a user is told matches what happened ------------------------------------------------

@PLAIN
def test_send_results_from_a_daemon_that_sends_none(plain_daemon):
    d = plain_daemon
    r = camstream("send", d.url, "-u", "hopeful", "--results", "--count", "40", "--fps", "10")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("no results come back: the daemon sends them only when it runs "
                          "with --emit-results") == 1, r.stderr
    assert "results 0" not in r.stderr and "accepted 40" in r.stderr, r.stderr
    assert r.stdout == ""


def test_a_refused_login_says_why_and_that_retries_are_throttled(daemons, tmp_path):
    from tests.helpers import make_users
    users = make_users(tmp_path, kim="right")
    d = daemons("-a", "--users", str(users), workers=1)
    first = one_line(camstream("send", d.url, "-u", "kim", "--password", "wrong", "--count",
                               "1"), code=1)
    # the throttle counts the try before the password is hashed, so what is left of the
    # first failure's 0.5 s when the refusal is sent is under it
    wait = re.fullmatch(
        re.escape(f"camstream send: login refused for 'kim' at {d.url}: a wrong user name or "
                  "password, or a try too soon after one; next try in ") + r"(\d\.\d) s" +
        re.escape(" (the wait doubles with each failure, up to a minute)"), first)
    assert wait and float(wait[1]) <= 0.5, first
    # the Android app's event answers only true or false: send says the rule instead
    legacy = one_line(camstream("send", d.url, "-u", "kim", "--password", "wrong", "--count",
                                "1", "--legacy"), code=1)
    assert legacy == (f"camstream send: login refused for 'kim' at {d.url}: a wrong user name "
                      "or password, or a try too soon after one (after failed logins the "
                      "daemon refuses that name from this address for 0.5 s, doubling up to "
                      "a minute)"), legacy


def test_status_counts_local_and_remote_workers_apart():
    from camstream.client import format_health
    health = {"uptime_s": 3725.2, "ingest": {"restarts": 1, "uptime_s": 12.0},
              "workers": {"alive": 3, "expected": 2, "restarts": 0, "remote": [
                  {"host": "lab2", "pid": 41, "alive": True, "processed": 9},
                  {"host": "lab3", "pid": 7, "alive": False, "processed": 2}]},
              "clients": {}, "totals": dict.fromkeys(
                  ("received", "dispatched", "dropped", "processed", "errors", "refused"), 0)}
    first = format_health(health).splitlines()[0]
    assert first == ("up 1 h 2 min; workers: 2 of 2 alive here (0 restarts), 1 remote alive "
                     "(lab2 pid 41, lab3 pid 7 (gone)); ingest restarts 1")


def test_legacy_send_reads_its_counters_under_auth(daemons, tmp_path):
    """Under -a /healthz shows client rows only to a user: send --legacy asks as itself."""
    from tests.helpers import make_users
    users = make_users(tmp_path, lee="pw")
    d = daemons("-a", "--users", str(users), workers=1)
    r = camstream("send", d.url, "-u", "lee", "--password", "pw", "--count", "5", "--fps",
                  "10", "--legacy")
    assert r.returncode == 0, r.stderr
    assert "the daemon's counters for 'lee' during this run: received 5, refused 0, " \
           "dropped 0, processed 5" in r.stderr, r.stderr


def test_status_under_auth_says_rows_are_hidden_and_shows_them_to_a_user(daemons, tmp_path):
    """Under -a /healthz keeps client names from callers who have not logged in: status says
    so (not an empty table that looks like nobody is there), and shows them to a user."""
    from tests.helpers import make_users
    users = make_users(tmp_path, kim="right")
    d = daemons("-a", "--users", str(users), workers=1)
    sent = camstream("send", d.url, "-u", "kim", "--password", "right", "--count", "3")
    assert sent.returncode == 0, sent.stderr
    anonymous = camstream("status", d.url)
    assert anonymous.returncode == 0, anonymous.stderr
    assert "kim" not in anonymous.stdout
    assert "(1 clients not shown: under -a client rows are for users of the users file: " \
           "camstream status -u NAME" in anonymous.stdout, anonymous.stdout
    as_kim = camstream("status", d.url, "-u", "kim", env=dict(os.environ,
                                                              CAMSTREAM_PASSWORD="right"))
    assert as_kim.returncode == 0, as_kim.stderr
    assert re.search(r"^kim\s", as_kim.stdout, re.M) and "not shown" not in as_kim.stdout, \
        as_kim.stdout
