"""A virtual screen for tests that open windows: Xvfb on a display number it picks itself,
plus the X tools the tests look through (xdotool to find windows by name, ImageMagick's
``import`` to take screenshots). Stopped by pid."""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest
from tests.helpers import terminate

TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "import": "imagemagick"}


class Screen:
    """One running Xvfb; ``env`` is what a process needs to open windows on it."""

    def __init__(self, proc: subprocess.Popen, number: int) -> None:
        self.proc = proc
        self.display = f":{number}"
        self.env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
        self.env["DISPLAY"] = self.display

    def run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, timeout=timeout,
                              check=False)

    def windows(self, name: str) -> list[str]:
        """Ids of the visible windows titled exactly ``name``."""
        out = self.run("xdotool", "search", "--onlyvisible", "--name", f"^{name}$")
        return out.stdout.decode().split()

    def screenshot(self, window: str) -> np.ndarray | None:
        """The window's pixels as a BGR image (None if it vanished meanwhile)."""
        try:  # on a window id that is gone, import waits for a click instead
            out = self.run("import", "-window", window, "png:-", timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode or not out.stdout:
            return None
        return cv2.imdecode(np.frombuffer(out.stdout, np.uint8), cv2.IMREAD_COLOR)

    def save(self, path: str) -> None:
        """The whole screen as a PNG file."""
        subprocess.run(["import", "-window", "root", path], env=self.env, check=True,
                       timeout=20)

    def stop(self) -> None:
        terminate(self.proc)


def start_xvfb(width: int = 1600, height: int = 1200, timeout: float = 10) -> Screen:
    """Start Xvfb with -displayfd, so it takes a free display number and tells us which."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(read_fd, 16)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
    if not data.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"Xvfb did not start within {timeout} s")
    return Screen(proc, int(data))


@pytest.fixture(scope="module")
def screen():
    """A virtual screen for the module's tests; skipped if the X tools are not installed."""
    missing = [f"{tool} (package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        pytest.skip("needs " + ", ".join(missing) + ": run tests/setup.sh as root")
    s = start_xvfb()
    yield s
    s.stop()
