"""What one hostile or careless client can cost the others, and what a daemon gives away:
oversize messages, connections and frames per address, login guessing, TLS, the runtime
directory's permissions and secrets in /healthz and /metrics. Real daemons on loopback."""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
import requests
import socketio
import urllib3
from tests.helpers import ROOT, free_port, make_jpeg, make_users, wait_for
from tests.helpers.jsclient import jpeg_file, js_client, js_result  # noqa: F401 (a fixture)
from tests.helpers.rawclient import CLOSED, RawPoll, RawWS
from tests.helpers.streaming import Streamer

MAX_FRAME = 100 * 1024
CAP = int(MAX_FRAME * 1.5) + 65536          # the transport's limit for one message
FRAME_EVENT = '451-["frame",{},{"_placeholder":true,"num":0}]'
IMAGE_EVENT = '451-["receiveImage",{"_placeholder":true,"num":0}]'


def row(d, name: str) -> dict:
    return d.health()["clients"].get(name, {})


# -- 1. oversize messages ------------------------------------------------------------------------

def legacy_poll_login(url: str, name: str) -> RawPoll:
    p = RawPoll(url, eio=3)
    assert p.post(p.packets(f'42{json.dumps(["authenticate", name, "", "onAuth"])}')) == 200
    assert p.wait_for(b'"onAuth",true') == "found"
    return p


def poll_probe(p: RawPoll) -> str:
    """An acked frame() without arguments: found means the session is still served."""
    if p.post(p.packets('424242["frame"]')) != 200:
        return CLOSED
    return p.wait_for(b"434242[")


def test_frames_just_over_the_limit_are_refused_on_every_transport(daemons, clients):
    """A frame one byte over --max-frame-size is refused with a reason and the connection
    stays: the current revision answers in the ack, the legacy one (no ack for receiveImage)
    counts it in /healthz."""
    d = daemons("--max-frame-size", "100k", workers=1)
    over = b"\xff" * (MAX_FRAME + 1)
    for transport in ("websocket", "polling"):
        sio = clients(d.url, f"cur-{transport}", transports=(transport,))
        ack = sio.call("frame", ({}, over), timeout=10)
        assert ack["accepted"] is False and ack["reason"] == "too large", (transport, ack)
        assert sio.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
        assert sio.connected

    ws = RawWS(d.port, eio=3)
    assert ws.login("leg-ws", "") is True
    ws.binary_frame(over, event="receiveImage")
    assert isinstance(ws.probe(), list), "the legacy websocket is still served"
    ws.close()

    p = legacy_poll_login(d.url, "leg-poll")
    b64 = "b4" + base64.b64encode(over).decode()
    assert p.post(p.packets(IMAGE_EVENT, b64)) == 200
    assert poll_probe(p) == "found", "the legacy long-poll session is still served"
    p.close()

    for name in ("cur-websocket", "cur-polling", "leg-ws", "leg-poll"):
        wait_for(lambda n=name: row(d, n).get("refused_by", {}).get("too large") == 1, 10,
                 what=f"{name}'s oversize frame counted as too large")


def test_a_message_over_the_transport_cap_closes_only_its_connection(daemons):
    """Beyond int(max_frame_bytes*1.5)+65536 the transport drops the connection, on each
    revision and transport (the current revision's websocket: test_bad_input), while a
    bystander keeps streaming."""
    d = daemons("--max-frame-size", "100k", workers=1)
    bystander = Streamer(d.url, "bystander", fps=10).start()
    try:
        huge = bytes(CAP + 1024)
        p4 = RawPoll(d.url, eio=4)
        assert p4.post("40") == 200 and p4.wait_for(b"40{") == "found"
        status = p4.post(p4.packets('42["frame",{},', "b" + base64.b64encode(huge).decode()))
        assert status in (0, 400, 413), status
        assert p4.wait_for(b"never", timeout=5) == CLOSED, "EIO=4 polling session closed"

        ws3 = RawWS(d.port, eio=3)
        assert ws3.login("leg-ws", "") is True
        ws3.binary_frame(huge, event="receiveImage")
        assert ws3.wait_for(lambda m: False, timeout=5) == CLOSED, "EIO=3 websocket closed"

        p3 = legacy_poll_login(d.url, "leg-poll")
        status = p3.post(p3.packets(IMAGE_EVENT, "b4" + base64.b64encode(huge).decode()))
        assert status in (0, 400, 413), status
        assert poll_probe(p3) == CLOSED, "EIO=3 polling session closed"

        before = bystander.accepted
        wait_for(lambda: bystander.accepted >= before + 5, 10, what="the bystander streaming")
    finally:
        bystander.stop()
    assert bystander.disconnects == 0 and bystander.errors == 0
    assert d.proc.poll() is None


