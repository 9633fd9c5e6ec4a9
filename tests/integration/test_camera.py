"""The camera page end to end: headless Chromium with its fake camera opens ``/camera`` over
https (a certificate from ``camstream tls generate``), logs in to ``serve -a`` and streams
through the page's own Engine.IO 4 client; the daemon's counters show the frames processed."""
from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from tests.helpers.browser import CAMERA, browsers, needs_chromium, save_screenshot  # noqa: F401
from tests.helpers import ROOT, Daemon, free_port, make_users, terminate, wait_for
from tests.helpers.jsclient import JS_DIR

pytestmark = needs_chromium


@pytest.fixture
def https_daemon(daemons, tmp_path):
    users = make_users(tmp_path, phone="secret-pass")
    subprocess.run([sys.executable, "-m", "camstream", "tls", "generate", str(tmp_path / "tls")],
                   check=True, capture_output=True, timeout=30, cwd=ROOT)
    cert, key = str(tmp_path / "tls" / "cert.pem"), str(tmp_path / "tls" / "key.pem")
    d = daemons("-a", "--users", str(users), "--metrics-trust-loopback", "--certfile", cert,
                "--keyfile", key, workers=1, ready=False)
    return over_https(d, cert)


def over_https(d: Daemon, cert: str) -> Daemon:
    d.cert = cert
    d.url = d.url.replace("http:", "https:")
    # under -a /healthz names clients only to a user of the users file
    d.health = lambda: requests.get(d.url + "/healthz", timeout=2, verify=cert,
                                    auth=("phone", "secret-pass")).json()
    d.wait_ready()
    return d


def counter(driver, name: str) -> int:
    return int(driver.find_element("id", name).text or 0)


def start_streaming(driver, url: str, user: str, password: str) -> None:
    driver.get(url + "/camera")
    driver.find_element("id", "username").send_keys(user)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "fps").clear()
    driver.find_element("id", "fps").send_keys("10")
    driver.find_element("id", "start").click()


def test_a_browser_camera_streams_over_https(https_daemon, browsers, tmp_path):  # noqa: F811
    driver = browsers("--ignore-certificate-errors", *CAMERA).driver
    start_streaming(driver, https_daemon.url, "phone", "secret-pass")
    wait_for(lambda: counter(driver, "accepted") >= 20, 30, what="20 accepted frames")
    state = driver.find_element("id", "state").text
    assert state == "streaming as phone", state
    # both read in one turn of the page's loop: read apart, an ack can land in between
    sent, accepted = driver.execute_script(
        "return ['sent', 'accepted'].map(id => +document.getElementById(id).textContent)")
    assert sent >= accepted, f"more acks than frames: sent {sent}, accepted {accepted}"
    processed = wait_for(lambda: https_daemon.health()["clients"]["phone"]["processed"], 15,
                         what="the phone's frames processed")
    assert processed >= 10
    assert counter(driver, "refused") == 0, driver.find_element("id", "why").text
    save_screenshot(driver.get_screenshot_as_png(), "camera.png", tmp_path)
    rate = float(driver.find_element("id", "rate").text)
    assert 3 <= rate <= 15, f"the page paces itself at about 10 fps, showed {rate}"

    driver.find_element("id", "stop").click()
    wait_for(lambda: not https_daemon.health()["clients"]["phone"]["connected"], 10,
             what="the page's connection to close")


def state(driver) -> tuple[str, int]:
    """The page's state line and its count of connections tried, read in one turn."""
    text, attempts = driver.execute_script(
        "const s = document.getElementById('state'); return [s.textContent, s.dataset.attempts]")
    return text, int(attempts or 0)


