"""The benchmarks. Each takes a Run (mode, scratch directory, test frames, figures shared
between benchmarks) and returns a dict that is written to results/<name>.json; each dict has a
``rows`` list for the summary table: metric, value, baseline, ratio, target, ok."""
from __future__ import annotations

import bisect
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from benchmarks.common import (
    PY,
    ROOT,
    BusTap,
    Clients,
    Daemon,
    Sampler,
    Script,
    cpu_seconds,
    env_with_pythonpath,
    ratio,
    summary_stats,
)


@dataclass
class Run:
    full: bool
    workdir: Path
    frames: dict[str, Path]
    shared: dict = field(default_factory=dict)   # e.g. measured capacity, for latency

    def t(self, quick: float, full: float) -> float:
        return full if self.full else quick


def row(metric, value, baseline=None, target=None, ok=None, unit="") -> dict:
    return {"metric": metric, "value": value, "baseline": baseline,
            "ratio": ratio(value, baseline) if isinstance(value, (int, float))
            and isinstance(baseline, (int, float)) else None,
            "target": target, "ok": ok, "unit": unit}


def sum_key(reports: list[dict], key: str) -> int:
    return sum(r.get(key, 0) for r in reports)


# -- 1. ingest --------------------------------------------------------------------------------

def _ingest_window(run: Run, server, count_fn, cpu_proc, specs: list[dict],
                   window: float) -> dict:
    """Run clients; measure server-side counts and the server process's CPU over the window
    (from 1 s after the clients start until 0.5 s before they stop)."""
    clients = Clients(server.url, run.workdir, specs, window + 1.5)
    plain_count = count_fn

    def count_fn():  # a loaded server may reset an HTTP request: ask again, bounded
        for attempt in range(3):
            try:
                return plain_count()
            except requests.RequestException:
                if attempt == 2:
                    raise
                time.sleep(0.2)
    try:
        clients.wait_started()
        time.sleep(1.0)
        c0, cpu0, t0 = count_fn(), cpu_seconds(cpu_proc), time.monotonic()
        time.sleep(window)
        c1, cpu1, t1 = count_fn(), cpu_seconds(cpu_proc), time.monotonic()
        reports = clients.collect()
    finally:
        clients.kill()
    frames, cpu, wall = c1 - c0, cpu1 - cpu0, t1 - t0
    acks = [a for r in reports for a in r["ack_ms"]]
    return {"clients": len(specs), "frames": frames, "seconds": round(wall, 2),
            "fps": round(frames / wall, 1), "cpu_s": round(cpu, 2),
            "cpu_util": round(cpu / wall, 3),
            "frames_per_cpu_s": round(frames / cpu, 1) if cpu > 0 else None,
            "ack_ms": summary_stats(acks), "disconnects": sum_key(reports, "disconnects"),
            "timeouts": sum_key(reports, "timeouts"),
            "client_errors": [r["error"] for r in reports if r.get("error")]}


def serves_eio3(url: str) -> bool:
    """Does this daemon speak the legacy revision (Engine.IO 3)?"""
    try:
        r = requests.get(url + "/socket.io/", params={"EIO": "3", "transport": "polling"},
                         timeout=5)
        return r.status_code == 200 and b"sid" in r.content
    except requests.RequestException:
        return False


