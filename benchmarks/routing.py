"""routing: what ``--route client`` (each client bound to one worker, one PUSH per worker)
costs against ``--route any`` (one shared PUSH that deals frames to any free worker), in one
run, with the same processor (``stats``, so the work per frame is the same) and 2 workers.

Both daemons are up at once (the idle one costs next to nothing) and each load runs in four
windows, in the order any, client, client, any (7.5 s each in quick mode, 15 s full; 4 and 10 s
for the skewed load): a drift in the machine's load over the run hits both modes alike. Each
mode's figures are over its two windows together.

- balanced: 4 ack clients (one ``frame`` in flight each, as fast as the acks return), 640x480.
  Processed frames/s (results counted on the bus), the ratio client/any, frame ack p50/p99,
  the dropped share (dropped / received, /healthz totals over the window), frames per worker
  (the ``worker`` field of each result on the bus) and how many clients had their frames
  processed by more than one worker (client routing: none).
- skewed: 1 fast ack client + 3 paced at 2 Hz. With client routing the fast client is confined
  to the one worker it is bound to; with any routing it uses both. Its processed frames/s, and
  the total, client/any.

Ingest, worker and client CPU-seconds, the machine's idle CPU and the gaps between a worker's
consecutive results (a stalled lane shows there) are recorded too, to tell where a difference
comes from.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict

import psutil
import requests

from benchmarks.common import BusTap, Clients, Daemon, ratio, summary_stats
from benchmarks.suite import Run, row, sum_key
from camstream import wire

WORKERS = 2
MODES = ("any", "client")


class WorkerTap(BusTap):
    """BusTap that also keeps which worker processed each frame (the result's ``worker``):
    records are (client, seq, recv_ns, done_ns, worker)."""

    def record(self, h: wire.Header, result: dict) -> None:
        self.records.append((h.client, h.seq, h.recv_ns, result["done_ns"],
                             result.get("worker", -1)))


def _workers(d: Daemon) -> list[psutil.Process]:
    """The supervisor's children titled ``camstream: worker N``."""
    out = []
    for p in psutil.Process(d.proc.pid).children():
        try:
            if " ".join(p.cmdline()).strip().startswith("camstream: worker"):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            ct = p.cpu_times()
            total += ct.user + ct.system
        except psutil.Error:
            pass
    return total


def _totals(d: Daemon) -> dict:
    for attempt in range(3):  # a loaded server may reset an HTTP request: ask again, bounded
        try:
            return d.health()["totals"]
        except requests.RequestException:
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _window(run: Run, d: Daemon, tap: WorkerTap, specs: list[dict], window: float) -> dict:
    """Run the clients; measure from 1 s after they start until ``window`` s later. Raw
    counts, summed over the windows of one mode by :func:`_summary`."""
    ingest, workers = d.ingest(), _workers(d)
    cl = Clients(d.url, run.workdir, specs, window + 1.5)
    client_procs = []
    for proc, _ in cl.procs:
        try:
            client_procs.append(psutil.Process(proc.pid))
        except psutil.Error:
            pass
    try:
        cl.wait_started()
        time.sleep(1.0)
        t0, h0, m0 = time.time_ns(), _totals(d), psutil.cpu_times()
        cpu0 = [_cpu([ingest]), _cpu(workers), _cpu(client_procs)]
        time.sleep(window)
        t1, h1, m1 = time.time_ns(), _totals(d), psutil.cpu_times()
        cpu1 = [_cpu([ingest]), _cpu(workers), _cpu(client_procs)]
        reports = cl.collect()
    finally:
        cl.kill()
    try:
        bindings = {name: r["worker"] for name, r in d.health()["clients"].items()
                    if "worker" in r}
    except requests.RequestException:
        bindings = {}
    recs = tap.between(t0, t1)
    per_client: dict[str, Counter] = defaultdict(Counter)
    done_by_worker: dict[int, list[int]] = defaultdict(list)
    for client, _, _, done_ns, worker in recs:
        per_client[client][worker] += 1
        done_by_worker[worker].append(done_ns)
    gaps = []  # ms between one worker's consecutive results: a stalled lane shows here
    for ts in done_by_worker.values():
        ts.sort()
        gaps += [(b - a) / 1e6 for a, b in itertools.pairwise(ts)]
    wall = (t1 - t0) / 1e9
    return {
        "seconds": wall, "processed": len(recs),
        "received": h1["received"] - h0["received"], "dropped": h1["dropped"] - h0["dropped"],
        "per_client": per_client, "acks": [a for r in reports for a in r["ack_ms"]],
        "gaps": gaps, "bindings": bindings,
        "cpu": {k: b - a for k, a, b in zip(("ingest", "workers", "clients"), cpu0, cpu1)},
        "idle": m1.idle - m0.idle,
        "disconnects": sum_key(reports, "disconnects"), "timeouts": sum_key(reports, "timeouts"),
        "client_errors": [r["error"] for r in reports if r.get("error")],
    }


def _summary(windows: list[dict]) -> dict:
    """The windows of one mode, as one measurement."""
    wall = sum(w["seconds"] for w in windows)
    processed = sum(w["processed"] for w in windows)
    received = sum(w["received"] for w in windows)
    per_client: dict[str, Counter] = defaultdict(Counter)
    for w in windows:
        for client, by_worker in w["per_client"].items():
            per_client[client].update(by_worker)
    per_worker: Counter = Counter()
    for by_worker in per_client.values():
        per_worker.update(by_worker)
    cpu = {k: sum(w["cpu"][k] for w in windows) for k in ("ingest", "workers", "clients")}
    return {
        "seconds": round(wall, 2), "windows": len(windows),
        "window_processed_fps": [round(w["processed"] / w["seconds"], 1) for w in windows],
        "processed_fps": round(processed / wall, 1),
        "received_fps": round(received / wall, 1),
        "dropped_share": round(sum(w["dropped"] for w in windows) / received, 3)
        if received else None,
        "ack_ms": summary_stats([a for w in windows for a in w["acks"]]),
        "per_worker_fps": {str(k): round(n / wall, 1) for k, n in sorted(per_worker.items())},
        "busiest_worker_share": round(max(per_worker.values()) / processed, 3)
        if processed else None,
        "per_client_fps": {c: round(sum(ws.values()) / wall, 1)
                           for c, ws in sorted(per_client.items())},
        "per_client_workers": {c: {str(k): n for k, n in sorted(ws.items())}
                               for c, ws in sorted(per_client.items())},
        "clients_on_2_workers": sum(1 for ws in per_client.values() if len(ws) > 1),
        "bindings": windows[-1]["bindings"],  # /healthz rows' worker (--route client)
        "worker_result_gap_ms": summary_stats([g for w in windows for g in w["gaps"]]),
        "cpu_util": {k: round(v / wall, 3) for k, v in cpu.items()},
        "machine_idle_cpus": round(sum(w["idle"] for w in windows) / wall, 3),
        "ingest_cpu_ms_per_frame": round(1000 * cpu["ingest"] / received, 3)
        if received else None,
        "workers_cpu_ms_per_processed": round(1000 * cpu["workers"] / processed, 3)
        if processed else None,
        "disconnects": sum(w["disconnects"] for w in windows),
        "timeouts": sum(w["timeouts"] for w in windows),
        "client_errors": [e for w in windows for e in w["client_errors"]],
    }


def _split(fps: dict) -> str:
    return " / ".join(f"w{w} {v:.0f}" for w, v in sorted(fps.items()))


def _abba(run: Run, daemons: dict, taps: dict, specs: list[dict], window: float,
          rounds: int) -> dict[str, dict]:
    """``rounds`` x (any, client, client, any), each ``window`` s: a drift in the machine's
    load over the run hits both modes alike."""
    raw: dict[str, list] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in (*MODES, *MODES[::-1]):
            raw[mode].append(_window(run, daemons[mode], taps[mode], specs, window))
    return {m: _summary(raw[m]) for m in MODES}


def bench_routing(run: Run) -> dict:
    frame = str(run.frames["640x480"])
    # per mode: 2 x window (balanced) and 2 x skew_window (skewed) per round
    window, skew_window, rounds = run.t(7.5, 15), run.t(4, 10), 1
    balanced = [{"name": f"bal{i}", "frame": frame, "mode": "ack"} for i in range(4)]
    skewed = [{"name": "fast", "frame": frame, "mode": "ack"}] + [
        {"name": f"slow{i}", "frame": frame, "mode": "ack", "fps": 2} for i in range(3)]
    out: dict = {"workers": WORKERS, "processor": "stats", "frame": "640x480",
                 "window_s": window, "skew_window_s": skew_window,
                 "order": "any, client, client, any"}
    daemons: dict[str, Daemon] = {}
    taps: dict[str, WorkerTap] = {}
    try:
        for mode in MODES:  # both start at once; wait_ready below
            daemons[mode] = Daemon(run.workdir, WORKERS, "--route", mode)
        for mode in MODES:
            daemons[mode].wait_ready()
            taps[mode] = WorkerTap(daemons[mode].runtime_dir)
        out["balanced"] = _abba(run, daemons, taps, balanced, window, rounds)
        out["skewed"] = _abba(run, daemons, taps, skewed, skew_window, rounds)
    finally:
        for tap in taps.values():
            tap.close()
        for d in daemons.values():
            d.stop()
    a, c = out["balanced"]["any"], out["balanced"]["client"]
    sa, sc = out["skewed"]["any"], out["skewed"]["client"]
    out["ratios"] = {
        "balanced_processed": ratio(c["processed_fps"], a["processed_fps"]),
        "skewed_processed": ratio(sc["processed_fps"], sa["processed_fps"]),
        "skewed_fast_client": ratio(sc["per_client_fps"].get("fast"),
                                    sa["per_client_fps"].get("fast")),
    }
    fast_worker = sc["bindings"].get("fast")
    errors = {side: s["disconnects"] + s["timeouts"] + t["disconnects"] + t["timeouts"]
              for side, s, t in (("client", c, sc), ("any", a, sa))}
    out["rows"] = [
        row("4 ack clients, 640x480: processed fps (client vs any)", c["processed_fps"],
            a["processed_fps"], ">= 0.85 of any",
            bool(out["ratios"]["balanced_processed"]
                 and out["ratios"]["balanced_processed"] >= 0.85), unit="fps"),
        row("processed fps per window (run in the order any, client, client, any)",
            ", ".join(f"{v:.0f}" for v in c["window_processed_fps"]),
            ", ".join(f"{v:.0f}" for v in a["window_processed_fps"])),
        row("frame ack p50 (ms)", c["ack_ms"].get("p50"), a["ack_ms"].get("p50")),
        row("frame ack p99 (ms)", c["ack_ms"].get("p99"), a["ack_ms"].get("p99")),
        row("dropped, share of received", c["dropped_share"], a["dropped_share"]),
        row("processed fps per worker", _split(c["per_worker_fps"]),
            _split(a["per_worker_fps"])),
        row("busiest worker's share of processed frames (0.5 = even)",
            c["busiest_worker_share"], a["busiest_worker_share"]),
        row("clients whose frames went to both workers", c["clients_on_2_workers"],
            a["clients_on_2_workers"], "client: 0", c["clients_on_2_workers"] == 0),
        row("gap between a worker's results, p99 / max (ms)",
            f"{c['worker_result_gap_ms'].get('p99')} / {c['worker_result_gap_ms'].get('max')}",
            f"{a['worker_result_gap_ms'].get('p99')} / {a['worker_result_gap_ms'].get('max')}"),
        row("CPU used: ingest / workers / clients (cores)",
            " / ".join(f"{v:.2f}" for v in c["cpu_util"].values()),
            " / ".join(f"{v:.2f}" for v in a["cpu_util"].values())),
        row("skewed 1 fast + 3 x 2 Hz: fast client's processed fps"
            + (f" (bound to w{fast_worker})" if fast_worker is not None else ""),
            sc["per_client_fps"].get("fast"), sa["per_client_fps"].get("fast"), unit="fps"),
        row("skewed: total processed fps", sc["processed_fps"], sa["processed_fps"],
            unit="fps"),
        row("skewed: processed fps per worker", _split(sc["per_worker_fps"]),
            _split(sa["per_worker_fps"])),
        row("disconnects + ack timeouts", errors["client"], errors["any"], "0",
            errors["client"] == 0),
    ]
    return out
