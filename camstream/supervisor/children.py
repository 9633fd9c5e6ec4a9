"""What the supervisor runs: a :class:`ChildSpec` per role, and a :class:`Slot` for each child.

A spec says everything that differs between ingest, a worker, a display and the web view: the
command (argv, environment, the config on stdin or nothing), the sockets it inherits, whether
it reports on the bus (and which report proves it ready), whether it is started again, its
share of the stop timeout, and the signal that tells it of a reload. The arbiter's verbs read
specs and never ask which role a child plays.

A slot is one place in the daemon (ingest, worker 2): it outlives the processes that fill it
and keeps their record. Its logic is pure (the clock is passed in), and so is :class:`Boots`,
the restart policy: a child that exits before it was ever ready is started again after a
backoff; one that fails so ``MAX_FAILED_BOOTS`` times in a row will never start, and the
supervisor gives up, as gunicorn does (systemd then applies its own Restart=).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from camstream import proc
from camstream.config import Config
from camstream.liveness import Liveness

WORKER = "worker"       # the role SIGTTIN and SIGTTOU add and retire
MAX_FAILED_BOOTS = 5    # failed boots in a row after which the supervisor gives up
MAX_BACKOFF_S = 10.0    # the longest wait before starting again a child that keeps dying
# what another process sends to stop one (an admin, a test, the OOM killer): a boot they end
# says nothing about whether the child can start, so it is not counted as failed
STOP_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)

WORKER_ENV = {
    # glibc returns freed decode buffers to the kernel at once, which costs ~40 % of decode
    # time (measured before the first build); keep them in the process instead
    "MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024),
}


def worker_env(config: Config) -> dict:
    """A worker's environment: WORKER_ENV, and OpenCV's own pixel limit (a second line behind
    the header check of workers.jpeg) at --max-pixels."""
    return {**WORKER_ENV, "OPENCV_IO_MAX_IMAGE_PIXELS": str(config.max_pixels)}


@dataclass(frozen=True)
class Command:
    """One start of a child: what Popen gets."""

    argv: list[str]
    env: dict[str, str] | None = None   # None: the supervisor's own
    stdin: bytes | None = None          # the config as JSON, or None: /dev/null


def _always_ready(report: dict) -> bool:
    return True


@dataclass(frozen=True)
class ChildSpec:
    title: str                                  # as logs and ps name it: "worker 2"
    role: str                                   # what /healthz and the status count it as
    command: Callable[[Config, int], Command]   # for this config, at this start (0 = first)
    index: int = 0
    sockets: tuple[socket.socket, ...] = ()     # bound by the supervisor, inherited
    reports: bool = True                        # heartbeats on the bus: judged by Liveness
    ready: Callable[[dict], bool] = _always_ready  # the report that proves it serves
    restart: bool = True                        # started again when it exits
    stop_share: float = 1.0                     # gone by this fraction of --stop-timeout
    reload_signal: int | None = None            # sent to it on SIGHUP
    when_gone: str = ""                         # said when one that is not restarted exits

    def fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self.sockets)


def ingest(listener: socket.socket) -> ChildSpec:
    """Ingest on the supervisor's listening socket (a restarted one serves the same port);
    ready once it serves; told of a reload (it re-reads the users file); stopped first of
    those that report, within 0.6 of the stop timeout (it drains into the workers)."""
    def command(config: Config, generation: int) -> Command:
        return Command(proc.python_module("camstream.ingest", str(os.getpid()),
                                          str(listener.fileno()), str(generation)),
                       stdin=config.to_json().encode())
    return ChildSpec("ingest", "ingest", command, sockets=(listener,),
                     ready=lambda report: bool(report.get("serving")), stop_share=0.6,
                     reload_signal=signal.SIGHUP)


def worker(index: int) -> ChildSpec:
    """Worker ``index``, stopped last (it drains its queue)."""
    def command(config: Config, generation: int) -> Command:
        return Command(proc.python_module("workers", str(os.getpid()), str(index)),
                       env={**os.environ, **worker_env(config)},
                       stdin=config.to_json().encode())
    return ChildSpec(f"worker {index}", WORKER, command, index=index)


def display(config: Config) -> ChildSpec:
    """``serve -d``: a display attached like any other (``camstream display``), started
    once; it answers no heartbeat, and when it exits it is not started again."""
    def command(config: Config, generation: int) -> Command:
        return Command(proc.python_module(
            "camstream", "display", "--runtime-dir", config.runtime_dir, "--parent-pid",
            str(os.getpid()), "--log-level", config.log_level))
    return ChildSpec("display", "display", command, reports=False, restart=False,
                     stop_share=0.1, when_gone="serving on without it (attach one with: "
                     f"camstream display --runtime-dir {config.runtime_dir})")


def web_view(listener: socket.socket) -> ChildSpec:
    """``serve --web``: the web view (``camstream display --web``) on the socket bound at
    start; it answers no heartbeat, and is started again when it dies."""
    def command(c: Config, generation: int) -> Command:
        argv = proc.python_module(
            "camstream", "display", "--web", c.web, "--listen-fd", str(listener.fileno()),
            "--runtime-dir", c.runtime_dir, "--parent-pid", str(os.getpid()),
            "--log-level", c.log_level)
        if c.auth:
            argv += ["--auth", "--users", c.users_file]
        if c.certfile:
            argv += ["--certfile", c.certfile, "--keyfile", c.keyfile]
        return Command(argv)
    return ChildSpec("web view", "web", command, sockets=(listener,), reports=False,
                     stop_share=0.1)


def serving(config: Config, listener: socket.socket,
            web_listener: socket.socket | None = None) -> list[ChildSpec]:
    """``camstream serve``: ingest, the workers, and the display and web view if asked."""
    specs = [ingest(listener)] + [worker(i) for i in range(1, config.workers + 1)]
    if config.display:
        specs.append(display(config))
    if web_listener is not None:
        specs.append(web_view(web_listener))
    return specs


def backoff(unready: int) -> float:
    """The wait before the next start after ``unready`` exits in a row before it was ready:
    none after the first (a crash is replaced at once), then doubling up to MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, 0.1 * 2 ** unready) if unready > 1 else 0.0