def bench_ingest(run: Run) -> dict:
    ks = [1, 4, 16]
    window = run.t(4, 15)
    frame = str(run.frames["640x480"])
    out: dict = {"frame_bytes": run.frames["640x480"].stat().st_size, "window_s": window,
                 "camstream": {}, "stock": {}}

    def ack_specs(k):
        return [{"name": f"cam{i}", "frame": frame, "mode": "ack"} for i in range(k)]

    legacy_specs = [{"name": f"legacy{i}", "frame": frame, "mode": "emit",
                     "event": "receiveImage", "fps": 12.5} for i in range(4)]
    # both servers up at once; each K runs on one, then at once on the other, so that a
    # change in the machine's load hits both sides alike. The daemon has one worker (it
    # decodes what ingest accepts, beside ingest on the same cores).
    with Daemon(run.workdir, 1) as d, Script("stock_server", run.workdir) as s:
        d.wait_ready()
        s.wait_ready()
        ingest, stock = d.ingest(), s.process()

        def accepted():  # every frame not refused (dropped ones were accepted)
            t = d.health()["totals"]
            return t["received"] - t["refused"]

        def counted():
            c = requests.get(s.url + "/count", timeout=20).json()
            return c["frame"] + c["receiveImage"]
        for k in ks:
            out["camstream"][str(k)] = _ingest_window(run, d, accepted, ingest, ack_specs(k),
                                                      window)
            out["stock"][str(k)] = _ingest_window(run, s, counted, stock, ack_specs(k), window)
        out["camstream"]["legacy 4x12.5Hz"] = _ingest_window(run, d, accepted, ingest,
                                                             legacy_specs, window)
        out["stock"]["legacy 4x12.5Hz"] = _ingest_window(run, s, counted, stock,
                                                         legacy_specs, window)
        if serves_eio3(d.url):  # the Android app's revision, with the JS client 2.x
            eio3 = [dict(spec, runner="node", name=f"eio3-{i}")
                    for i, spec in enumerate(legacy_specs)]
            out["camstream"]["EIO3 4x12.5Hz"] = _ingest_window(run, d, accepted, ingest, eio3,
                                                               window)
        out["camstream"]["totals"] = d.health()["totals"]
    rows = []
    for k in ks:
        c, b = out["camstream"][str(k)], out["stock"][str(k)]
        rows.append(row(f"K={k} frames/s accepted", c["fps"], b["fps"], unit="fps"))
        r = ratio(c["frames_per_cpu_s"], b["frames_per_cpu_s"])
        rows.append(row(f"K={k} frames per ingest CPU-s", c["frames_per_cpu_s"],
                        b["frames_per_cpu_s"], target=">= 2500 and >= 30x stock",
                        ok=bool(c["frames_per_cpu_s"] and c["frames_per_cpu_s"] >= 2500
                                and r and r >= 30)))
        rows.append(row(f"K={k} ingest CPU utilisation", c["cpu_util"], b["cpu_util"]))
    c, b = out["camstream"]["legacy 4x12.5Hz"], out["stock"]["legacy 4x12.5Hz"]
    rows.append(row("receiveImage 4x12.5 Hz paced: frames per ingest CPU-s",
                    c["frames_per_cpu_s"], b["frames_per_cpu_s"]))
    e3 = out["camstream"].get("EIO3 4x12.5Hz")
    if e3:
        rows.append(row("EIO3 (JS client 2.x) receiveImage 4x12.5 Hz: frames/s",
                        e3["fps"], 50.0, target="= offered 50", ok=e3["fps"] >= 45))
        rows.append(row("EIO3 receiveImage 4x12.5 Hz: frames per ingest CPU-s (vs EIO4)",
                        e3["frames_per_cpu_s"], c["frames_per_cpu_s"]))
    out["rows"] = rows
    return out


# -- 2. flood ---------------------------------------------------------------------------------

def bench_flood(run: Run) -> dict:
    seconds = run.t(12, 60)
    frame = str(run.frames["640x480"])
    specs = [{"name": f"flood{i}", "frame": frame, "mode": "emit", "event": "receiveImage"}
             for i in range(4)]
    out: dict = {"seconds": seconds, "clients": len(specs)}
    with Daemon(run.workdir, 1) as d:
        d.wait_ready()
        ingest = d.ingest()
        sampler = Sampler({"ingest": ingest}, 0.5).start()
        rss_idle = ingest.memory_info().rss / 2 ** 20
        clients = Clients(d.url, run.workdir, specs, seconds)
        health_ms = []
        try:
            clients.wait_started()
            end = clients.start_at + seconds
            while time.time() < end:  # is ingest still answering while it is flooded?
                t0 = time.perf_counter()
                try:
                    d.health()
                    health_ms.append((time.perf_counter() - t0) * 1000)
                except requests.RequestException:
                    health_ms.append(5000.0)
                time.sleep(0.5)
            reports = clients.collect()
        finally:
            clients.kill()
        during = d.health()["totals"]
        time.sleep(1.5)
        after = d.health()["totals"]
        sampler.stop()
    rss = sampler.rss_series("ingest")
    rss_max = max(r for _, r in rss)
    unaccounted = after["received"] - after["refused"] - after["dropped"] - after["dispatched"]
    disconnects = sum_key(reports, "disconnects")
    out.update({
        "sent": sum_key(reports, "sent"), "totals_at_end": during, "totals_after": after,
        "offered_fps": round(sum_key(reports, "sent") / seconds, 1),
        "received_fps": round(during["received"] / seconds, 1),
        "rss_idle_mb": round(rss_idle, 1), "rss_max_mb": rss_max, "rss_series": rss,
        "disconnects": disconnects, "healthz_ms": summary_stats(health_ms),
        "unaccounted_after": unaccounted,
        "client_errors": [r["error"] for r in reports if r.get("error")]})
    out["rows"] = [
        row("ingest RSS max (MB)", rss_max, round(rss_idle, 1), "< 150", rss_max < 150),
        row("disconnects", disconnects, None, "0", disconnects == 0),
        row("received fps (flooded)", out["received_fps"], out["offered_fps"]),
        row("dropped, % of received", round(100 * after["dropped"] / max(1, after["received"]),
                                            1)),
        row("received - refused - dropped - dispatched (after)", unaccounted, None, "0",
            unaccounted == 0),
        row("/healthz p99 while flooded (ms)", out["healthz_ms"].get("p99")),
    ]
    return out


