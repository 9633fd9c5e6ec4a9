"""The web view end to end: a real daemon with ``serve --web``, real socket.io clients, real
headless Chromium looking at the page (tiles found by client name, pixels compared between
screenshots), a browser SIGSTOPped to play a tab that stops reading."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import psutil
import pytest
import requests
from tests.helpers.browser import browsers, needs_chromium, save_screenshot  # noqa: F401  (the fixture)
from tests.helpers import ROOT, free_port, make_users, wait_for
from tests.helpers.streaming import Streamer

pytestmark = needs_chromium


def tiles(driver) -> dict[str, int]:
    """Client name -> sequence number of the frame its tile shows (0: none drawn yet)."""
    from selenium.webdriver.common.by import By
    shown = {}
    for el in driver.find_elements(By.CSS_SELECTOR, "section.tile"):
        try:
            shown[el.get_attribute("data-client")] = int(el.get_attribute("data-seq") or 0)
        except Exception:  # the tile went while we looked: the next look sees it gone
            pass
    return shown


def text_of(driver, element_id: str) -> str:
    """An element's text, or "" while the page is being replaced (after a form's submit)."""
    from selenium.common.exceptions import WebDriverException
    try:
        return driver.find_element("id", element_id).text
    except WebDriverException:
        return ""


def log_in(driver, user: str, password: str) -> None:
    wait_for(lambda: text_of(driver, "submit") == "Log in", 10, what="the login form")
    driver.find_element("id", "username").send_keys(user)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "submit").click()


def wrong_login(driver, user: str, password: str) -> str:
    """Log in with a wrong password; the refusal the new page shows."""
    from selenium.webdriver.support import expected_conditions
    old = driver.find_element("id", "message")
    log_in(driver, user, password)
    wait_for(lambda: expected_conditions.staleness_of(old)(driver), 10, what="the page replaced")
    return wait_for(lambda: (m := text_of(driver, "message")) and (
        "too many failed logins" in m or "wrong user name" in m) and m, 10,
        what="the refusal")


def tile_pixels(driver, name: str) -> np.ndarray:
    from selenium.webdriver.common.by import By
    canvas = driver.find_element(By.CSS_SELECTOR, f'section.tile[data-client="{name}"] canvas')
    return cv2.imdecode(np.frombuffer(canvas.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR)


def shows(driver, names: set[str], timeout: float = 20) -> dict[str, int]:
    """Wait until the page has exactly these tiles, each with a frame drawn."""
    return wait_for(lambda: (lambda t: set(t) == names and all(t.values()) and t)(
        tiles(driver)), timeout, what=f"tiles {sorted(names)}")


@pytest.fixture
def streams():
    made: list[Streamer] = []

    def start(url: str, name: str, fps: float = 10, password: str = "") -> Streamer:
        s = Streamer(url, name, fps=fps, password=password)
        s.sio.eio.ssl_verify = False  # https with the test's self-signed certificate
        made.append(s.start())
        return s
    yield start
    for s in made:
        s.stop()


def web_daemon(daemons, *args: str):
    port = free_port()
    d = daemons("--web", f"127.0.0.1:{port}", *args, workers=1)
    d.web = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(d.web + "/healthz", timeout=2).ok, 20,
             what="the web view to answer")
    return d


def test_tiles_follow_the_clients(daemons, streams, browsers, tmp_path):  # noqa: F811
    d = web_daemon(daemons)
    streams(d.url, "alice")
    bob = streams(d.url, "bob")
    driver = browsers().driver
    driver.get(d.web + "/")
    first = shows(driver, {"alice", "bob"})
    before = {name: tile_pixels(driver, name) for name in first}
    save_screenshot(driver.get_screenshot_as_png(), "webview.png", tmp_path)
    for name, old in before.items():  # the streams cycle through 8 pictures
        def changed(name=name, old=old):
            new = tile_pixels(driver, name)
            return new.shape == old.shape and np.abs(new.astype(int) - old.astype(int)).mean() > 1
        wait_for(changed, 10, interval=0.05, what=f"{name}'s tile to show another picture")
    titles = {el.text for el in driver.find_elements("css selector", "section.tile h2 a")}
    assert titles == {"alice", "bob"}

    bob.stop()
    shows(driver, {"alice"}, timeout=15)
    streams(d.url, "carol")
    shows(driver, {"alice", "carol"})

    driver.get(d.web + "/client/carol")  # one tile alone
    shows(driver, {"carol"})
    figures = driver.find_element("css selector", "section.tile .figures").text
    assert "fps" in figures and "ms" in figures and "dropped" in figures
    driver.find_element("id", "processed").click()  # the processor's view: its result shows
    wait_for(lambda: "brightness" in driver.find_element("css selector", ".result").text, 10,
             what="carol's processor result under her tile")


@pytest.mark.serial
def test_a_stopped_browser_slows_neither_ingest_nor_another_viewer(daemons, streams,
                                                                   browsers):  # noqa: F811
    d = web_daemon(daemons)
    streams(d.url, "dora", fps=15)
    watcher, stopped = browsers(), browsers()
    for b in (watcher, stopped):
        b.driver.get(d.web + "/")
        shows(b.driver, {"dora"})

    def rates(seconds: float = 6.0) -> tuple[float, float]:
        """(frames ingest received a second, tile updates a second in ``watcher``)."""
        r0, t0 = d.health()["totals"]["received"], tiles(watcher.driver)["dora"]
        start = time.monotonic()
        time.sleep(seconds)
        r1, t1 = d.health()["totals"]["received"], tiles(watcher.driver)["dora"]
        took = time.monotonic() - start
        return (r1 - r0) / took, (t1 - t0) / took

    ingest_before, view_before = rates()
    assert stopped.freeze() >= 1
    time.sleep(2)  # its connections fill up and stall
    ingest_frozen, view_frozen = rates()
    assert psutil.Process(stopped.processes()[0].pid).status() == psutil.STATUS_STOPPED
    stopped.thaw()
    assert ingest_before > 10, f"the client streams at 15 fps; ingest saw {ingest_before:.1f}"
    assert ingest_frozen > 0.85 * ingest_before, (ingest_before, ingest_frozen)
    assert view_frozen > 0.7 * view_before, (view_before, view_frozen)
    # the stopped browser's page catches up with the newest frame, not a backlog
    newest = d.health()["clients"]["dora"]["received"]
    wait_for(lambda: tiles(stopped.driver).get("dora", 0) >= newest, 15,
             what="the thawed browser to show the newest frame")


def test_login_required_under_auth_over_tls(daemons, streams, browsers, tmp_path):  # noqa: F811
    users = make_users(tmp_path, erin="right-one")
    subprocess.run([sys.executable, "-m", "camstream", "tls", "generate", str(tmp_path / "tls")],
                   check=True, capture_output=True, timeout=30, cwd=ROOT)
    cert, key = str(tmp_path / "tls" / "cert.pem"), str(tmp_path / "tls" / "key.pem")
    port = free_port()
    d = daemons("-a", "--users", str(users), "--certfile", cert, "--keyfile", key,
                "--web", f"127.0.0.1:{port}", workers=1, ready=False)
    d.url = d.url.replace("http:", "https:")
    d.health = lambda: requests.get(d.url + "/healthz", timeout=2, verify=cert).json()
    d.wait_ready()
    web = f"https://127.0.0.1:{port}"
    wait_for(lambda: requests.get(web + "/healthz", timeout=2, verify=cert).ok, 20,
             what="the web view on https")
    streams(d.url, "erin", password="right-one")

    # nothing without a login: no state, no frames, a login form instead of the page
    assert requests.get(web + "/api/state", timeout=5, verify=cert).status_code == 401
    assert requests.get(web + "/api/frame/erin", timeout=5, verify=cert).status_code == 401
    assert requests.get(web + "/api/state", auth=("erin", "wrong"), timeout=5,
                        verify=cert).status_code == 401
    page = requests.get(web + "/", timeout=5, verify=cert)
    assert page.status_code == 401 and 'name="password"' in page.text and "view.js" not in page.text

    driver = browsers("--ignore-certificate-errors").driver
    driver.get(web + "/")
    log_in(driver, "erin", "wrong")
    wait_for(lambda: "wrong user name or password" in text_of(driver, "message"), 10,
             what="the refusal on the login page")
    assert not tiles(driver)
    # a wrong try soon after is throttled, like a socket.io login: the wait doubles with each
    # failure from 0.5 s, so a browser slower than that (a loaded machine) soon lands in one
    message = ""
    for _ in range(5):
        message = wrong_login(driver, "erin", "wrong again")
        if "too many failed logins" in message:
            break
    assert "too many failed logins" in message, message
    assert not tiles(driver)
    time.sleep(int(re.search(r"try again in (\d+) s", message).group(1)) + 0.3)
    log_in(driver, "erin", "right-one")
    shows(driver, {"erin"})
    cookie = driver.get_cookie("camstream_view")
    assert cookie and cookie["httpOnly"] and cookie["secure"]


def test_the_web_view_is_restarted_when_it_dies(daemons):
    d = web_daemon(daemons)
    view = wait_for(lambda: d.child("web view"), 10, what="the web view process")
    view.send_signal(signal.SIGKILL)
    view.wait(10)
    again = wait_for(lambda: (lambda p: p and p.pid != view.pid and p)(d.child("web view")),
                     15, what="a new web view")
    wait_for(lambda: requests.get(d.web + "/healthz", timeout=2).ok, 20,
             what="the new web view to answer")
    assert again.pid != view.pid
    assert "web view" in d.output() and "restarting" in d.output()


@pytest.mark.parametrize("argv, says", [
    (["serve", "--web", "99999"], "--web: expected [HOST:]PORT"),
    (["display", "--web", "host:x"], "--web: expected [HOST:]PORT"),
    (["display", "--web", "8080", "--runtime-dir", "/nonexistent/run"], "no camstream daemon"),
])
def test_web_flag_mistakes_are_one_line(argv, says):
    r = subprocess.run([sys.executable, "-m", "camstream", *argv], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_idle_connections_from_one_address_are_capped(daemons):
    """An address holding MAX_PER_ADDRESS idle connections (a slowloris) gets its next one
    closed at once; the view answers again as soon as they go."""
    import socket

    from camstream.attach.webview import MAX_PER_ADDRESS
    d = web_daemon(daemons)
    held = [socket.create_connection(("127.0.0.1", int(d.web.rsplit(":", 1)[1])), timeout=5)
            for _ in range(MAX_PER_ADDRESS)]
    try:
        time.sleep(0.5)  # the view has accepted them all
        with pytest.raises(requests.ConnectionError):
            requests.get(d.web + "/healthz", timeout=5)
    finally:
        for s in held:
            s.close()
    assert "refusing connections from 127.0.0.1" in d.output()
    wait_for(lambda: requests.get(d.web + "/healthz", timeout=2).ok, 10,
             what="the view to answer once the idle connections went")


def test_boxes_of_a_result_are_drawn_over_the_frame(daemons, browsers):  # noqa: F811
    """motion without its own annotation: the page draws the result's boxes itself."""
    port = free_port()
    d = daemons("--web", f"127.0.0.1:{port}", "--processor", "motion",
                "--processor-opt", "annotate=false", workers=1)
    moving = []
    for i in range(8):  # a white square sliding over black: motion every frame
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.rectangle(img, (20 + 30 * i, 80), (80 + 30 * i, 140), (255, 255, 255), -1)
        moving.append(cv2.imencode(".jpg", img)[1].tobytes())
    s = Streamer(d.url, "hana", fps=10, frames=moving).start()
    try:
        driver = browsers().driver
        driver.get(f"http://127.0.0.1:{port}/client/hana?kind=processed")
        shows(driver, {"hana"})

        def box_drawn():  # the page's box colour, #4fc3f7, in BGR
            px = tile_pixels(driver, "hana").astype(int)
            near = (np.abs(px - (247, 195, 79)).sum(axis=2) < 60).sum()
            return near > 100
        wait_for(box_drawn, 20, interval=0.2, what="a box drawn over hana's frame")
        assert "motion: " in driver.find_element("css selector", ".result").text
    finally:
        s.stop()


@pytest.mark.parametrize("text, host, port", [
    ("8081", "10.0.0.5", 8081), ("127.0.0.1:8081", "127.0.0.1", 8081),
    ("[::1]:9000", "::1", 9000), (":8081", "10.0.0.5", 8081)])
def test_web_address(text, host, port):
    from camstream.attach.webview import web_address
    assert web_address(text, "10.0.0.5") == (host, port)


@pytest.mark.parametrize("text", ["", "x", "host:", "host:0", "host:70000", "8081:host"])
def test_web_address_refuses(text):
    from camstream.attach.webview import web_address
    with pytest.raises(ValueError, match=r"\[HOST:\]PORT"):
        web_address(text, "0.0.0.0")
