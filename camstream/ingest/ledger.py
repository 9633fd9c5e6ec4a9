"""Ingest's ledger: per-client counters, what the workers report, and the views of both
(``/healthz`` JSON and Prometheus metrics).

Counters are plain integers bumped on the hot path; everything else is computed when asked.
For each client: ``received`` = ``refused`` + ``dropped`` + ``dispatched`` + frames still
waiting in ingest, and ``dispatched`` = ``processed`` + ``errors`` + ``in_flight`` (in a
worker's queue) + ``lost`` (held by a worker that died or hung). Ingest remembers the sequence
number of every frame it dispatched until a worker reports it done (workers list the sequence
numbers they finished in each stats message); a frame no worker has reported LOST_AFTER seconds
after its dispatch is counted as lost. The pipeline's queues are a few frames deep, so such a
frame went down with its worker; should it be reported after all (a starved machine), it moves
from lost to processed.
"""
from __future__ import annotations

import collections
import time
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from camstream.liveness import ALIVE_S

UNAUTHENTICATED = "(unauthenticated)"
WORKER_STALE_S = ALIVE_S  # a worker silent this long is not counted as alive
POOL_STALE_S = ALIVE_S    # --ingest-only: the pool silent this long is missing
RESTARTED_RECENTLY_S = 60.0  # an ingest this young, replacing one that died: degraded
LOST_AFTER = 5.0      # seconds after dispatch by which a frame is processed, or lost
MAX_IDLE_NAMES = 1000  # names without a connection kept in /healthz at most
DEPARTED_KEYS = ("received", "dispatched", "dropped", "refused", "lost")  # ingest's counts
# what workers count per client (processor_errors is part of errors; record_* with --record)
WORKER_KEYS = ("processed", "errors", "processor_errors", "recorded", "record_errors",
               "record_dropped")


class ClientCounts:
    __slots__ = ("received", "dispatched", "dropped", "refused", "refused_by", "outstanding",
                 "lost", "lost_seqs")

    def __init__(self) -> None:
        self.received = 0
        self.dispatched = 0
        self.dropped = 0
        self.refused = 0
        self.refused_by: dict[str, int] = {}
        self.outstanding: dict[int, float] = {}  # seq -> monotonic dispatch time, in order
        self.lost = 0
        self.lost_seqs: collections.OrderedDict = collections.OrderedDict()  # recent, bounded

    def done(self, seqs: list[int]) -> None:
        """A worker finished these frames (processed, or an error)."""
        for seq in seqs:
            if self.outstanding.pop(seq, None) is None and self.lost_seqs.pop(seq, 0):
                self.lost -= 1  # late, not lost after all

    def expire(self, before: float) -> None:
        """Frames dispatched before ``before`` and never reported: lost with their worker."""
        while self.outstanding:
            seq, stamp = next(iter(self.outstanding.items()))
            if stamp >= before:
                break
            del self.outstanding[seq]
            self.lost += 1
            self.lost_seqs[seq] = 1
            if len(self.lost_seqs) > 10_000:
                self.lost_seqs.popitem(last=False)

    def refuse(self, reason: str) -> None:
        self.refused += 1
        self.refused_by[reason] = self.refused_by.get(reason, 0) + 1