def failed_by_itself(code: int) -> bool:
    """An exit that is the child's own failure: a non-zero status or a crash (SIGSEGV,
    SIGABRT), not a clean exit or a stop another process asked for."""
    return code > 0 or (code < 0 and -code not in STOP_SIGNALS)


@dataclass
class Boots:
    """A child's exits since it was last ready: the backoff they earn, and whether it has
    failed to boot ``limit`` times in a row (then it never will)."""

    limit: int = MAX_FAILED_BOOTS
    unready: int = 0   # exits in a row before it was ready, whatever ended them
    failed: int = 0    # of which its own failure, or killed for never reporting

    def ended(self, ready: bool, code: int, killed_silent: bool = False) -> float:
        """Count one exit; the delay before the next start."""
        if ready:
            self.unready = self.failed = 0
            return 0.0
        self.unready += 1
        if killed_silent or failed_by_itself(code):
            self.failed += 1
        return backoff(self.unready)

    @property
    def exhausted(self) -> bool:
        return self.failed >= self.limit


@dataclass
class Slot:
    """A place for one child: ingest, or worker N. It outlives the processes that fill it."""

    spec: ChildSpec
    proc: subprocess.Popen | None = None
    started: float = 0.0
    last_beat: float | None = None
    ready: bool = False           # this process sent the report that proves it serves
    killed_silent: bool = False   # the supervisor killed this process for its silence
    boots: Boots = field(default_factory=Boots)
    not_before: float = 0.0
    restarts: int = 0
    spawned: int = 0
    retiring: bool = False
    extra: dict = field(default_factory=dict)   # its last report on the bus

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def role(self) -> str:
        return self.spec.role

    def began(self, process: subprocess.Popen, now: float) -> None:
        self.proc = process
        self.started = now
        self.last_beat = None
        self.ready = self.killed_silent = False
        if self.spawned:
            self.restarts += 1
        self.spawned += 1

    def heard(self, report: dict, now: float) -> None:
        """A report of its process on the bus: a heartbeat, and maybe the proof it serves."""
        self.last_beat = now
        self.extra = report
        if not self.ready and self.spec.ready(report):
            self.ready = True

    def overdue(self, now: float, liveness: Liveness) -> float | None:
        """Seconds of silence, if it reports and has been silent too long (hung)."""
        if self.proc is None or not self.spec.reports or self.killed_silent:
            return None
        return liveness.overdue(self.started, self.last_beat, now)

    def ended(self, code: int, now: float, liveness: Liveness) -> float:
        """Its process exited with ``code`` (negative: killed by that signal); the delay
        before the next start. One that does not report proves itself by running for the
        start grace."""
        ready = self.ready or (not self.spec.reports and
                               now - self.started > liveness.start_grace_s)
        self.proc = None
        delay = self.boots.ended(ready, code, self.killed_silent)
        self.not_before = now + delay
        return delay

    def alive(self, now: float, liveness: Liveness) -> bool:
        return self.proc is not None and liveness.alive(self.last_beat, now)