# -- 2. connections per address ------------------------------------------------------------------

@pytest.mark.serial
def test_a_thousand_connections_from_one_address_are_capped(daemons):
    """1,000 websockets from 127.0.0.2 hold at most --max-connections-per-ip; the rest are
    refused, counted in /healthz and logged once; 127.0.0.1 is served throughout."""
    d = daemons("--max-connections-per-ip", "20", workers=1)
    bystander = Streamer(d.url, "bystander", fps=10).start()
    held: list[RawWS] = []
    refused = 0
    deadline = time.monotonic() + 30
    try:
        for _ in range(1000):
            assert time.monotonic() < deadline, "1,000 connection attempts took over 30 s"
            try:
                ws = RawWS(d.port, eio=4, source="127.0.0.2", timeout=3)
            except OSError:
                refused += 1
                continue
            if ws.first == CLOSED:
                refused += 1
                ws.close()
            else:
                held.append(ws)
        assert len(held) == 20 and refused == 980, (len(held), refused)
        assert all(isinstance(ws.connect(), str) for ws in held[:3]), "the held ones work"
        h = d.health()
        assert h["refused_connections"] >= 980, h
        assert bystander.errors == 0 and bystander.disconnects == 0
        assert bystander.accepted >= 5
    finally:
        for ws in held:
            ws.close()
        bystander.stop()
    log = d.output()
    assert log.count("refusing websockets from 127.0.0.2") == 1, "logged once, not 980 times"
    assert "127.0.0.1" not in log.split("refusing websockets from")[1].split("\n")[0]
    # once they are closed, the address may connect again
    wait_for(lambda: (ws := RawWS(d.port, eio=4, source="127.0.0.2")).first != CLOSED
             and (ws.close() or True), 10, what="127.0.0.2 to be admitted again")
    assert "camstream_connections_refused" in requests.get(d.url + "/metrics", timeout=5).text


# -- 3. frame rate -------------------------------------------------------------------------------

@pytest.mark.serial
def test_a_frame_flood_is_cut_to_max_fps(daemons):
    """10,000 small frames a second without acks for 2 s: at most --max-fps get through (the
    rest refused as 'rate limited'), and a 10 Hz bystander keeps >= 90 % processed."""
    d = daemons("--max-fps", "20", workers=1)
    bystander = Streamer(d.url, "bystander", fps=10).start()
    jpeg = make_jpeg(32, 24)
    ws = RawWS(d.port, eio=4)
    assert ws.connect({"username": "flood", "password": ""}).startswith("40{")
    sent = 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < 2.0:
            if sent >= elapsed * 10_000:  # pace at 10,000/s at most
                time.sleep(0.0005)
                continue
            if not (ws.send(IMAGE_EVENT) and ws.send(jpeg)):
                break
            sent += 1
    finally:
        ws.close()
        bystander.stop()
    assert sent > 2000, f"the flood only managed {sent} frames"
    flood = wait_for(lambda: (r := row(d, "flood")).get("received") == sent and r, 20,
                     what="every flood frame counted")
    window = time.monotonic() - started  # ingest may still be reading when the sender stops
    assert flood["refused_by"].get("rate limited", 0) > 0, flood
    assert flood["dispatched"] + flood["dropped"] <= 20 + 20 * window + 5, (window, flood)
    steady = wait_for(lambda: (r := row(d, "bystander"))["processed"] >= 0.9 * r["received"]
                      and r, 10, what="the bystander's frames processed")
    assert steady["received"] >= 15 and not steady["refused"], steady
    assert bystander.errors == 0 and bystander.disconnects == 0


# -- 4. login throttling -------------------------------------------------------------------------

