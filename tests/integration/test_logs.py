"""What the daemon's log and status say, read as a user reads them: counts in words, option
names as the user types them, the signal that really came, times on a terminal, the daemon's
age."""
from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time

import psutil
import requests

from tests.helpers import ROOT, free_port, proc_title, wait_for
from test_scaleout import make_keys


class Serve:
    """``camstream serve`` with exactly the given arguments (no -w: the config file's count
    must be what SIGHUP re-reads), its output in a file; stopped by pid."""

    def __init__(self, tmp_path, *args: str, stderr=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1", "-p",
             str(self.port), "--runtime-dir", str(tmp_path / f"run-{self.port}"), *args],
            stdout=self.log, stderr=stderr or subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=2).json()

    def stop(self) -> None:
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for k in kids:
            if k.is_running():
                k.kill()
        self.log.close()


def test_reload_says_option_names_and_sighup(tmp_path):
    conf = tmp_path / "camstream.conf"
    conf.write_text("workers = 1\nmax-fps = 50\n")
    d = Serve(tmp_path, "--config", str(conf))
    try:
        wait_for(lambda: "ready:" in d.output(), 30, what="the daemon ready")
        out = d.output()
        assert "(1 worker; runtime dir" in out and "with 1 worker\n" in out, out
        assert "1 workers" not in out
        conf.write_text("workers = 2\nmax-fps = 60\nmax-frame-size = 1MiB\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP (workers = 2): adding worker 2 (2 workers)" in d.output(), 15,
                 what=f"the new worker logged:\n{d.output()}")
        assert "need a restart (systemctl restart camstream): max-frame-size, max-fps" \
            in d.output(), d.output()
        assert "SIGTTIN" not in d.output()
        wait_for(lambda: d.health()["workers"]["alive"] == 2, 30, what="two workers up")
    finally:
        d.stop()


def test_uptime_is_the_daemons_not_ingests(tmp_path):
    d = Serve(tmp_path, "-w", "1")
    try:
        wait_for(lambda: d.health()["workers"]["alive"] == 1, 30, what="the daemon ready")
        time.sleep(3)
        ingest = next(p for p in psutil.Process(d.proc.pid).children()
                      if proc_title(p) == "camstream: ingest")
        ingest.kill()
        h = wait_for(lambda: (h := d.health())["ingest"]["restarts"] == 1 and h, 30,
                     what="ingest restarted")
        assert h["uptime_s"] >= h["ingest"]["uptime_s"] + 2.5, h
        status = subprocess.run([sys.executable, "-m", "camstream", "status", d.url],
                                capture_output=True, text=True, timeout=30)
        up = int(re.search(r"^up (\d+) s;", status.stdout, re.M).group(1))
        assert up >= 3, status.stdout
    finally:
        d.stop()


def test_terminal_logs_have_times_and_journald_logs_do_not(tmp_path):
    master, slave = pty.openpty()
    d = Serve(tmp_path, "-w", "1", stderr=slave)
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"ready:" not in seen and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        lines = [line for line in seen.decode().splitlines() if "camstream: " in line]
        assert lines and all(re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) camstream: ", line)
                             for line in lines), lines
    finally:
        d.stop()
        os.close(master)
    plain = Serve(tmp_path, "-w", "1")  # a file, as under journald: no times
    try:
        wait_for(lambda: "ready:" in plain.output(), 30, what="ready")
        assert plain.output().startswith("INFO camstream: supervisor: starting"), \
            plain.output()
    finally:
        plain.stop()


def test_help_and_pool_lines(tmp_path):
    for verb in ("worker", "pool"):
        out = subprocess.run([sys.executable, "-m", "camstream", verb, "--help"],
                             capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"--log-level \{[^}]+\}\s+log verbosity", out), out
    pool_help = subprocess.run([sys.executable, "-m", "camstream", "pool", "--help"],
                               capture_output=True, text=True, timeout=30).stdout
    assert "where ingest nodes ('serve --ingest-only') and remote workers connect" in \
        " ".join(pool_help.split())
    keys = make_keys(tmp_path / "keys")
    port = free_port(3)
    log = tmp_path / "pool.log"
    with open(log, "w") as out:
        pool = subprocess.Popen([sys.executable, "-m", "camstream", "pool", "--worker-endpoint",
                                 f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys), "-w",
                                 "1", "--runtime-dir", str(tmp_path / "pool-run")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(lambda: "ready: 1 worker" in log.read_text(), 30,
                     what=f"the pool ready:\n{log.read_text()}")
            assert "camstream: pool: frames from ingest nodes on" in log.read_text()
            assert "pool: pool:" not in log.read_text()
        finally:
            pool.send_signal(signal.SIGTERM)
            pool.wait(timeout=30)