# -- 3. pipeline ------------------------------------------------------------------------------

def decode_baseline(frame: Path, processes: int, seconds: float) -> float:
    """Frames/s of ``processes`` plain cv2.imdecode loops, run side by side."""
    procs = [subprocess.Popen([PY, "-m", "benchmarks.decodeloop", str(frame), str(seconds)],
                              stdout=subprocess.PIPE, cwd=ROOT, env=env_with_pythonpath())
             for _ in range(processes)]
    total = 0.0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=seconds + 30)
            total += float(out.decode().strip() or 0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    return round(total, 1)


def saturate(run: Run, d: Daemon, tap: BusTap, frame: Path, window: float,
             clients: int = 4) -> dict:
    """Processed frames/s with ``clients`` ack clients sending as fast as acks return."""
    specs = [{"name": f"sat{i}", "frame": str(frame), "mode": "ack"} for i in range(clients)]
    cl = Clients(d.url, run.workdir, specs, window + 1.5)
    try:
        cl.wait_started()
        time.sleep(1.0)
        t0, h0 = time.time_ns(), d.health()["totals"]
        time.sleep(window)
        t1, h1 = time.time_ns(), d.health()["totals"]
        reports = cl.collect()
    finally:
        cl.kill()
    wall = (t1 - t0) / 1e9
    processed = len(tap.between(t0, t1))
    return {"processed_fps": round(processed / wall, 1),
            "received_fps": round((h1["received"] - h0["received"]) / wall, 1),
            "dropped_fps": round((h1["dropped"] - h0["dropped"]) / wall, 1),
            "disconnects": sum_key(reports, "disconnects")}


def bench_pipeline(run: Run) -> dict:
    window = run.t(4, 12)
    # on a 2-core machine W=1 is the fair comparison: one core decodes, the other carries
    # ingest and the load clients (the baseline loop has its cores to itself)
    worker_counts = [1] if not run.full else [1, 2]
    out: dict = {"window_s": window, "runs": {}}
    rows = []
    for w in worker_counts:
        with Daemon(run.workdir, w) as d:
            d.wait_ready()
            tap = BusTap(d.runtime_dir)
            try:
                for size, frame in run.frames.items():
                    out["runs"][f"W={w} {size}"] = saturate(run, d, tap, frame, window)
            finally:
                tap.close()
        for size, frame in run.frames.items():
            r = out["runs"][f"W={w} {size}"]
            r["baseline_fps"] = decode_baseline(frame, w, run.t(3, 8))
            r["ratio"] = ratio(r["processed_fps"], r["baseline_fps"])
            if size == "640x480":
                run.shared.setdefault("capacity", {})[w] = r["processed_fps"]
            rows.append(row(f"W={w} {size} processed fps", r["processed_fps"], r["baseline_fps"],
                            ">= 0.85 of imdecode loop", bool(r["ratio"] and r["ratio"] >= 0.85)))
    out["rows"] = rows
    return out


# -- 4. latency -------------------------------------------------------------------------------

def decode_times_ms(frame: Path, seconds: float) -> list[float]:
    """The floor: one cv2.imdecode, timed frame by frame, in this process."""
    import cv2
    import numpy as np
    buf = np.frombuffer(frame.read_bytes(), np.uint8)
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        cv2.imdecode(buf, cv2.IMREAD_COLOR)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def bench_latency(run: Run) -> dict:
    workers = 1  # as pipeline's quick run: a core for the worker, one for ingest and clients
    frame = run.frames["640x480"]
    window = run.t(10, 60)
    out: dict = {"workers": workers, "window_s": window}
    with Daemon(run.workdir, workers) as d:
        d.wait_ready()
        tap = BusTap(d.runtime_dir)
        try:
            capacity = run.shared.get("capacity", {}).get(workers)
            if not capacity:
                capacity = saturate(run, d, tap, frame, run.t(4, 10))["processed_fps"]
            offered = 0.7 * capacity
            k = 4
            specs = [{"name": f"lat{i}", "frame": str(frame), "mode": "ack",
                      "fps": offered / k} for i in range(k)]
            cl = Clients(d.url, run.workdir, specs, window + 1.5)
            try:
                cl.wait_started()
                time.sleep(1.0)
                t0 = time.time_ns()
                time.sleep(window)
                t1 = time.time_ns()
                reports = cl.collect()
            finally:
                cl.kill()
            recs = [r for r in tap.between(t0, t1) if r[0].startswith("lat")]
            h = d.health()["totals"]
        finally:
            tap.close()
    lat = [(done - recv) / 1e6 for _, _, recv, done in recs]
    floor = decode_times_ms(frame, 2)
    stats, floor_stats = summary_stats(lat), summary_stats(floor)
    acks = [a for r in reports for a in r["ack_ms"]]
    out.update({"capacity_fps": capacity, "offered_fps": round(offered, 1),
                "processed_fps": round(len(recs) / ((t1 - t0) / 1e9), 1),
                "latency_ms": stats, "decode_ms": floor_stats, "ack_ms": summary_stats(acks),
                "dropped": h["dropped"], "received": h["received"],
                "cdf_ms": sorted(round(v, 3) for v in lat),
                "decode_cdf_ms": sorted(round(v, 3) for v in floor)[::max(1, len(floor) // 2000)]})
    out["rows"] = [
        row("offered fps (70 % of capacity)", out["offered_fps"], capacity),
        row("receive->done p50 (ms)", stats.get("p50"), floor_stats.get("p50"), "<= 5",
            bool(stats.get("p50") is not None and stats["p50"] <= 5)),
        row("receive->done p99 (ms)", stats.get("p99"), floor_stats.get("p99"), "<= 25",
            bool(stats.get("p99") is not None and stats["p99"] <= 25)),
        row("frame ack p99 (ms)", out["ack_ms"].get("p99")),
    ]
    return out


# -- 5. isolation -----------------------------------------------------------------------------

SLOW_S = 0.2        # per frame, in each of 2 workers: capacity 10 fps; offered 31 fps = 3.1x


def _isolation_specs(run: Run) -> list[dict]:
    frame = str(run.frames["640x480"])
    return [{"name": "slow1hz", "frame": frame, "mode": "ack", "fps": 1, "send_times": True},
            {"name": "flood30hz", "frame": frame, "mode": "emit", "event": "frame", "fps": 30,
             "send_times": True}]


def _ages(done: list[tuple[int, int]], send_ns: list[int]) -> tuple[list[float], list[int]]:
    """Age (ms since the client sent it) and seq gap (frames the client had sent since) of
    each processed frame, given (n, done_ns) pairs."""
    ages, gaps = [], []
    for n, done_ns in done:
        if 1 <= n <= len(send_ns):
            ages.append((done_ns - send_ns[n - 1]) / 1e6)
            gaps.append(bisect.bisect_right(send_ns, done_ns) - n)
    return ages, gaps


def _isolation_side(reports: list[dict], done: dict[str, list[tuple[int, int]]],
                    rss: list[tuple[float, float]], seconds: float) -> dict:
    by = {r["name"]: r for r in reports}
    slow, flood = by.get("slow1hz", {}), by.get("flood30hz", {})
    ages, gaps = _ages(done.get("flood30hz", []), flood.get("send_ns", []))
    acks = slow.get("ack_ms", []) + [10000.0] * slow.get("timeouts", 0)
    rss_vals = [r for _, r in rss] or [0]
    early = [r for t, r in rss if t <= 5] or rss_vals[:1]
    return {
        "disconnects": sum_key(reports, "disconnects"),
        "disconnect_at_s": [t for r in reports for t in r.get("disconnect_at", [])],
        "ack_ms_1hz": summary_stats(acks), "ack_timeouts_1hz": slow.get("timeouts", 0),
        "sent_1hz": slow.get("sent", 0), "processed_1hz": len(done.get("slow1hz", [])),
        "processed_fraction_1hz": round(len(done.get("slow1hz", [])) / max(1, slow.get("sent",
                                                                                   0)), 3),
        "sent_30hz": flood.get("sent", 0),
        "processed_fps_30hz": round(len(done.get("flood30hz", [])) / seconds, 2),
        "age_ms_30hz": summary_stats(ages), "seq_gap_30hz": summary_stats(gaps),
        "rss_start_mb": max(early), "rss_end_mb": rss_vals[-1], "rss_max_mb": max(rss_vals),
        "rss_growth_mb": round(rss_vals[-1] - max(early), 1), "rss_series": rss,
        "client_errors": [r["error"] for r in reports if r.get("error")]}


def bench_isolation(run: Run) -> dict:
    seconds = run.t(30, 300)
    env = {**env_with_pythonpath(), "SLOW_WORK_S": str(SLOW_S)}
    out: dict = {"seconds": seconds, "slow_work_s": SLOW_S, "workers": 2,
                 "offered_fps": 31, "capacity_fps": 2 / SLOW_S,
                 "concurrent": not run.full}
    proto_log = run.workdir / "prototype-done.log"

    def start_camstream():
        d = Daemon(run.workdir, 2, "--processor", "benchmarks.slow:work", env=env)
        d.wait_ready()
        return d

    def start_prototype():
        s = Script("prototype_server", run.workdir, "--log", str(proto_log), env=env)
        s.wait_ready()
        return s

    def finish_camstream(d, tap, sampler, reports, t0):
        time.sleep(1.0)
        sampler.stop()
        done: dict[str, list] = {}
        for client, seq, _, done_ns in tap.records:
            done.setdefault(client, []).append((seq, done_ns))
        side = _isolation_side(reports, done, sampler.rss_series("ingest"), seconds)
        side["healthz"] = d.health()["clients"]
        return side

    def finish_prototype(sampler, reports):
        sampler.stop()
        done: dict[str, list] = {}
        for line in proto_log.read_text().splitlines():
            client, n, done_ns = line.split()
            done.setdefault(client, []).append((int(n), int(done_ns)))
        return _isolation_side(reports, done, sampler.rss_series("prototype"), seconds)

    servers = []
    try:
        if run.full:  # one after the other: each has the machine to itself
            d = start_camstream()
            servers.append(d)
            tap, sampler = BusTap(d.runtime_dir), Sampler({"ingest": d.ingest()}, 1.0).start()
            cl = Clients(d.url, run.workdir, _isolation_specs(run), seconds)
            try:
                reports = cl.collect(extra=30)
            finally:
                cl.kill()
            out["camstream"] = finish_camstream(d, tap, sampler, reports, None)
            tap.close()
            s = start_prototype()
            servers.append(s)
            sampler = Sampler({"prototype": s.process()}, 1.0).start()
            cl = Clients(s.url, run.workdir, _isolation_specs(run), seconds)
            try:
                reports = cl.collect(extra=30)
            finally:
                cl.kill()
            out["prototype"] = finish_prototype(sampler, reports)
        else:  # side by side, to fit the quick budget (the slow work is sleep, not CPU)
            d = start_camstream()
            servers.append(d)
            s = start_prototype()
            servers.append(s)
            tap = BusTap(d.runtime_dir)
            s1 = Sampler({"ingest": d.ingest()}, 1.0).start()
            s2 = Sampler({"prototype": s.process()}, 1.0).start()
            c1 = Clients(d.url, run.workdir, _isolation_specs(run), seconds)
            c2 = Clients(s.url, run.workdir, _isolation_specs(run), seconds)
            try:
                r1, r2 = c1.collect(extra=30), c2.collect(extra=30)
            finally:
                c1.kill()
                c2.kill()
            out["camstream"] = finish_camstream(d, tap, s1, r1, None)
            out["prototype"] = finish_prototype(s2, r2)
            tap.close()
    finally:
        for srv in servers:
            srv.stop()
    c, p = out["camstream"], out["prototype"]
    out["rows"] = [
        row("disconnects", c["disconnects"], p["disconnects"], "0", c["disconnects"] == 0),
        row("1 Hz client: frame ack p99 (ms)", c["ack_ms_1hz"].get("p99"),
            p["ack_ms_1hz"].get("p99")),
        row("1 Hz client: processed fraction", c["processed_fraction_1hz"],
            p["processed_fraction_1hz"], "~1", c["processed_fraction_1hz"] >= 0.9),
        row("30 Hz client: processed fps", c["processed_fps_30hz"], p["processed_fps_30hz"]),
        row("30 Hz client: age of processed frames p50 (ms)", c["age_ms_30hz"].get("p50"),
            p["age_ms_30hz"].get("p50")),
        row("30 Hz client: age p99 (ms)", c["age_ms_30hz"].get("p99"),
            p["age_ms_30hz"].get("p99")),
        row("30 Hz client: seq gap p99 (frames)", c["seq_gap_30hz"].get("p99"),
            p["seq_gap_30hz"].get("p99")),
        row("server RSS growth over the run (MB)", c["rss_growth_mb"], p["rss_growth_mb"]),
        row("server RSS max (MB)", c["rss_max_mb"], p["rss_max_mb"]),
    ]
    return out


# -- profile ----------------------------------------------------------------------------------

def parse_collapsed(text: str, top: int = 20) -> dict:
    """py-spy ``--format raw`` (collapsed stacks: ``f1;f2;f3 count``) -> self and total."""
    self_, total, samples = {}, {}, 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_[frames[-1]] = self_.get(frames[-1], 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n

    def topn(d):
        return [{"frame": f, "samples": c, "pct": round(100 * c / max(1, samples), 1)}
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": samples, "self": topn(self_), "total": topn(total)}


def bench_profile(run: Run) -> dict:
    seconds = run.t(10, 30)
    frame = str(run.frames["640x480"])
    specs = [{"name": f"prof{i}", "frame": frame, "mode": "ack"} for i in range(4)]
    raw = run.workdir / "ingest-profile.txt"
    out: dict = {"clients": 4, "seconds": seconds, "rate": 250}
    with Daemon(run.workdir, 1) as d:
        d.wait_ready()
        pid = d.ingest().pid
        cl = Clients(d.url, run.workdir, specs, seconds + 2)
        try:
            cl.wait_started()
            time.sleep(1.0)
            spy = subprocess.run(
                [str(Path(PY).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                 "-o", str(raw), "-d", str(int(seconds)), "-r", "250", "--nonblocking"],
                capture_output=True, text=True, timeout=seconds + 60)
            reports = cl.collect()
        finally:
            cl.kill()
    out["py_spy_stderr"] = spy.stderr[-1000:]
    out["fps"] = round(sum_key(reports, "accepted") / (seconds + 2), 1)
    if raw.exists():
        text = raw.read_text()
        (Path(__file__).parent / "results" / "ingest-profile.collapsed").write_text(text)
        out.update(parse_collapsed(text))
    out["rows"] = [row("py-spy samples of ingest", out.get("samples", 0))] + [
        row(f"self #{i + 1}: {e['frame'][:70]}", e["pct"], unit="%")
        for i, e in enumerate(out.get("self", [])[:5])]
    return out


def bench_scaleout(run: Run) -> dict:
    """benchmarks/scaleout.py (imported when run: it builds on this module's helpers)."""
    from benchmarks.scaleout import bench_scaleout as bench
    return bench(run)


def bench_routing(run: Run) -> dict:
    """benchmarks/routing.py: --route client vs --route any (imported when run, as scaleout)."""
    from benchmarks.routing import bench_routing as bench
    return bench(run)


def bench_webview(run: Run) -> dict:
    """benchmarks/webview.py: what a browser viewer costs (imported when run, as scaleout)."""
    from benchmarks.webview import bench_webview as bench
    return bench(run)


def bench_peers(run: Run) -> dict:
    """benchmarks/peers.py: against Node's socket.io and python-socketio (imported when run)."""
    from benchmarks.peers import bench_peers as bench
    return bench(run)


BENCHMARKS = {
    "ingest": bench_ingest,
    "flood": bench_flood,
    "pipeline": bench_pipeline,
    "latency": bench_latency,
    "isolation": bench_isolation,
    "profile": bench_profile,
    "scaleout": bench_scaleout,
    "routing": bench_routing,
    "webview": bench_webview,
    "peers": bench_peers,
}