def sio_login(url: str, name: str, password: str) -> bool:
    sio = socketio.Client(reconnection=False)
    try:
        sio.connect(url, transports=["websocket"], wait_timeout=10,
                    auth={"username": name, "password": password})
    except socketio.exceptions.ConnectionError:
        return False
    sio.disconnect()
    return True


def raw_login(port: int, source: str, name: str, password: str) -> bool:
    ws = RawWS(port, eio=4, source=source)
    try:
        return ws.connect({"username": name, "password": password}).startswith("40{")
    finally:
        ws.close()


@pytest.mark.serial
def test_failed_logins_grow_a_delay_per_address_and_username(daemons, tmp_path):
    """After failures (0.5 s, 1 s, 2 s...) even the right password is refused for that user
    from that address; the same user from another address, and another user from the same
    address, are not refused (a name is only slowed; an address is refused only after more
    failures than one user's typos: tests/integration/test_hostile_net.py); after the delay the right
    password works."""
    users = make_users(tmp_path, alice="wonderland-42", bob="builder-42")
    d = daemons("-a", "--users", str(users), workers=1)
    assert not sio_login(d.url, "alice", "guess-one")
    assert not sio_login(d.url, "alice", "wonderland-42"), "refused during the penalty"
    time.sleep(0.6)
    assert not sio_login(d.url, "alice", "guess-two")       # a 1 s penalty now
    time.sleep(1.1)
    failed_at = time.monotonic()
    assert not sio_login(d.url, "alice", "guess-three")     # a 2 s penalty now
    assert not sio_login(d.url, "alice", "wonderland-42"), "same address, same user"
    assert time.monotonic() - failed_at < 1.8, "the checks ran inside the penalty"
    assert sio_login(d.url, "bob", "builder-42"), "same address, other user"
    assert raw_login(d.port, "127.0.0.2", "alice", "wonderland-42"), "other address"
    ok_at = wait_for(lambda: sio_login(d.url, "alice", "wonderland-42") and time.monotonic(),
                     10, interval=0.2, what="alice admitted after the delay")
    assert ok_at - failed_at >= 1.9, "the third failure's delay is 2 s"

    log = d.output()
    assert log.count("login failed for user 'alice' from 127.0.0.1") == 3
    assert "login refused for user 'alice' from 127.0.0.1: too many failed logins" in log
    assert "login refused for user 'bob'" not in log
    assert "login refused for user 'alice' from 127.0.0.2" not in log
    for secret in ("guess-one", "guess-two", "guess-three", "wonderland-42", "builder-42"):
        assert secret not in log


# -- 5. TLS --------------------------------------------------------------------------------------

