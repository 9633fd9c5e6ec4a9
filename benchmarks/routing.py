"""routing: what ``--route client`` (each client bound to one worker, one PUSH per worker)
costs against ``--route any`` (one shared PUSH that deals frames to any free worker), in one
run, with the same processor (``stats``, so the work per frame is the same) and 2 workers.

Both daemons are up at once (the idle one costs next to nothing) and the same load runs on one,
then on the other; in full mode a second round runs in the opposite order, so that a change in
the machine's load hits both sides alike.

- balanced: 4 ack clients (one ``frame`` in flight each, as fast as the acks return), 640x480.
  Processed frames/s (results counted on the bus), the ratio client/any, frame ack p50/p99,
  the dropped share (dropped / received, /healthz totals over the window), frames per worker
  (the ``worker`` field of each result on the bus) and how many clients had their frames
  processed by more than one worker (client routing: none).
- skewed: 1 fast ack client + 3 paced at 2 Hz. With client routing the fast client is confined
  to the one worker it is bound to; with any routing it uses both. Its processed frames/s, and
  the total, client/any.

Ingest and worker CPU-seconds over each window are recorded too (psutil), to tell where a
difference comes from.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import psutil
import requests
import zmq

from benchmarks.common import BusTap, Clients, Daemon, ratio, summary_stats
from benchmarks.suite import Run, row, sum_key
from camstream import wire

WORKERS = 2
MODES = ("any", "client")


class WorkerTap(BusTap):
    """BusTap that also keeps which worker processed each frame (the result's ``worker``):
    records are (client, seq, recv_ns, done_ns, worker)."""

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            parts = self.sub.recv_multipart()
            h = wire.Header.unpack(parts[1])
            result = json.loads(parts[2])
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
    """Run the clients; measure from 1 s after they start until ``window`` s later."""
    ingest, workers = d.ingest(), _workers(d)
    cl = Clients(d.url, run.workdir, specs, window + 1.5)
    try:
        cl.wait_started()
        time.sleep(1.0)
        t0, h0 = time.time_ns(), _totals(d)
        ci0, cw0 = _cpu([ingest]), _cpu(workers)
        time.sleep(window)
        t1, h1 = time.time_ns(), _totals(d)
        ci1, cw1 = _cpu([ingest]), _cpu(workers)
        reports = cl.collect()
    finally:
        cl.kill()
    try:
        bindings = {name: r["worker"] for name, r in d.health()["clients"].items()
                    if "worker" in r}
    except requests.RequestException:
        bindings = {}
    wall = (t1 - t0) / 1e9
    recs = tap.between(t0, t1)
    per_worker = Counter(r[4] for r in recs)
    per_client: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        per_client[r[0]][r[4]] += 1
    received = h1["received"] - h0["received"]
    dropped = h1["dropped"] - h0["dropped"]
    acks = [a for r in reports for a in r["ack_ms"]]
    processed = len(recs)
    return {
        "seconds": round(wall, 2),
        "processed_fps": round(processed / wall, 1),
        "received_fps": round(received / wall, 1),
        "dropped_share": round(dropped / received, 3) if received else None,
        "ack_ms": summary_stats(acks),
        "per_worker_fps": {str(w): round(n / wall, 1) for w, n in sorted(per_worker.items())},
        "busiest_worker_share": round(max(per_worker.values()) / processed, 3)
        if processed else None,
        "per_client_fps": {c: round(sum(ws.values()) / wall, 1)
                           for c, ws in sorted(per_client.items())},
        "per_client_workers": {c: {str(w): n for w, n in sorted(ws.items())}
                               for c, ws in sorted(per_client.items())},
        "clients_on_2_workers": sum(1 for ws in per_client.values() if len(ws) > 1),
        "bindings": bindings,
        "ingest_cpu_util": round((ci1 - ci0) / wall, 3),
        "workers_cpu_util": round((cw1 - cw0) / wall, 3),
        "ingest_cpu_ms_per_frame": round(1000 * (ci1 - ci0) / received, 3) if received
        else None,
        "workers_cpu_ms_per_processed": round(1000 * (cw1 - cw0) / processed, 3)
        if processed else None,
        "disconnects": sum_key(reports, "disconnects"),
        "timeouts": sum_key(reports, "timeouts"),
        "client_errors": [r["error"] for r in reports if r.get("error")],
    }


def _merge(windows: list[dict]) -> dict:
    """Rounds of one mode, as one (time-weighted where it matters)."""
    if len(windows) == 1:
        return windows[0]
    secs = sum(w["seconds"] for w in windows)

    def wavg(key):
        vals = [(w[key], w["seconds"]) for w in windows if w.get(key) is not None]
        return round(sum(v * s for v, s in vals) / sum(s for _, s in vals), 3) if vals else None
    out = {"seconds": round(secs, 2), "rounds": windows}
    for key in ("processed_fps", "received_fps", "dropped_share", "busiest_worker_share",
                "ingest_cpu_util", "workers_cpu_util", "ingest_cpu_ms_per_frame",
                "workers_cpu_ms_per_processed"):
        out[key] = wavg(key)
    for key in ("per_worker_fps", "per_client_fps"):
        names = sorted({k for w in windows for k in w[key]})
        out[key] = {k: round(sum(w[key].get(k, 0) * w["seconds"] for w in windows) / secs, 1)
                    for k in names}
    # ack percentiles of the rounds pooled are not kept per ack: take the worse round
    out["ack_ms"] = {q: max(w["ack_ms"].get(q) or 0 for w in windows) for q in ("p50", "p99")}
    for key in ("clients_on_2_workers", "disconnects", "timeouts"):
        out[key] = max(w[key] for w in windows) if key == "clients_on_2_workers" else \
            sum(w[key] for w in windows)
    out["client_errors"] = [e for w in windows for e in w["client_errors"]]
    out["bindings"] = windows[-1]["bindings"]
    return out


def _split(fps: dict) -> str:
    return " / ".join(f"w{w} {v:.0f}" for w, v in sorted(fps.items()))


def bench_routing(run: Run) -> dict:
    frame = str(run.frames["640x480"])
    window, skew_window = run.t(15, 30), run.t(8, 20)
    rounds = 1 if not run.full else 2
    balanced = [{"name": f"bal{i}", "frame": frame, "mode": "ack"} for i in range(4)]
    skewed = [{"name": "fast", "frame": frame, "mode": "ack"}] + [
        {"name": f"slow{i}", "frame": frame, "mode": "ack", "fps": 2} for i in range(3)]
    out: dict = {"workers": WORKERS, "processor": "stats", "window_s": window,
                 "skew_window_s": skew_window, "rounds": rounds,
                 "balanced": {m: [] for m in MODES}, "skewed": {m: [] for m in MODES}}
    daemons: dict[str, Daemon] = {}
    taps: dict[str, WorkerTap] = {}
    try:
        for mode in MODES:  # both start at once; wait_ready below
            daemons[mode] = Daemon(run.workdir, WORKERS, "--route", mode)
        for mode in MODES:
            daemons[mode].wait_ready()
            taps[mode] = WorkerTap(daemons[mode].runtime_dir)
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                out["balanced"][mode].append(_window(run, daemons[mode], taps[mode], balanced,
                                                     window))
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                out["skewed"][mode].append(_window(run, daemons[mode], taps[mode], skewed,
                                                   skew_window))
    finally:
        for tap in taps.values():
            tap.close()
        for d in daemons.values():
            d.stop()
    for case in ("balanced", "skewed"):
        for mode in MODES:
            out[case][mode] = _merge(out[case][mode])
    a, c = out["balanced"]["any"], out["balanced"]["client"]
    sa, sc = out["skewed"]["any"], out["skewed"]["client"]
    out["ratios"] = {
        "balanced_processed": ratio(c["processed_fps"], a["processed_fps"]),
        "skewed_processed": ratio(sc["processed_fps"], sa["processed_fps"]),
        "skewed_fast_client": ratio(sc["per_client_fps"].get("fast"),
                                    sa["per_client_fps"].get("fast")),
    }
    fast_worker = out["skewed"]["client"].get("bindings", {}).get("fast")
    out["rows"] = [
        row("4 ack clients, 640x480: processed fps (client vs any)", c["processed_fps"],
            a["processed_fps"], ">= 0.85 of any",
            bool(out["ratios"]["balanced_processed"]
                 and out["ratios"]["balanced_processed"] >= 0.85), unit="fps"),
        row("frame ack p50 (ms)", c["ack_ms"].get("p50"), a["ack_ms"].get("p50")),
        row("frame ack p99 (ms)", c["ack_ms"].get("p99"), a["ack_ms"].get("p99")),
        row("dropped, share of received", c["dropped_share"], a["dropped_share"]),
        row("processed fps per worker", _split(c["per_worker_fps"]),
            _split(a["per_worker_fps"])),
        row("busiest worker's share of processed frames (0.5 = even)",
            c["busiest_worker_share"], a["busiest_worker_share"]),
        row("clients whose frames went to both workers", c["clients_on_2_workers"],
            a["clients_on_2_workers"], "client: 0", c["clients_on_2_workers"] == 0),
        row("ingest CPU ms per received frame", c["ingest_cpu_ms_per_frame"],
            a["ingest_cpu_ms_per_frame"]),
        row("skewed 1 fast + 3 x 2 Hz: fast client's processed fps"
            + (f" (bound to w{fast_worker})" if fast_worker is not None else ""),
            sc["per_client_fps"].get("fast"), sa["per_client_fps"].get("fast"), unit="fps"),
        row("skewed: total processed fps", sc["processed_fps"], sa["processed_fps"],
            unit="fps"),
        row("skewed: processed fps per worker", _split(sc["per_worker_fps"]),
            _split(sa["per_worker_fps"])),
        row("disconnects + ack timeouts (all windows)",
            c["disconnects"] + c["timeouts"] + sc["disconnects"] + sc["timeouts"],
            a["disconnects"] + a["timeouts"] + sa["disconnects"] + sa["timeouts"], "0",
            c["disconnects"] + c["timeouts"] + sc["disconnects"] + sc["timeouts"] == 0),
    ]
    return out