def test_the_page_reconnects_after_a_restart_and_logs_in_again(https_daemon, browsers,
                                                                tmp_path):  # noqa: F811
    """SIGTERM closes the page's transport without a disconnect packet (and refuses or 503s a
    new handshake while it drains); the page retries with socket.io-client's backoff, logs in
    to the daemon started again on the same port and streams on, with nobody clicking."""
    driver = browsers("--ignore-certificate-errors", *CAMERA).driver
    start_streaming(driver, https_daemon.url, "phone", "secret-pass")
    wait_for(lambda: counter(driver, "accepted") >= 10, 30, what="10 accepted frames")
    assert state(driver) == ("streaming as phone", 1)

    https_daemon.proc.send_signal(signal.SIGTERM)
    assert https_daemon.proc.wait(timeout=20) == 0, https_daemon.output()
    wait_for(lambda: state(driver)[0].startswith("reconnecting"), 10,
             what="the page to say reconnecting")
    accepted_before = counter(driver, "accepted")
    second = Daemon(tmp_path, *https_daemon.argv[https_daemon.argv.index("-a"):], workers=1,
                    port=https_daemon.port)
    try:
        over_https(second, https_daemon.cert)
        ready_at = time.monotonic()
        # the longest wait of the backoff (5 s), then a handshake, a login and 5 frames at 10 Hz
        wait_for(lambda: counter(driver, "accepted") >= accepted_before + 5, 5 + 5,
                 what="the page streaming into the new daemon")
        back_in = time.monotonic() - ready_at
        text, attempts = state(driver)
        assert text == "streaming as phone", text
        assert attempts >= 2, "the page reconnected without a new connection?"
        processed = wait_for(lambda: second.health()["clients"]["phone"]["processed"], 15,
                             what="the new daemon processing the page's frames")
        assert processed >= 1
        assert second.health()["clients"]["phone"]["connected"] == 1
        print(f"streaming again {back_in:.1f} s after the new daemon was ready, "
              f"{attempts} connections tried")
    finally:
        second.shutdown()


@pytest.mark.serial
def test_a_page_whose_daemon_is_gone_keeps_trying_without_a_flood(https_daemon,
                                                                  browsers):  # noqa: F811
    """The daemon stops for good: the page tries again and again, but no more often than the
    backoff allows (waits of 0.5-1.5 s, 1-3 s, 2-5 s, then 4-5 s). Its tries are counted on
    the wire too: a listener on the daemon's port that takes each connection and closes it."""
    driver = browsers("--ignore-certificate-errors", *CAMERA).driver
    start_streaming(driver, https_daemon.url, "phone", "secret-pass")
    wait_for(lambda: counter(driver, "accepted") >= 5, 30, what="5 accepted frames")
    # the page's backoff itself, at every draw of its random number: socket.io-client's
    waits = driver.execute_script(
        "return [0, 1, 2, 3, 4, 8].map(a => [...Array(100).keys()].map(i => "
        "backoffMs(a, () => i / 100)))")
    for attempt, drawn in zip([0, 1, 2, 3, 4, 8], waits):
        base = 1000 * 2 ** attempt
        assert min(drawn) >= min(base // 2, 5000) and max(drawn) <= min(base * 1.5, 5000), \
            (attempt, min(drawn), max(drawn))
    assert min(waits[0]) <= 600 and max(waits[0]) >= 1400, "the first wait is not randomised"
    assert set(waits[-1]) == {5000}, "the waits do not stop growing at 5 s"
    https_daemon.proc.send_signal(signal.SIGTERM)
    assert https_daemon.proc.wait(timeout=20) == 0, https_daemon.output()
    stopped_at = time.monotonic()
    _, attempts_at_stop = state(driver)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", https_daemon.port))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[float] = []
    done = threading.Event()

    def take():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            accepted.append(time.monotonic() - stopped_at)
            conn.close()
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    try:
        time.sleep(15)
    finally:
        done.set()
        thread.join(5)
        listener.close()
    text, attempts = state(driver)
    tries = attempts - attempts_at_stop
    # the tries began at the transport's close, during the drain, so by now the waits are at
    # least 1 s, then 2 s, then 4 s: 15 s holds at most 6 (7, loosely), and, no wait being
    # over 5 s, at least 2
    assert 2 <= tries <= 7, f"{tries} tries in 15 s: {text}"
    assert text.startswith("reconnecting"), text
    # chromium opens a second TCP connection at once when a TLS handshake is cut: one try on
    # the wire is a burst of connections within half a second
    bursts = [t for i, t in enumerate(accepted) if i == 0 or t - accepted[i - 1] > 0.5]
    assert tries - 1 <= len(bursts) <= tries, \
        f"{len(bursts)} tries on the wire ({len(accepted)} connections) for {tries} tries"
    gaps = [b - a for a, b in zip(bursts, bursts[1:])]
    assert all(g >= 0.9 for g in gaps), f"tries closer than the backoff allows: {gaps}"
    print(f"{tries} tries in 15 s; on the wire {len(accepted)} connections in {len(bursts)} "
          f"bursts at {[round(t, 1) for t in bursts]} s")


def test_a_wrong_password_is_shown_as_refused(https_daemon, browsers):  # noqa: F811
    driver = browsers("--ignore-certificate-errors", *CAMERA).driver
    start_streaming(driver, https_daemon.url, "phone", "wrong")
    wait_for(lambda: driver.find_element("id", "state").text.startswith("refused"), 15,
             what="the page to say refused")
    assert "authentication failed" in driver.find_element("id", "state").text
    assert counter(driver, "sent") == 0
    time.sleep(3)  # a refused login is never tried again
    assert state(driver)[1] == 1 and state(driver)[0].startswith("refused"), state(driver)
    assert "phone" not in https_daemon.health()["clients"] or \
        not https_daemon.health()["clients"]["phone"]["received"]


def test_the_page_is_static_and_packaged(https_daemon):
    page = requests.get(https_daemon.url + "/camera", timeout=5, verify=False)
    assert page.status_code == 200 and "camera.js" in page.text
    script = requests.get(https_daemon.url + "/camera/camera.js", timeout=5, verify=False)
    assert script.status_code == 200 and "EIO=4" in script.text
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "http" not in "".join(line for line in page.text.splitlines() if "src=" in line), \
        "the page loads nothing from elsewhere"


def test_every_page_file_is_packaged():
    """A non-editable install serves the pages: every file in camstream/static matches
    setup.cfg's package_data (a wheel built from this tree holds them)."""
    import configparser
    import fnmatch
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["camstream"].split(",")]
    files = [f"static/{f.name}" for f in (ROOT / "camstream" / "static").iterdir()]
    assert files
    unpackaged = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not unpackaged, f"add to setup.cfg [options.package_data]: {unpackaged}"