def make_cert(tmp_path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_serves_wss_and_https_and_refuses_plain_http(daemons, clients, tmp_path,
                                                        jpeg_file):  # noqa: F811
    """With --certfile/--keyfile the port speaks only TLS: frames over wss (websocket only,
    and long-polling over https then the upgrade, as the app connects) are processed,
    /healthz answers over https, plain http gets nothing.

    The clients are the JS ones. python-socketio's threaded client reads and writes one TLS
    socket from two threads, which OpenSSL does not support: its wss connections broke now and
    then here under load (about 1 in 40, at connect or mid-stream; python-engineio issue
    461), whatever the server does."""
    cert, key = make_cert(tmp_path)
    d = daemons("--certfile", cert, "--keyfile", key, workers=1, ready=False)
    https = d.url.replace("http://", "https://")
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def health():
        assert d.proc.poll() is None, d.output()
        return requests.get(https + "/healthz", verify=False, timeout=2).json()
    wait_for(lambda: health()["workers"]["alive"] >= 1, 30, what="the TLS daemon ready")
    for client, mode, user in (("4", "websocket", "tls4"), ("2", "default", "tls2")):
        code, summary = js_result(js_client(https, client, user=user, frames=jpeg_file,
                                            count=5, fps=10, mode=mode, insecure=True))
        assert code == 0 and summary["authenticated"] is True, summary
        assert summary["transport"] == "websocket" and summary["sent"] == 5, summary
        row = wait_for(lambda: (r := health()["clients"].get(user)) and
                       r["processed"] + r["dropped"] == 5 and r, 10,
                       what=f"{user}'s 5 frames processed or replaced")
        assert row["processed"] >= 3 and row["errors"] == 0, row
    with pytest.raises(requests.RequestException):
        requests.get(d.url + "/healthz", timeout=3).json()
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients(d.url, "plain")


def test_send_and_status_trust_a_self_signed_certificate_only_when_told(daemons, tmp_path):
    """A lab's own certificate: refused by default (one line), trusted with --cafile, not
    checked with --insecure. (Long-polling: the threaded client's wss is flaky, see above.)"""
    cert, key = make_cert(tmp_path)
    d = daemons("--certfile", cert, "--keyfile", key, workers=1, ready=False)
    https = d.url.replace("http://", "https://")
    wait_for(lambda: requests.get(https + "/healthz", verify=cert, timeout=2).json()[
        "workers"]["alive"] >= 1, 30, what="the TLS daemon ready")

    def camstream(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "camstream", *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
    send = ("send", https, "--transport", "polling", "--count", "3", "--fps", "10",
            "--size", "320x240")
    refused = camstream(*send, "-u", "doubter")
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, \
        refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    for user, trust in (("trusting", ["--cafile", cert]), ("careless", ["--insecure"])):
        r = camstream(*send, "-u", user, *trust)
        assert r.returncode == 0 and "accepted 3" in r.stderr, r.stderr
        assert "Warning" not in r.stderr, r.stderr
    status = camstream("status", https, "--cafile", cert)
    assert status.returncode == 0 and "trusting" in status.stdout, status.stderr
    assert "careless" in status.stdout and "doubter" not in status.stdout
    assert camstream("status", https).returncode == 1


@pytest.mark.parametrize("args, message", [
    (lambda cert, key, bad: ["--certfile", cert], "--certfile and --keyfile go together"),
    (lambda cert, key, bad: ["--certfile", bad, "--keyfile", key], "cannot load them"),
    (lambda cert, key, bad: ["--certfile", cert + ".missing", "--keyfile", key],
     "cannot load them"),
])
def test_bad_tls_settings_stop_serve_with_one_line(tmp_path, args, message):
    cert, key = make_cert(tmp_path)
    bad = tmp_path / "garbage.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    r = subprocess.run([sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
                        "-p", str(free_port()), "--runtime-dir", str(tmp_path / "run"),
                        *args(cert, key, str(bad))],
                       check=False, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- 6 and 7. the runtime directory, and secrets in /healthz and /metrics ------------------------

def test_runtime_sockets_are_closed_to_other_users_and_no_secret_is_served(
        daemons, clients, tmp_path):
    """The ipc endpoints and their directory give 'other' no access (ZeroMQ ipc has no
    authentication of its own); /healthz and /metrics show no password, hash or salt."""
    passwords = {"alice": "wonderland-7", "bob": "builder-7"}
    users = make_users(tmp_path, **passwords)
    # the test reads client names: a loopback caller may (without the flag, see
    # tests/integration/test_hostile_net.py, only totals are served under -a)
    d = daemons("-a", "--users", str(users), "--metrics-trust-loopback", workers=1)
    for name in ("", "frames", "bus-in", "bus-out"):
        path = d.runtime_dir / name
        mode = os.stat(path).st_mode
        assert name == "" or stat.S_ISSOCK(mode), f"{path} is not a socket"
        assert mode & 0o007 == 0, f"{path} is open to other users: {oct(mode & 0o777)}"

    for name, password in passwords.items():
        sio = clients(d.url, name, password)
        assert sio.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
    assert not sio_login(d.url, "alice", "not-the-password")
    wait_for(lambda: row(d, "bob").get("processed") == 1, 10, what="bob's frame processed")
    secrets = [*passwords.values(), "not-the-password", "scrypt"]
    for line in users.read_text().splitlines():
        if not line.startswith("#"):
            secrets += line.split(":")[5:]  # NAME:scrypt:N:R:P:SALT:HASH
    for path in ("/healthz", "/metrics", "/"):
        body = requests.get(d.url + path, timeout=5).text
        for secret in secrets:
            assert secret not in body, f"{path} shows {secret!r}"