class Ledger:
    def __init__(self, restarted: bool = False) -> None:
        self.restarted = restarted  # an ingest replacing one that died: workers predate it
        self.clients: dict[str, ClientCounts] = {}
        self.connected: dict[str, int] = {}          # client name -> open connections
        # workers are keyed by (host, pid): remote workers' pids may repeat local ones
        self._workers: dict[tuple, dict] = {}        # -> last stats of that worker process
        self._baseline: dict[tuple, dict] = {}       # -> its counts before this ingest began
        self._baseline_errors: dict[tuple, dict] = {}  # -> its errors_by then
        self._worker_seen: dict[tuple, float] = {}   # -> monotonic time of its last stats
        self._awaiting_full: set[tuple] = set()      # older workers: baselines still growing
        self._done: dict[str, dict] = {}             # name -> sums over workers (processed())
        self._done_totals: collections.Counter = collections.Counter()  # over all names
        self.supervisor: dict = {}
        self.pool: dict = {}                         # --ingest-only: the worker pool's report
        self.pool_seen: float | None = None          # -> monotonic time of its last report
        self.pool_endpoint = ""                      # --ingest-only: where the pool is
        self.problems: dict[str, str] = {}           # other reasons to say degraded, by kind
        self.last_reasons: dict[str, str] = {}       # health()'s, for /metrics
        self.workers_configured: int | None = None   # until the supervisor's first report
        # --ingest-only: the pool's workers report every node's clients; show only ours
        self.own_clients_only = False
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.connection_limits: list = []  # ingest's ConnectionCounts: their refusals shown
        self.owners: dict[str, int] = {}   # --route client: the worker each client is bound to
        self.forget_after = 600.0          # --forget-clients-after
        self.idle: collections.OrderedDict = collections.OrderedDict()  # name -> since left
        self.departed: collections.Counter = collections.Counter()      # folded counters
        # what ingest's limits stopped (camstream.ingest.limits): limit name -> times
        self.limit_hits: collections.Counter = collections.Counter()

    def client(self, name: str) -> ClientCounts:
        counts = self.clients.get(name)
        if counts is None:
            counts = self.clients[name] = ClientCounts()
        return counts

    def worker_report(self, report: dict) -> None:
        """Keep each worker process's cumulative counters, the dead ones' too (their frames
        were processed all the same). A report marked ``"full": false`` carries only the
        clients that changed: it is merged into what this pid reported before. A worker older
        than this ingest (ingest was restarted) counts only what it did since: each name's
        first counters heard from it are its baseline, until its first full report (after
        which a name new to it started at zero). The sums per client are kept up to date
        here, so that a report costs what it carries, not every name ever seen."""
        pid = (report.get("host", ""), report["pid"])
        known = self._workers.get(pid)
        if known is None:
            known = self._workers[pid] = {"clients": {}, "errors_by": {}}
            if self.restarted and report.get("started", 0) < self.started:
                self._awaiting_full.add(pid)
                self._baseline[pid] = {}
                self._baseline_errors[pid] = {}
        clients = report["clients"]
        errors_by = report.get("errors_by") or {}
        base = self._baseline.get(pid, {})
        base_errors = self._baseline_errors.get(pid, {})
        if pid in self._awaiting_full:
            for name, c in clients.items():
                if name not in base:
                    base[name] = c
                    base_errors[name] = errors_by.get(name) or {}
            if report.get("full", True):  # (a worker without partial reports: all full)
                self._awaiting_full.discard(pid)
        held, held_errors = known["clients"], known["errors_by"]
        for name, c in clients.items():
            before = held.get(name) or base.get(name) or {}
            total = self._done.get(name)
            if total is None:
                total = self._done[name] = dict.fromkeys(WORKER_KEYS, 0)
                total["errors_by"] = {}
            for key in WORKER_KEYS:
                delta = c.get(key, 0) - before.get(key, 0)
                total[key] += delta
                self._done_totals[key] += delta
            held[name] = c
            now_by = errors_by.get(name) or {}
            if now_by:
                before_by = held_errors.get(name) or base_errors.get(name) or {}
                by = total["errors_by"]
                for reason, n in now_by.items():
                    n -= before_by.get(reason, 0)
                    if n:
                        by[reason] = by.get(reason, 0) + n
                held_errors[name] = now_by
        known.update((k, v) for k, v in report.items() if k not in ("clients", "errors_by"))
        self._worker_seen[pid] = time.monotonic()
        for name, seqs in report.get("done", {}).items():
            counts = self.clients.get(name)
            if counts is not None:
                counts.done(seqs)

    def processed(self) -> dict[str, dict]:
        """Per client, the sum over worker processes of what they report (WORKER_KEYS, and
        ``errors_by``: errors per reason), less the baselines. Kept by worker_report: do not
        change what this returns."""
        return self._done

    def pool_report(self, report: dict) -> None:
        self.pool = report
        self.pool_seen = time.monotonic()

    def pool_missing_s(self) -> float | None:
        """--ingest-only: seconds the pool has been silent (since ingest began, if it never
        reported), once that is over POOL_STALE_S; else None."""
        if not self.pool_endpoint:
            return None
        since = self.pool_seen if self.pool_seen is not None else self.started_mono
        silent = time.monotonic() - since
        return silent if silent > POOL_STALE_S else None

    def degraded(self, local_alive: int, expected: int | None) -> dict[str, str]:
        """Why the daemon is not fully working, by kind (empty: ok). ``local_alive``: the
        workers of this daemon (or of its pool) heard from lately, remote ones apart."""
        reasons = {}
        missing = self.pool_missing_s()
        if missing is not None:
            reasons["pool"] = (f"no worker pool: nothing heard from {self.pool_endpoint} for "
                               f"{missing:.0f} s")
        if expected and local_alive < expected:
            reasons["workers"] = f"{local_alive} of {expected} workers alive"
        uptime = time.time() - self.started
        if self.restarted and uptime < RESTARTED_RECENTLY_S:
            reasons["ingest"] = f"ingest restarted {uptime:.0f} s ago (clients reconnect)"
        reasons.update(self.problems)
        return reasons

    def checkpoint(self) -> None:
        """Count as lost what was dispatched LOST_AFTER ago and never reported; forget the
        names that left a while ago (twice a second)."""
        now = time.monotonic()
        before = now - LOST_AFTER
        for counts in self.clients.values():
            counts.expire(before)
        self.forget(now)

    def joined(self, name: str) -> None:
        self.connected[name] = self.connected.get(name, 0) + 1
        self.idle.pop(name, None)

    def left(self, name: str) -> int:
        """One connection of ``name`` closed; how many it still has."""
        left = self.connected.get(name, 1) - 1
        self.connected[name] = left
        if not left:
            self.idle[name] = time.monotonic()
        return left

    def forget(self, now: float) -> None:
        """Fold the counters of names gone for ``forget_after`` seconds (or beyond the
        MAX_IDLE_NAMES most recent) into ``departed``: 40,000 names kept /healthz growing to
        7.9 MB and a core busy with nobody connected. What workers report for them is
        counted in ``departed`` too (only names in ``clients`` have rows)."""
        while self.idle:
            name, since = next(iter(self.idle.items()))
            if now - since < self.forget_after and len(self.idle) <= MAX_IDLE_NAMES:
                break
            del self.idle[name]
            counts = self.clients.get(name)
            if counts is not None and counts.outstanding:  # frames still out: later
                self.idle[name] = since
                break
            if counts is not None:
                del self.clients[name]
                for key in DEPARTED_KEYS:
                    self.departed[key] += getattr(counts, key)
                # the workers' sums too (health() counts them in departed from the totals):
                # the name, back, starts a row of its own
                self._done.pop(name, None)
            self.connected.pop(name, None)
            self.departed["clients"] += 1

    def workers_alive(self) -> int:
        now = time.monotonic()
        return sum(1 for t in self._worker_seen.values() if now - t < WORKER_STALE_S)

    def remote_workers(self) -> list[dict]:
        """Workers started with ``camstream worker`` on other machines (alive or gone)."""
        now = time.monotonic()
        return [{"host": host, "pid": pid, "alive": now - self._worker_seen[(host, pid)]
                 < WORKER_STALE_S,
                 "processed": sum(c["processed"] for c in r["clients"].values())}
                for (host, pid), r in sorted(self._workers.items()) if r.get("remote")]

    def health(self, with_names: bool = True) -> dict:
        """The /healthz view. ``with_names=False`` (under -a, for a caller who has not proved who
        they are): the per-client rows left out, their number said; totals stay."""
        done = self.processed()
        clients = {}
        totals = dict.fromkeys(("received", "dispatched", "dropped", "processed", "errors",
                                "refused", "in_flight", "lost"), 0)
        departed = {"clients": self.departed["clients"], **{k: 0 for k in totals}}
        for key in DEPARTED_KEYS:
            departed[key] = self.departed[key]
        if not self.own_clients_only:  # what workers did for names forgotten here
            departed["processed"] += self._done_totals["processed"]
            departed["errors"] += self._done_totals["errors"]
            for name in self.clients:
                d = done.get(name)
                if d is not None:
                    departed["processed"] -= d["processed"]
                    departed["errors"] -= d["errors"]
        for k in totals:
            totals[k] += departed[k]
        for name in sorted(self.clients):
            c = self.clients.get(name) or ClientCounts()
            if name == UNAUTHENTICATED and not c.received:
                continue
            d = done.get(name) or dict.fromkeys(WORKER_KEYS, 0)
            row = {"received": c.received, "dispatched": c.dispatched, "dropped": c.dropped,
                   "processed": d["processed"], "errors": d["errors"], "refused": c.refused,
                   "in_flight": len(c.outstanding), "lost": c.lost,
                   "refused_by": dict(c.refused_by), "connected": self.connected.get(name, 0)}
            row.update((k, d[k]) for k in WORKER_KEYS[2:] if d[k])  # only when there are any
            if d.get("errors_by"):
                row["errors_by"] = d["errors_by"]
            if name in self.owners:
                row["worker"] = self.owners[name]
            clients[name] = row
            for k in totals:
                totals[k] += row[k]
        sup = self.supervisor
        pool = self.pool or sup  # an ingest node's workers are the pool's
        if self.pool_missing_s() is not None:
            pool = {}
        remote = self.remote_workers()
        remote_alive = sum(1 for r in remote if r["alive"])
        local = pool["workers_alive"] if "workers_alive" in pool else \
            self.workers_alive() - remote_alive
        workers = {"alive": local + remote_alive,
                   "expected": pool.get("workers_expected", self.workers_configured),
                   "restarts": pool.get("worker_restarts", 0),
                   **({"remote": remote} if remote else {})}  # camstream worker
        if self.pool_endpoint:
            workers["pool"] = self.pool_endpoint
        reasons = self.last_reasons = self.degraded(local, workers["expected"])
        hidden = {} if with_names else {"clients_hidden": len(clients)}
        if not with_names:
            clients = {}
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": list(reasons.values()),
            # the daemon's (its supervisor's) age; ingest's own is under "ingest"
            "uptime_s": round(time.time() - sup.get("started", self.started), 1),
            "workers": workers,
            "ingest": {"restarts": sup.get("ingest_restarts", 0),
                       "uptime_s": round(time.time() - self.started, 1)},
            "clients": clients,
            **hidden,
            "totals": totals,
            # names gone for --forget-clients-after, their counters folded together
            "departed": departed,
            # connections refused by --max-connections-per-ip (socket.io and websocket level)
            "refused_connections": sum(c.refused for c in self.connection_limits),
            # connections and requests stopped by a limit, by limit (see camstream.ingest.limits)
            "limits": dict(sorted(self.limit_hits.items())),
        }


