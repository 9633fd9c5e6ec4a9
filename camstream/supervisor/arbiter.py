"""The supervisor: the ``camstream serve`` process (plain Python, no gevent).

Shaped like gunicorn's arbiter. Signals are queued and wake the loop through a self-pipe; the
loop handles one (``handle_term``, ``handle_hup``, ``handle_ttin``...) and then runs the same
verbs every turn:

- ``murder``: kill a child whose heartbeat on the bus is too old (hung);
- ``reap``: collect children that exited, and say why;
- ``manage``: spawn what is missing (with backoff for a child that keeps dying);
- ``stop``: on SIGTERM/SIGINT, ingest first (it drains into the workers), then the workers
  (they drain their queues), each within a bound, then SIGKILL.

Children are fresh interpreters (no fork of anything gevent-patched), started with the config
as JSON on stdin; they die with the supervisor even if it is SIGKILLed (PR_SET_PDEATHSIG).
The supervisor owns the listening socket and hands it to ingest, so a restarted ingest serves
the same port and connections wait in the backlog meanwhile. It also hosts the bus proxy.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from camstream import bus, proc, wire
from camstream.config import Config
from camstream.supervisor.notify import Notifier
from camstream.rundir import RuntimeDirError
from camstream.ingest.ledger import WORKER_STALE_S  # what /healthz calls alive

log = logging.getLogger("camstream.supervisor")
# Config fields whose option (and --config key) has another name: logs say the option
OPTION_OF = {"max_frame_bytes": "max-frame-size", "users_file": "users",
             "processor_options": "processor-opt", "record_dir": "record"}

TICK = 0.5                # seconds between turns of the loop when nothing happens
FRESH = 2.0               # a heartbeat younger than this proves its sender answers
STATUS_EVERY = 2.0        # seconds between STATUS= lines to systemd
START_GRACE = 30.0        # time a new child has to send its first heartbeat
STALLED = 2.0             # a turn of the loop this late means the supervisor itself stalled
MAX_BACKOFF = 10.0

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


@dataclass
class Slot:
    """A place for one child: ingest, or worker N. It outlives the processes that fill it."""

    role: str
    index: int = 0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    last_beat: float | None = None
    failures: int = 0
    not_before: float = 0.0
    restarts: int = 0
    spawned: int = 0
    retiring: bool = False
    extra: dict = field(default_factory=dict)   # its last report on the bus

    @property
    def title(self) -> str:
        if self.role == "web":
            return "web view"
        return self.role if self.role in ("ingest", "display") else f"{self.role} {self.index}"


class Supervisor:
    SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCHLD")

    def __init__(self, config: Config, listener: socket.socket, notifier: Notifier,
                 reload: Callable[[], Config] | None = None,
                 web_listener: socket.socket | None = None) -> None:
        self.config = config
        self.listener = listener
        self.web_listener = web_listener  # serve --web: bound once, handed to each web view
        self.notifier = notifier
        self.reload = reload          # re-reads the configuration file, for SIGHUP
        self.ctx = zmq.Context()
        self.slots: list[Slot] = [Slot("ingest")]
        self.slots += [Slot("worker", i) for i in range(1, config.workers + 1)]
        if config.display:
            self.slots.append(Slot("display"))
        if web_listener is not None:
            self.slots.append(Slot("web"))
        self.signals: list[int] = []
        self.stopping = False
        self.ready = False
        self.last_tick = 0.0
        self.last_turn = 0.0          # when the loop last ran (see judge_own_stall)
        self.bus_failed = False       # the bus could not be bound again (check_bus)
        self.last_watchdog = 0.0
        self.status_sent = 0.0
        self.last_status = (0.0, 0, 0)  # time, received, processed at the last STATUS=
        self.started = time.time()      # the daemon's age (/healthz uptime_s), not ingest's
        self.remote: dict[tuple, tuple[float, dict]] = {}  # (host, pid) -> last seen, report

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        try:
            while not self.stopping:
                self.sleep()
                while self.signals:
                    sig = self.signals.pop(0)
                    getattr(self, "handle_" + signal.Signals(sig).name[3:].lower())()
                if self.stopping:
                    break
                self.judge_own_stall()
                self.read_heartbeats()
                self.check_bus()
                self.murder()
                self.reap()
                self.manage()
                if time.monotonic() - self.last_tick >= TICK:  # not per heartbeat received
                    self.last_tick = time.monotonic()
                    self.publish_status()
                    self.notify()
        finally:
            self.stop()
        return 0

    def start(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), lambda sig, frame: self.signals.append(sig))
        self.open_bus()
        self.poller = zmq.Poller()
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.poller.register(self.beats, zmq.POLLIN)
        roles = sorted({s.title.split()[0] for s in self.slots})
        log.info("starting %s (%s; runtime dir %s)", ", ".join(roles),
                 plural(self.worker_count(), "worker"), self.config.runtime_dir)
        self.manage()

    def open_bus(self) -> None:
        """Host the bus (on tcp too with --worker-endpoint, CURVE-checked by a ZAP thread), or
        with --ingest-only join the pool's over tcp; then publish and listen on it."""
        offer, to = bus.offered(self.config), bus.reached(self.config)
        self.zap = offer.curve.authenticator(self.ctx) if offer else None
        self.proxy = None if to else bus.BusProxy(self.ctx, self.config.runtime_dir, offer)
        if self.proxy is not None:
            self.proxy.start()
        self.bus_pub = bus.bus_pub(self.ctx, self.config.runtime_dir, to=to)
        self.beats = bus.bus_sub(self.ctx, self.config.runtime_dir, wire.STATS, hwm=10000,
                                 to=to)

    def sleep(self) -> None:
        """Wait for a signal, a heartbeat, or the next tick."""
        ready = dict(self.poller.poll(TICK * 1000))
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 64):
                    pass
            except BlockingIOError:
                pass

    # -- signal handlers ---------------------------------------------------------------------

    def handle_term(self) -> None:
        log.info("SIGTERM: stopping")
        self.stopping = True

    def handle_int(self) -> None:
        log.info("SIGINT: stopping")
        self.stopping = True

    def handle_hup(self) -> None:
        """Reload: the users file (ingest re-reads it) and what can change without a restart:
        the worker count and the log level."""
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)
        log.info("SIGHUP: reloading")
        if self.reload is not None:
            try:
                new = self.reload()
            except Exception as e:  # a broken file must not take the service down
                log.error("configuration not reloaded: %s", e)
                new = self.config
            self.apply(new)
        self.signal_role("ingest", signal.SIGHUP)
        self.notifier.send(READY=1, STATUS=self.status_line())

    def apply(self, new: Config) -> None:
        fixed = [f.name for f in dataclasses.fields(Config)
                 if f.name not in ("workers", "log_level")
                 and getattr(new, f.name) != getattr(self.config, f.name)]
        if fixed:
            log.warning("changed settings that need a restart (systemctl restart camstream): "
                        "%s", ", ".join(OPTION_OF.get(f, f.replace("_", "-")) for f in fixed))
        if new.log_level != self.config.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            log.info("log level %s (new children use it)", new.log_level)
        self.config = dataclasses.replace(self.config, workers=new.workers,
                                          log_level=new.log_level)
        why = f"SIGHUP (workers = {new.workers})"
        while self.worker_count() < new.workers:
            self.handle_ttin(why)
        while self.worker_count() > new.workers:
            self.handle_ttou(why)

    def handle_ttin(self, why: str = "SIGTTIN") -> None:
        index = 1 + max((s.index for s in self.slots if s.role == "worker"), default=0)
        self.slots.append(Slot("worker", index))
        log.info("%s: adding worker %d (%s)", why, index, plural(self.worker_count(), "worker"))

    def handle_ttou(self, why: str = "SIGTTOU") -> None:
        workers = [s for s in self.slots if s.role == "worker" and not s.retiring]
        if len(workers) <= 1:
            log.warning("%s: keeping the last worker", why)
            return
        slot = workers[-1]
        slot.retiring = True
        if slot.proc is not None:
            slot.proc.send_signal(signal.SIGTERM)
        log.info("%s: retiring worker %d (%s)", why, slot.index,
                 plural(self.worker_count(), "worker"))

    def handle_chld(self) -> None:
        pass  # reap() runs on every turn

    # -- the verbs ---------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        if slot.role == "display":
            self.spawn_display(slot)
            return
        if slot.role == "web":
            self.spawn_web(slot)
            return
        module = "camstream.ingest" if slot.role == "ingest" else "workers"
        argv = proc.python_module(module, str(os.getpid()))
        fds: tuple[int, ...] = ()
        env = dict(os.environ)
        if slot.role == "ingest":
            argv += [str(self.listener.fileno()), str(slot.spawned)]  # fd, generation
            fds = (self.listener.fileno(),)
        else:
            argv.append(str(slot.index))
            env.update(worker_env(self.config))
        slot.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=fds, env=env)
        slot.proc.stdin.write(self.config.to_json().encode())
        slot.proc.stdin.close()
        slot.started = time.monotonic()
        slot.last_beat = None
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1
        log.debug("spawned %s (pid %d)", slot.title, slot.proc.pid)

    def spawn_display(self, slot: Slot) -> None:
        """``serve -d``: a display attached like any other (``camstream display``), started
        once; it answers no heartbeat, and when it exits it is not started again."""
        slot.proc = subprocess.Popen(
            proc.python_module("camstream", "display", "--runtime-dir",
                               self.config.runtime_dir, "--parent-pid", str(os.getpid()),
                               "--log-level", self.config.log_level),
            stdin=subprocess.DEVNULL)
        slot.started = time.monotonic()
        slot.spawned += 1

    def spawn_web(self, slot: Slot) -> None:
        """``serve --web``: the web view (``camstream display --web``) on the socket bound
        at start; it answers no heartbeat, and is started again when it dies."""
        c = self.config
        argv = proc.python_module(
            "camstream", "display", "--web", c.web, "--listen-fd",
            str(self.web_listener.fileno()), "--runtime-dir", c.runtime_dir, "--parent-pid",
            str(os.getpid()), "--log-level", c.log_level)
        if c.auth:
            argv += ["--auth", "--users", c.users_file]
        if c.certfile:
            argv += ["--certfile", c.certfile, "--keyfile", c.keyfile]
        slot.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     pass_fds=(self.web_listener.fileno(),))
        slot.started = time.monotonic()
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1

    def reap(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, pid = slot.proc.returncode, slot.proc.pid
            slot.proc = None
            if slot.retiring:
                self.slots.remove(slot)
                log.info("%s (pid %d) retired", slot.title, pid)
                continue
            if slot.role == "display":
                self.slots.remove(slot)
                log.warning("display (pid %d) %s; serving on without it (attach one with: "
                            "camstream display --runtime-dir %s)", pid, describe_exit(code),
                            self.config.runtime_dir)
                continue
            lived = now - slot.started
            # back off only from a crash loop: a child that dies before it ever answered
            # (bad configuration, import error); one that was serving is replaced at once
            served = slot.last_beat or (slot.role == "web" and lived > START_GRACE)
            slot.failures = 0 if served else slot.failures + 1
            delay = min(MAX_BACKOFF, 0.1 * 2 ** slot.failures) if slot.failures > 1 else 0.0
            slot.not_before = now + delay
            log.warning("%s (pid %d) %s after %.1f s; restarting%s", slot.title, pid,
                        describe_exit(code), lived, f" in {delay:.1f} s" if delay else "")

    def manage(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and not slot.retiring and now >= slot.not_before:
                self.spawn(slot)

    def check_bus(self) -> None:
        """The bus's socket files removed: bind it again; if that fails (the directory taken
        over, say), say so once, and try again every turn."""
        if self.proxy is None:
            return
        try:
            self.proxy.check()
            self.bus_failed = False
        except (zmq.ZMQError, OSError, RuntimeDirError) as e:
            if not self.bus_failed:
                log.error("cannot bind the bus again in %s: %s (no child can report until "
                          "it is)", self.config.runtime_dir, e)
            self.bus_failed = True

    def judge_own_stall(self) -> None:
        """Silence is judged against this loop: if the supervisor itself did not run (SIGSTOP,
        a starved machine), the bus it hosts did not run either, and nobody was silent. Every
        child's clock then starts again from now."""
        now = time.monotonic()
        late = now - self.last_turn if self.last_turn else 0.0
        self.last_turn = now
        if late < STALLED + TICK:
            return
        log.warning("the supervisor did not run for %.1f s (stopped or starved): its children "
                    "are judged from now on, not for that gap", late)
        for slot in self.slots:
            if slot.proc is not None:
                slot.started += late
                if slot.last_beat is not None:
                    slot.last_beat += late

    def murder(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None or slot.role in ("display", "web"):
                continue
            silent = now - (slot.last_beat or slot.started)
            limit = self.config.worker_timeout if slot.last_beat else START_GRACE
            if silent > limit:
                log.error("%s (pid %d) silent for %.0f s: killing it", slot.title,
                          slot.proc.pid, silent)
                slot.proc.kill()
                slot.last_beat = now  # do not kill it twice while it dies

    def stop(self) -> None:
        """Ingest first (it drains its accepted frames into the workers), then the workers."""
        self.stopping = True
        self.notifier.send(STOPPING=1, STATUS="stopping: draining accepted frames")
        if self.listener is not None:  # a pool has none
            self.listener.close()  # new connections are refused from now on
        start = time.monotonic()
        for role, share in (("display", 0.1), ("web", 0.1), ("ingest", 0.6), ("worker", 1.0)):
            self.signal_role(role, signal.SIGTERM)
            self.wait_role(role, start + share * self.config.stop_timeout)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.error("%s (pid %d) did not stop in time: killing it", slot.title,
                          slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()
        if self.proxy is not None:
            self.proxy.stop()
        if self.zap is not None:
            self.zap.stop()
        self.ctx.destroy(linger=0)
        log.info("stopped")

    # -- helpers -----------------------------------------------------------------------------

    def signal_role(self, role: str, sig: int) -> None:
        for slot in self.slots:
            if slot.role == role and slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(sig)

    def wait_role(self, role: str, deadline: float) -> None:
        for slot in self.slots:
            if slot.role == role and slot.proc is not None:
                try:
                    slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

    def worker_count(self) -> int:
        return sum(1 for s in self.slots if s.role == "worker" and not s.retiring)

    def read_heartbeats(self) -> None:
        by_pid = {s.proc.pid: s for s in self.slots if s.proc is not None}
        for _, report in bus.drain(self.beats, wire.Stats.unpack):
            slot = by_pid.get(report.get("pid"))
            if slot is not None and report.get("host", proc.HOST) == proc.HOST:
                slot.last_beat = time.monotonic()
                slot.extra = report
            elif report.get("role") == "worker" and report.get("remote"):
                self.remote_report(report)
        self.remote_gone()

    def remote_report(self, report: dict) -> None:
        """A ``camstream worker`` on another machine: say when it joins (on the binding side:
        the one that offers --worker-endpoint)."""
        key = (str(report.get("host", "?")), report.get("pid"))
        before = self.remote.get(key, (0.0, None))[1]
        if self.config.tcp_side == "bind":
            if before is None:
                log.info("remote worker pid %s on %s joined (pulling from %s)", key[1],
                         key[0], self.config.worker_endpoint)
            if report.get("stopping") and not (before or {}).get("stopping"):
                log.info("remote worker pid %s on %s is stopping", key[1], key[0])
        self.remote[key] = (time.monotonic(), report)

    def remote_gone(self) -> None:
        now = time.monotonic()
        for key, (seen, report) in list(self.remote.items()):
            if now - seen > self.config.worker_timeout:
                del self.remote[key]
                if self.config.tcp_side == "bind" and not report.get("stopping"):
                    log.warning("remote worker pid %s on %s left (no report for %g s)",
                                key[1], key[0], self.config.worker_timeout)

    def notify(self) -> None:
        """READY once started up; WATCHDOG only while the children answer (a hung ingest stops
        it, so systemd restarts the service); STATUS now and then."""
        now = time.monotonic()
        if not self.ready:
            if self.started_up():
                self.ready = True
                log.info("ready: %s", self.ready_line())
                self.notifier.send(READY=1, STATUS=self.status_line())
                self.status_sent = now
            return
        interval = self.notifier.watchdog_interval
        if interval and now - self.last_watchdog >= interval / 2 and self.healthy(now):
            self.notifier.send(WATCHDOG=1)
            self.last_watchdog = now
        if now - self.status_sent >= STATUS_EVERY:
            self.status_sent = now
            self.notifier.send(STATUS=self.status_line())

    def started_up(self) -> bool:
        """Ingest serves and every worker reported in."""
        return bool(self.slots[0].extra.get("serving")) and \
            all(s.last_beat for s in self.slots if s.role == "worker")

    def ready_line(self) -> str:
        return (f"listening on {self.config.ip}:{self.config.port} with "
                f"{plural(self.worker_count(), 'worker')}")

    def healthy(self, now: float) -> bool:
        ingest = self.slots[0]
        fresh = [s for s in self.slots if s.last_beat and now - s.last_beat < FRESH]
        return ingest in fresh and any(s.role == "worker" for s in fresh)

    def status_line(self) -> str:
        """One line for systemctl status: clients, frame rates, drops, workers."""
        now = time.monotonic()
        report = self.slots[0].extra
        totals = report.get("totals", {})
        received, processed = totals.get("received", 0), totals.get("processed", 0)
        then, received0, processed0 = self.last_status
        span = now - then if then else 0.0
        rate_in = (received - received0) / span if span > 0 else 0.0
        rate_out = (processed - processed0) / span if span > 0 else 0.0
        self.last_status = (now, received, processed)
        alive = sum(1 for s in self.slots if s.role == "worker" and s.last_beat
                    and now - s.last_beat < FRESH)
        return (f"{report.get('clients', 0)} clients, {rate_in:.1f} fps in, "
                f"{rate_out:.1f} fps processed, {totals.get('dropped', 0)} dropped, "
                f"workers {alive}/{self.worker_count()}")

    def publish_status(self) -> None:
        workers = [s for s in self.slots if s.role == "worker"]
        now = time.monotonic()
        self.bus_pub.send_multipart(wire.Stats("supervisor", {
            "role": "supervisor", "pid": os.getpid(), "host": proc.HOST,
            "started": self.started, "workers_expected": self.worker_count(),
            "workers_alive": sum(1 for s in workers if s.proc is not None and s.last_beat
                                 and now - s.last_beat < WORKER_STALE_S),
            "worker_restarts": sum(s.restarts for s in workers),
            "ingest_restarts": self.slots[0].restarts}).pack())


def plural(n: int, thing: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{n} {thing}{'' if n == 1 else 's'}"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
