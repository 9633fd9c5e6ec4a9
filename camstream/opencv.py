"""Which OpenCV build is installed, and one line saying what to install when it will not do.

OpenCV comes as two wheels that install the same ``cv2`` package and must not be installed
together: opencv-python-headless (needs no X libraries: servers, workers, ``display
--snapshot``) and opencv-python (adds windows, and needs X libraries even to import). camstream
depends on neither: its extras pick one, ``camstream[headless]`` or ``camstream[gui]``.
"""
from __future__ import annotations

from types import ModuleType

CHOOSE = ("install one OpenCV build: pip install 'camstream[headless]' (servers: no X "
          "libraries needed) or 'camstream[gui]' (display windows)")
HEADLESS_INSTEAD = ("pip uninstall -y opencv-python && pip install "
                    "'opencv-python-headless>=4.8,<5'")
GUI_INSTEAD = ("pip uninstall -y opencv-python-headless && pip install "
               "'opencv-python>=4.8,<5'")


class OpenCVUnusable(Exception):
    """OpenCV is missing, cannot load, or lacks what is asked of it: the message says why and
    what to install."""


def require() -> ModuleType:
    """``cv2``, or OpenCVUnusable with one line saying what to install."""
    try:
        import cv2
    except ImportError as e:
        raise OpenCVUnusable(explain(e)) from None
    return cv2


def explain(error: ImportError) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name in ("cv2", "numpy"):
        return f"OpenCV is not installed: {CHOOSE}"
    # the GUI build on a machine without X: "libxcb.so.1: cannot open shared object file"
    return (f"OpenCV cannot be loaded here ({error}); on a machine without X libraries use "
            f"the headless build: {HEADLESS_INSTEAD}")


def has_gui(cv2: ModuleType) -> bool:
    """True unless this build says ``GUI: NONE`` (the headless wheels)."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GUI":
            return value.strip().upper() != "NONE"
    return True


def require_gui() -> ModuleType:
    """``cv2`` with windows, or OpenCVUnusable saying how to get them (or to use files)."""
    cv2 = require()
    if not has_gui(cv2):
        raise OpenCVUnusable("this OpenCV is the headless build, which has no windows: use "
                             f"--snapshot DIR, or install the GUI build in its place: "
                             f"{GUI_INSTEAD}")
    return cv2
