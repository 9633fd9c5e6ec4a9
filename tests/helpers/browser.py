"""Real browsers for the tests: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver (never a driver downloaded at run time). Each browser has a fresh
profile and is stopped by its driver's pid; ``freeze()`` SIGSTOPs the whole browser (every
process of its tree) to play a tab that stops reading."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# --disable-background-networking and friends: nothing but our page may use the network (a
# machine without one refuses the browser's own connections, and CI has none to spare)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]
CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def have_chromium() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(DRIVER)


needs_chromium = pytest.mark.skipif(
    not have_chromium(), reason="needs chromium and chromium-driver (tests/setup.sh installs "
    "them as root)")


class Browser:
    """One headless chromium; ``driver`` is its selenium WebDriver."""

    def __init__(self, *flags: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self.profile = tempfile.mkdtemp(prefix="camstream-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, *flags, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        self.service = Service(executable_path=DRIVER)
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(30)
        self.frozen: list[psutil.Process] = []

    def processes(self) -> list[psutil.Process]:
        """The browser's processes (chromium and its renderers), not the driver."""
        try:
            return psutil.Process(self.service.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def freeze(self) -> int:
        self.frozen = self.processes()
        for p in self.frozen:
            p.send_signal(signal.SIGSTOP)
        return len(self.frozen)

    def thaw(self) -> None:
        for p in self.frozen:
            try:
                p.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
        self.frozen = []

    def quit(self) -> None:
        self.thaw()
        left = self.processes()
        try:
            self.driver.quit()
        except Exception:  # a browser that died already: its processes are killed below
            pass
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browsers():
    """Start browsers with ``browsers(*flags)``; each is stopped after the test."""
    started: list[Browser] = []

    def start(*flags: str) -> Browser:
        b = Browser(*flags)
        started.append(b)
        return b
    yield start
    for b in started:
        b.quit()


def save_screenshot(png: bytes, name: str, tmp: Path) -> Path:
    """Keep a screenshot with the test's files; with CAMSTREAM_SCREENSHOTS=DIR also in DIR
    (how the README's pictures in docs/images are made: by the test run, not by hand)."""
    path = tmp / name
    path.write_bytes(png)
    folder = os.environ.get("CAMSTREAM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)
    return path
