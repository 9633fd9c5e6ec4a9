"""One bounded poll for every wait: no test or benchmark sleeps a fixed time for a condition."""
from __future__ import annotations

import time

import psutil
import requests


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out: a failed assertion to pytest, a timeout to the benchmarks."""


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy and return its value; raise WaitTimeout after
    ``timeout`` seconds. A predicate that raises a connection, lookup or vanished-process error
    counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (requests.RequestException, KeyError, ValueError, psutil.Error):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
