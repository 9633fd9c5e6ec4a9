"""The supervisor: the ``camstream serve`` (and ``camstream pool``) process; plain Python, no
gevent.

Shaped like gunicorn's arbiter. Signals are queued and wake the loop through a self-pipe; the
loop handles one (``handle_term``, ``handle_hup``, ``handle_ttin``...) and then runs the same
verbs every turn, over the children's specs (:mod:`camstream.supervisor.children`), whatever
their roles:

- ``murder``: kill a child whose heartbeat on the bus is too old (hung);
- ``reap``: collect children that exited, and say why; give up on one that failed to boot
  ``MAX_FAILED_BOOTS`` times in a row (``halt``: everything stops, the exit status is 1, and
  systemd applies its own Restart=);
- ``manage``: spawn what is missing (with backoff for a child that keeps dying);
- ``stop``: on SIGTERM/SIGINT, each child by its share of the stop timeout: displays, then
  ingest (it drains into the workers), then the workers (they drain their queues), then
  SIGKILL.

Children are fresh interpreters (no fork of anything gevent-patched), started with the config
as JSON on stdin; they die with the supervisor even if it is SIGKILLed (PR_SET_PDEATHSIG).
The supervisor owns the listening socket and hands it to ingest, so a restarted ingest serves
the same port and connections wait in the backlog meanwhile. It also hosts the bus proxy
(:mod:`camstream.supervisor.hub`). ``serve``, ``pool`` and ``serve --ingest-only`` are this
one arbiter with other children and another hub (:mod:`camstream.supervisor.pool`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import time
from typing import Callable

import zmq

from camstream import bus, proc, wire
from camstream.config import Config
from camstream.liveness import Liveness
from camstream.rundir import RuntimeDirError
from camstream.supervisor import children
from camstream.supervisor.children import WORKER, ChildSpec, Slot
from camstream.supervisor.hub import Hub
from camstream.supervisor.notify import Notifier

log = logging.getLogger("camstream.supervisor")
# Config fields whose option (and --config key) has another name: logs say the option
OPTION_OF = {"max_frame_bytes": "max-frame-size", "users_file": "users",
             "processor_options": "processor-opt", "record_dir": "record"}

TICK = 0.5                # seconds between turns of the loop when nothing happens
STATUS_EVERY = 2.0        # seconds between STATUS= lines to systemd
STALLED = 2.0             # a turn of the loop this late means the supervisor itself stalled
EXIT_GAVE_UP = 1          # the exit status after a child failed to boot too often


class Supervisor:
    SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCHLD")

    def __init__(self, config: Config, specs: list[ChildSpec], notifier: Notifier, *,
                 hub: type[Hub] = Hub, name: str = "supervisor",
                 grow: Callable[[int], ChildSpec] | None = children.worker,
                 reload: Callable[[], Config] | None = None) -> None:
        """``name``: the role of its reports on the bus; ``grow``: what SIGTTIN adds (None:
        no workers here, they are a pool's)."""
        self.config = config
        self.name = name
        self.grow = grow
        self.notifier = notifier
        self.reload = reload          # re-reads the configuration file, for SIGHUP
        self.liveness = Liveness(hung_s=config.worker_timeout)
        self.ctx = zmq.Context()
        self.hub = hub(self.ctx, config)
        self.slots: list[Slot] = [Slot(spec) for spec in specs]
        self.signals: list[int] = []
        self.stopping = False
        self.exit_status = 0
        self.why_stopping = "stopping: draining accepted frames"
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
        return self.exit_status

    def start(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), lambda sig, frame: self.signals.append(sig))
        self.hub.open()
        self.poller = zmq.Poller()
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.poller.register(self.hub.beats, zmq.POLLIN)
        roles = sorted({s.title.split()[0] for s in self.slots})
        log.info("starting %s (%s; runtime dir %s)", ", ".join(roles),
                 plural(self.worker_count(), "worker"), self.config.runtime_dir)
        self.manage()

    def sleep(self) -> None:
        """Wait for a signal, a heartbeat, or the next tick."""
        ready = dict(self.poller.poll(TICK * 1000))
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 64):
                    pass
            except BlockingIOError:
                pass

    # -- signal handlers: each logs what it does ----------------------------------------------

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
        for slot in self.slots:
            if slot.spec.reload_signal is not None:
                self.send(slot, slot.spec.reload_signal)
        self.notifier.send(READY=1, STATUS=self.status_line())

    def handle_ttin(self) -> None:
        self.add_worker("SIGTTIN")

    def handle_ttou(self) -> None:
        self.retire_worker("SIGTTOU")

    def handle_chld(self) -> None:
        pass  # reap() runs on every turn

    def apply(self, new: Config) -> None:
        """A reloaded configuration: what needs a restart is named, the rest is applied."""
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
        while self.grow is not None and self.worker_count() < new.workers:
            self.add_worker(why)
        while self.grow is not None and self.worker_count() > new.workers:
            self.retire_worker(why)

    def add_worker(self, why: str) -> None:
        if self.grow is None:
            log.warning("%s: no workers here (they are the pool's)", why)
            return
        index = 1 + max((s.spec.index for s in self.workers()), default=0)
        self.slots.append(Slot(self.grow(index)))
        log.info("%s: adding worker %d (%s)", why, index, plural(self.worker_count(), "worker"))

    def retire_worker(self, why: str) -> None:
        workers = [s for s in self.workers() if not s.retiring]
        if not workers:
            log.warning("%s: no workers here (they are the pool's)", why)
            return
        if len(workers) == 1:
            log.warning("%s: keeping the last worker", why)
            return
        slot = workers[-1]
        slot.retiring = True
        self.send(slot, signal.SIGTERM)
        log.info("%s: retiring worker %d (%s)", why, slot.spec.index,
                 plural(self.worker_count(), "worker"))

    # -- the verbs ---------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        spec = slot.spec
        command = spec.command(self.config, slot.spawned)
        process = subprocess.Popen(
            command.argv, env=command.env, pass_fds=spec.fds(),
            stdin=subprocess.DEVNULL if command.stdin is None else subprocess.PIPE)
        if command.stdin is not None:
            process.stdin.write(command.stdin)
            process.stdin.close()
        slot.began(process, time.monotonic())
        log.debug("spawned %s (pid %d)", slot.title, process.pid)

    def reap(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, pid = slot.proc.returncode, slot.proc.pid
            lived = now - slot.started
            if slot.retiring:
                slot.proc = None
                self.slots.remove(slot)
                log.info("%s (pid %d) retired", slot.title, pid)
                continue
            if not slot.spec.restart:
                slot.proc = None
                self.slots.remove(slot)
                log.warning("%s (pid %d) %s; %s", slot.title, pid, describe_exit(code),
                            slot.spec.when_gone)
                continue
            silent = slot.killed_silent
            delay = slot.ended(code, now, self.liveness)
            if slot.boots.exhausted:
                self.halt(slot, pid, "was killed for its silence" if silent
                          else describe_exit(code), lived)
                return
            log.warning("%s (pid %d) %s after %.1f s; restarting%s", slot.title, pid,
                        describe_exit(code), lived, f" in {delay:.1f} s" if delay else "")

    def halt(self, slot: Slot, pid: int, how: str, lived: float) -> None:
        """A child that failed to boot too many times in a row will not start: say so in one
        line, stop everything, and exit non-zero (systemd then applies its Restart=)."""
        line = (f"{slot.title} failed to start {slot.boots.failed} times in a row (the last, "
                f"pid {pid}, {how} after {lived:.1f} s, before it was ready): giving up, "
                f"stopping camstream")
        log.error("%s", line)
        self.why_stopping = line
        self.exit_status = EXIT_GAVE_UP
        self.stopping = True

    def manage(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None and not slot.retiring and now >= slot.not_before:
                self.spawn(slot)

    def check_bus(self) -> None:
        """The bus's socket files removed: bind it again; if that fails (the directory taken
        over, say), say so once, and try again every turn."""
        try:
            self.hub.check()
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
            silent = slot.overdue(now, self.liveness)
            if silent is not None:
                log.error("%s (pid %d) silent for %.0f s: killing it", slot.title,
                          slot.proc.pid, silent)
                slot.proc.kill()
                slot.killed_silent = True  # do not kill it twice while it dies

    def stop(self) -> None:
        """Each child by its share of the stop timeout: displays, then ingest (it drains its
        accepted frames into the workers), then the workers; what is left gets SIGKILL."""
        self.stopping = True
        self.notifier.send(STOPPING=1, STATUS=self.why_stopping)
        self.hub.stop_feeding()
        for slot in self.slots:  # new connections are refused from now on
            for sock in slot.spec.sockets:
                sock.close()
        start = time.monotonic()
        for share in sorted({s.spec.stop_share for s in self.slots}):
            group = [s for s in self.slots if s.spec.stop_share == share]
            for slot in group:
                self.send(slot, signal.SIGTERM)
            deadline = start + share * self.config.stop_timeout
            for slot in group:
                if slot.proc is not None:
                    try:
                        slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.error("%s (pid %d) did not stop in time: killing it", slot.title,
                          slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()
        self.hub.close()
        self.ctx.destroy(linger=0)
        log.info("stopped")

    # -- helpers -----------------------------------------------------------------------------

    def send(self, slot: Slot, sig: int) -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.send_signal(sig)

    def workers(self) -> list[Slot]:
        return [s for s in self.slots if s.role == WORKER]

    def worker_count(self) -> int:
        return sum(1 for s in self.workers() if not s.retiring)

    def read_heartbeats(self) -> None:
        by_pid = {s.proc.pid: s for s in self.slots if s.proc is not None}
        for _, report in bus.drain(self.hub.beats, wire.Stats.unpack):
            slot = by_pid.get(report.get("pid"))
            if slot is not None and report.get("host", proc.HOST) == proc.HOST:
                slot.heard(report, time.monotonic())
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
            if now - seen > self.liveness.hung_s:
                del self.remote[key]
                if self.config.tcp_side == "bind" and not report.get("stopping"):
                    log.warning("remote worker pid %s on %s left (no report for %g s)",
                                key[1], key[0], self.liveness.hung_s)

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
        """Every child that reports has proved it serves (ingest serves, each worker
        reported in)."""
        return all(s.ready for s in self.slots if s.spec.reports)

    def healthy(self, now: float) -> bool:
        """Each role that reports has a child alive: ingest, and a worker."""
        reporting = {s.role for s in self.slots if s.spec.reports}
        alive = {s.role for s in self.slots if s.spec.reports and s.alive(now, self.liveness)}
        return reporting == alive

    def ingest(self) -> Slot | None:
        return next((s for s in self.slots if s.role == "ingest"), None)

    def ready_line(self) -> str:
        workers = plural(self.worker_count(), "worker")
        if self.ingest() is None:
            return workers
        return f"listening on {self.config.ip}:{self.config.port} with {workers}"

    def status_line(self) -> str:
        """One line for systemctl status: clients, frame rates, drops, workers."""
        now = time.monotonic()
        alive = sum(1 for s in self.workers() if s.alive(now, self.liveness))
        workers = f"workers {alive}/{self.worker_count()}"
        ingest = self.ingest()
        if ingest is None:
            return f"{self.name}: {workers}"
        report = ingest.extra
        totals = report.get("totals", {})
        received, processed = totals.get("received", 0), totals.get("processed", 0)
        then, received0, processed0 = self.last_status
        span = now - then if then else 0.0
        rate_in = (received - received0) / span if span > 0 else 0.0
        rate_out = (processed - processed0) / span if span > 0 else 0.0
        self.last_status = (now, received, processed)
        return (f"{report.get('clients', 0)} clients, {rate_in:.1f} fps in, "
                f"{rate_out:.1f} fps processed, {totals.get('dropped', 0)} dropped, {workers}")

    def publish_status(self) -> None:
        """What ingest shows in /healthz: the workers (an ingest node's are its pool's), the
        restarts, the daemon's age."""
        now = time.monotonic()
        workers = self.workers()
        report = {"role": self.name, "pid": os.getpid(), "host": proc.HOST,
                  "started": self.started, "workers_expected": self.worker_count(),
                  "workers_alive": sum(1 for s in workers if s.alive(now, self.liveness)),
                  "worker_restarts": sum(s.restarts for s in workers)}
        ingest = self.ingest()
        if ingest is not None:
            report["ingest_restarts"] = ingest.restarts
        self.hub.pub.send_multipart(wire.Stats(self.name, report).pack())


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