class LedgerCollector(Collector):
    """Prometheus view of the ledger, computed at scrape time (nothing on the hot path)."""

    def __init__(self, ledger: Ledger, names: bool = True) -> None:
        self.ledger = ledger
        self.names = names  # False: no per-client series (Ledger.health)

    def collect(self) -> Iterator:
        health = self.ledger.health(self.names)
        help_ = {
            "received": "Frames that arrived from the client",
            "dispatched": "Frames handed to the worker pool",
            "dropped": "Frames accepted but dropped because the workers were full",
            "processed": "Frames decoded and processed by a worker",
            "errors": "Frames a worker could not decode or process",
            "lost": "Frames dispatched but never reported: held by a worker that died",
            "refused": "Frames refused at ingest (unauthenticated, too large, malformed...)",
        }
        for key, text in help_.items():
            fam = CounterMetricFamily(f"camstream_frames_{key}", text, labels=["client"])
            for name, row in health["clients"].items():
                fam.add_metric([name], row[key])
            yield fam
        conn = GaugeMetricFamily("camstream_client_connections", "Open connections per client",
                                 labels=["client"])
        for name, row in health["clients"].items():
            conn.add_metric([name], row["connected"])
        yield conn
        yield GaugeMetricFamily("camstream_workers_alive", "Worker processes alive",
                                value=health["workers"]["alive"])
        degraded = GaugeMetricFamily("camstream_degraded", "1 while the daemon is not fully "
                                     "working, per reason (as /healthz's reasons)",
                                     labels=["reason"])
        for kind in ("workers", "pool", "ingest", "ipc"):
            degraded.add_metric([kind], 1 if kind in self.ledger.last_reasons else 0)
        yield degraded
        yield CounterMetricFamily("camstream_worker_restarts", "Worker processes restarted",
                                  value=health["workers"]["restarts"])
        yield CounterMetricFamily("camstream_ingest_restarts", "Ingest processes restarted",
                                  value=health["ingest"]["restarts"])
        yield CounterMetricFamily("camstream_connections_refused",
                                  "Connections refused by --max-connections-per-ip",
                                  value=health["refused_connections"])
        hits = CounterMetricFamily("camstream_limit_hits", "Connections and requests stopped "
                                   "by a limit (a flag of camstream serve)", labels=["limit"])
        for name, n in health["limits"].items():
            hits.add_metric([name], n)
        yield hits