class ReferenceServer:
    """tests/js/server.js: the official socket.io 4 server, serving the camera page from
    camstream/static, accepting only ``auth`` {phone, secret-pass}, counting frames at /frames."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"   # localhost: a page may have the camera
        self.proc = subprocess.Popen(
            ["node", str(JS_DIR / "server.js"), "--server", "4", "--port", str(self.port),
             "--camera-page", str(ROOT / "camstream" / "static"), "--auth", "phone:secret-pass"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        if not (ready and self.proc.stdout.readline().startswith("listening")):
            self.stop()
            raise AssertionError(f"the reference server did not start: {self.proc.stderr.read()}")

    def frames(self) -> dict:
        return requests.get(self.url + "/frames", timeout=2).json()

    def stop(self) -> int:
        """SIGTERM: io.close(), the reference's graceful stop, then exit."""
        return terminate(self.proc)


@pytest.fixture
def reference():
    started: list[ReferenceServer] = []

    def start(port: int | None = None) -> ReferenceServer:
        started.append(ReferenceServer(port))
        return started[-1]
    yield start
    for server in started:
        server.stop()


def test_the_page_speaks_socketio_as_the_reference_server_hears_it(reference,
                                                                   browsers):  # noqa: F811
    """The page's own Engine.IO 4 client against npm socket.io 4 serving the same page: a
    refused `auth` is shown and not retried; a good one logs in, every `frame` arrives with its
    JPEG as a binary attachment and is acked; the reference's io.close() is a transport close
    the page comes back from, as it does from camstream's restart."""
    server = reference()
    driver = browsers(*CAMERA).driver
    start_streaming(driver, server.url, "phone", "wrong")
    wait_for(lambda: state(driver)[0].startswith("refused"), 15, what="the page to say refused")
    assert "authentication failed" in state(driver)[0]
    time.sleep(2)
    assert state(driver)[1] == 1, "a refused login was tried again"
    assert server.frames()["frames"] == 0

    start_streaming(driver, server.url, "phone", "secret-pass")
    wait_for(lambda: counter(driver, "accepted") >= 10, 30, what="10 frames acked by the reference")
    assert state(driver)[0] == "streaming as phone"
    sent, accepted = driver.execute_script(
        "return ['sent', 'accepted'].map(id => +document.getElementById(id).textContent)")
    got = server.frames()
    assert got["frames"] >= accepted >= 10, (got, accepted)
    assert got["binary"] == got["frames"] == got["jpeg"], f"frames without a JPEG attachment: {got}"
    assert got["bytes"] > 1000 * got["frames"], got
    assert sent - got["frames"] <= 2, f"sent {sent}, the reference got {got['frames']}"
    assert counter(driver, "refused") == 0

    assert server.stop() == 0
    wait_for(lambda: state(driver)[0].startswith("reconnecting"), 10,
             what="the page to say reconnecting")
    again = reference(server.port)
    wait_for(lambda: again.frames()["jpeg"] >= 5, 5 + 5,
             what="the page streaming into the restarted reference")
    assert state(driver)[0] == "streaming as phone"
