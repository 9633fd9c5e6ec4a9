"""A child that can never start stops ``camstream serve``: after five failed boots in a row the
supervisor says so in one line, stops everything and exits with status 1, so that systemd sees
the failure (it used to restart the child every 10 s forever)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import ROOT, free_port

# imports in the serve command's own check, fails in a worker (as a processor whose import
# needs what only the worker's environment has)
FAILING_PROCESSOR = '''
import setproctitle
if setproctitle.getproctitle().startswith("camstream: worker"):
    raise ImportError("failproc cannot be imported in a worker (a test)")

def process(image, header):
    return {}
'''
BROKEN_GEVENT = 'raise ImportError("gevent is broken here (a test)")\n'  # ingest's alone


@pytest.mark.parametrize("child", ["ingest", "worker 1"])
def test_a_child_that_never_starts_stops_serve_with_one_line(tmp_path, child):
    modules = tmp_path / "modules"
    modules.mkdir()
    if child == "ingest":
        (modules / "gevent.py").write_text(BROKEN_GEVENT)
        extra = []
    else:
        (modules / "failproc.py").write_text(FAILING_PROCESSOR)
        extra = ["--processor", "failproc:process"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1", "-p", str(free_port()),
         "-w", "1", "--runtime-dir", str(tmp_path / "run"), "--log-level", "debug", *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(modules)})
    took = time.monotonic() - started
    log = result.stderr
    assert result.returncode == 1, log[-3000:]
    # five boots of a second or so each, and 2.8 s of backoff between them (a loaded machine
    # takes longer to start an interpreter)
    assert took < 60, took
    errors = [line for line in log.splitlines() if line.startswith("ERROR camstream: ")]
    assert len(errors) == 1, errors
    assert re.fullmatch(
        rf"ERROR camstream: supervisor: {child} failed to start 5 times in a row \(the last, "
        r"pid \d+, exited with status 1 after \d+\.\d s, before it was ready\): giving up, "
        r"stopping camstream", errors[0]), errors[0]
    restarts = re.findall(rf"^WARNING camstream: supervisor: {child} \(pid \d+\) exited with "
                          r"status 1 after .*; restarting", log, re.M)
    assert len(restarts) == 4, log[-3000:]  # the fifth failure is the error
    assert log.rstrip().endswith("INFO camstream: supervisor: stopped"), log[-2000:]
    spawned = [int(pid) for pid in re.findall(r"spawned .* \(pid (\d+)\)", log)]
    assert len(spawned) >= 6  # the failing child five times, the other once at least
    left = [pid for pid in spawned if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"children left behind: {left}"
