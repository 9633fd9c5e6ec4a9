"""The camera page end to end: headless Chromium with its fake camera opens ``/camera`` over
https (a certificate from ``camstream tls generate``), logs in to ``serve -a`` and streams
through the page's own Engine.IO 4 client; the daemon's counters show the frames processed."""
from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from browser import CAMERA, browsers, needs_chromium, save_screenshot  # noqa: F401
from conftest import ROOT, make_users, wait_for

pytestmark = needs_chromium


@pytest.fixture
def https_daemon(daemons, tmp_path):
    users = make_users(tmp_path, phone="secret-pass")
    subprocess.run([sys.executable, "-m", "camstream", "tls", "generate", str(tmp_path / "tls")],
                   check=True, capture_output=True, timeout=30, cwd=ROOT)
    cert, key = str(tmp_path / "tls" / "cert.pem"), str(tmp_path / "tls" / "key.pem")
    d = daemons("-a", "--users", str(users), "--metrics-trust-loopback", "--certfile", cert,
                "--keyfile", key, workers=1, ready=False)
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


def test_a_wrong_password_is_shown_as_refused(https_daemon, browsers):  # noqa: F811
    driver = browsers("--ignore-certificate-errors", *CAMERA).driver
    start_streaming(driver, https_daemon.url, "phone", "wrong")
    wait_for(lambda: driver.find_element("id", "state").text.startswith("refused"), 15,
             what="the page to say refused")
    assert "authentication failed" in driver.find_element("id", "state").text
    assert counter(driver, "sent") == 0
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
