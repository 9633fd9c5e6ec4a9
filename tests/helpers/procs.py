"""The processes the tests and benchmarks start: ``camstream serve`` and the CLI, each stopped by
its own pid with bounded waits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from tests.helpers.ports import free_port
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def terminate(proc: subprocess.Popen, timeout: float = 5, kill_timeout: float = 10) -> int:
    """Stop a process a test started, by its pid: SIGTERM, a bounded wait, then SIGKILL and a
    wait of ``kill_timeout`` s for it to go (TimeoutExpired past that: a process stuck in the
    kernel, which a test must not wait for forever)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=kill_timeout)
    return proc.returncode


def kill_leftovers(procs: list[psutil.Process]) -> None:
    """SIGKILL those of ``procs`` still running: the children a stopped process left behind."""
    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass


def proc_title(p: psutil.Process) -> str:
    """The title a process gave itself, as ps shows it (setproctitle pads with spaces)."""
    return " ".join(p.cmdline()).strip()


def make_users(tmp_path: Path, **users: str) -> Path:
    """A users file with these name=password entries, written by ``camstream users add``."""
    path = tmp_path / "users"
    for name, password in users.items():
        subprocess.run([sys.executable, "-m", "camstream", "users", "add", name,
                        "--password-stdin", "--users", str(path)],
                       input=password + "\n", text=True, check=True, capture_output=True,
                       timeout=30)
    return path


class Daemon:
    """``camstream serve`` in a subprocess of its own. ``cwd`` and ``env`` let the benchmarks
    run a snapshot of the tree; ``stop`` and ``shutdown`` are bounded."""

    kind = "camstream serve"
    health_timeout = 2.0

    def __init__(self, tmp: Path, *args: str, workers: int = 2, env: dict | None = None,
                 port: int | None = None, cwd: Path = ROOT):
        self.port = port or free_port()  # a port: the daemon that ran there before is back
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = tmp / f"run-{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        for n in range(2, 100):  # each start on one port logs to a file of its own
            if not self.log_path.exists():
                break
            self.log_path = tmp / f"serve-{self.port}-{n}.log"
        self.workers = workers
        self.argv = [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
                     "-p", str(self.port), "-w", str(workers),
                     "--runtime-dir", str(self.runtime_dir), *args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd)

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=self.health_timeout).json()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n"
                                 + self.output()[-3000:])

    def wait_ready(self, timeout: float = 30) -> dict:
        def ready():
            self.check_alive()
            h = self.health()
            return h if h["workers"]["alive"] >= self.workers else None
        return wait_for(ready, timeout, what="the daemon to be ready")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def child(self, title: str) -> psutil.Process | None:
        """The child process titled ``camstream: <title>``, if there is one now."""
        for p in self.children():
            try:
                if proc_title(p) == f"camstream: {title}":
                    return p
            except psutil.Error:
                pass
        return None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def shutdown(self) -> None:
        """Stop the daemon, then kill any child it left behind (a test must leave nothing)."""
        leftovers = self.children()
        self.stop()
        kill_leftovers(leftovers)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in self.children():
                    p.kill()
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
