"""Slow work for the isolation benchmark (5): a processor that sleeps, as if it ran a model.

The daemon's workers load it with ``--processor benchmarks.slow:work`` (the repository must be
on their PYTHONPATH); the prototype server calls the same function inside its handler.
``SLOW_WORK_S`` in the environment sets the time per frame (default 0.2 s).
"""
from __future__ import annotations

import os
import time

import cv2

SECONDS = float(os.environ.get("SLOW_WORK_S", "0.2"))


def work(image, header) -> dict:
    """callable(image, header) -> dict, as ``--processor module:attr`` expects."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    time.sleep(SECONDS)
    return {"brightness": round(float(cv2.mean(gray)[0]), 2)}
