"""Soak: N clients stream at F Hz for M minutes while a worker is killed every minute.

``python -m benchmarks.soak [--minutes 30] [--clients 20] [--fps 5] [--size 640x480]``

Every second it records the RSS of each process (supervisor, ingest, each worker slot: a
restarted worker keeps its slot's column), the frames received and processed in that second,
and the drops, losses and refusals counted by ``/healthz`` in that second, into
``benchmarks/results/soak.csv``; at the end it plots them into ``benchmarks/results/soak.png``
(kills marked) and writes ``soak.json`` with the verdicts: memory flat (each process's RSS in
the last fifth of the run against the first fifth after warm-up), losses only within
LOST_AFTER + a few seconds after a kill, no client disconnected.

Not part of ``python -m benchmarks`` (whose runs are bounded to minutes by design): a soak is
long on purpose. Clients are ``benchmarks.loadclient`` processes (``frame`` with an ack, paced);
the daemon is the last commit (a snapshot, as the suite measures) unless ``--tree worktree``.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from benchmarks.common import (
    RESULTS,
    SOURCE,
    Clients,
    Daemon,
    frame_files,
    snapshot_head,
    wait_for,
    write_json,
)
from camstream.ingest.ledger import LOST_AFTER

COUNTERS = ("received", "processed", "dropped", "lost", "refused", "errors")


def title(p: psutil.Process) -> str:
    return " ".join(p.cmdline()).strip()


def processes(d: Daemon, workers: int) -> dict[str, psutil.Process | None]:
    """The supervisor, ingest and each worker slot, by process title."""
    found: dict[str, psutil.Process | None] = {"supervisor": psutil.Process(d.proc.pid),
                                               "ingest": None}
    found.update({f"worker {i}": None for i in range(1, workers + 1)})
    try:
        for p in psutil.Process(d.proc.pid).children():
            t = title(p)
            if t.startswith("camstream: "):
                found[t[len("camstream: "):]] = p
    except psutil.Error:
        pass
    return found


def rss_mb(p: psutil.Process | None) -> float | None:
    try:
        return round(p.memory_info().rss / 2 ** 20, 1) if p else None
    except psutil.Error:
        return None


def health(d: Daemon) -> dict | None:
    for _ in range(3):  # a loaded server may reset a request: ask again, bounded
        try:
            return requests.get(d.url + "/healthz", timeout=5).json()
        except (requests.RequestException, ValueError):
            time.sleep(0.1)
    return None


def run(args) -> dict:
    duration = args.minutes * 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="camstream-soak-") as tmp:
        workdir = Path(tmp)
        if args.tree == "head":
            snapshot_head(workdir / "src")
        frame = frame_files(workdir)[args.size]
        d = Daemon(workdir, args.workers)
        rows: list[dict] = []
        kills: list[float] = []
        try:
            d.wait_ready()
            specs = [{"name": f"soak{i:02d}", "frame": str(frame), "mode": "ack",
                      "event": "frame", "fps": args.fps} for i in range(args.clients)]
            clients = Clients(d.url, workdir, specs, duration)
            try:
                clients.wait_started()
                rows, kills = sample(d, args, duration)
                reports = clients.collect()
            finally:
                clients.kill()
            final = wait_for(lambda: settled(d), LOST_AFTER * 4, what="frames to settle")
            log_tail = d.output()[-3000:]
        finally:
            d.stop()
    return summarise(args, rows, kills, reports, final, log_tail)


def settled(d: Daemon) -> dict | None:
    h = health(d)
    return h if h and h["totals"]["in_flight"] == 0 else None


def sample(d: Daemon, args, duration: float) -> tuple[list[dict], list[float]]:
    """One row a second; a worker killed every ``--kill-every`` seconds (first after one)."""
    rng = random.Random(1)
    t0 = time.monotonic()
    next_kill = args.kill_every
    prev = None
    rows, kills = [], []
    tick = 0
    while True:
        tick += 1
        delay = t0 + tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic() - t0
        if t > duration:
            break
        procs = processes(d, args.workers)
        if t >= next_kill:
            workers = [p for k, p in procs.items() if k.startswith("worker") and p]
            if workers:
                victim = rng.choice(workers)
                try:
                    victim.kill()
                    kills.append(round(t, 1))
                    print(f"[{t:6.0f} s] killed {title(victim)} (pid {victim.pid})",
                          file=sys.stderr, flush=True)
                except psutil.Error:
                    pass
            next_kill += args.kill_every
        h = health(d)
        row = {"t": round(t, 1)}
        row.update({f"rss_{k.replace(' ', '')}_mb": rss_mb(p) for k, p in procs.items()})
        if h:
            tot = h["totals"]
            if prev:
                for k in COUNTERS:
                    row[k] = tot[k] - prev[k]
            row["workers_alive"] = h["workers"]["alive"]
            row["restarts"] = h["workers"]["restarts"]
            prev = tot
        rows.append(row)
        if tick % 60 == 0:
            print(f"[{t:6.0f} s] in {row.get('received')}/s processed {row.get('processed')}/s "
                  f"ingest {row.get('rss_ingest_mb')} MB", file=sys.stderr, flush=True)
    return rows, kills


def summarise(args, rows, kills, reports, final, log_tail) -> dict:
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "t", not k.startswith(
        "rss"), k))
    with open(RESULTS / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    rss_cols = [k for k in fields if k.startswith("rss_")]
    n = len(rows)
    warm = rows[min(n - 1, max(1, n // 10)):]  # skip the first tenth: imports, first frames
    fifth = max(1, len(warm) // 5)
    memory = {}
    for col in rss_cols:
        first = [r[col] for r in warm[:fifth] if r.get(col)]
        last = [r[col] for r in warm[-fifth:] if r.get(col)]
        if first and last:
            a, b = sum(first) / len(first), sum(last) / len(last)
            memory[col] = {"first_mb": round(a, 1), "last_mb": round(b, 1),
                           "growth_mb": round(b - a, 1), "max_mb": max(r[col] for r in rows
                                                                        if r.get(col))}
    flat = all(m["growth_mb"] < 10 for m in memory.values())
    # a frame is declared lost LOST_AFTER s after its dispatch: losses belong to a kill when
    # they show up within LOST_AFTER + 5 s of it
    window = LOST_AFTER + 5
    stray = [r["t"] for r in rows if (r.get("lost") or 0) > 0 and
             not any(0 <= r["t"] - k <= window for k in kills)]
    seconds = [r for r in rows if "received" in r]
    span = max(1, len(seconds))
    tot = {k: sum(r.get(k, 0) for r in seconds) for k in COUNTERS}
    result = {
        "minutes": args.minutes, "clients": args.clients, "fps": args.fps, "size": args.size,
        "workers": args.workers, "kills": kills, "tree": args.tree,
        "commit": SOURCE.get("commit", ""),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fps_in_mean": round(tot["received"] / span, 1),
        "fps_processed_mean": round(tot["processed"] / span, 1),
        "totals_final": final["totals"] if final else None,
        "restarts": final["workers"]["restarts"] if final else None,
        "memory": memory, "memory_flat": flat,
        "lost_total": final["totals"]["lost"] if final else None,
        "lost_outside_fault_windows": stray,
        "client_disconnects": sum(r.get("disconnects", 0) for r in reports),
        "client_errors": [r.get("error") for r in reports if r.get("error")],
        "client_sent": sum(r.get("sent", 0) for r in reports),
        "client_refused": sum(r.get("refused", 0) for r in reports),
        "client_timeouts": sum(r.get("timeouts", 0) for r in reports),
    }
    if not final:
        result["log_tail"] = log_tail
    write_json("soak", result)
    plot(rows, kills, rss_cols, args)
    return result


def plot(rows, kills, rss_cols, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t"] / 60 for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for col in rss_cols:
        ax1.plot(t, [r.get(col) for r in rows], label=col[4:-3], lw=1)
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(fontsize=7, ncol=4, loc="upper left")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, [r.get("received") for r in rows], label="fps in", lw=1)
    ax2.plot(t, [r.get("processed") for r in rows], label="fps processed", lw=1)
    ax2.set_ylabel("frames / s")
    ax2.legend(fontsize=7, loc="lower left")
    ax2.set_ylim(bottom=0)
    for key, colour in (("dropped", "tab:orange"), ("lost", "tab:red"),
                        ("refused", "tab:purple")):
        ax3.bar(t, [r.get(key) or 0 for r in rows], width=1 / 60, color=colour, label=key)
    ax3.set_ylabel("frames / s")
    ax3.set_xlabel("minutes")
    ax3.legend(fontsize=7, loc="upper left")
    for ax in (ax1, ax2, ax3):
        for k in kills:
            ax.axvline(k / 60, color="grey", lw=0.6, ls=":")
    fig.suptitle(f"camstream soak: {args.clients} clients x {args.fps} Hz ({args.size}), "
                 f"{args.workers} workers, a worker killed every {args.kill_every:g} s "
                 "(dotted lines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "soak.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length (default: 30)")
    p.add_argument("--clients", type=int, default=20, help="client processes (default: 20)")
    p.add_argument("--fps", type=float, default=5.0, help="frames a second each (default: 5)")
    p.add_argument("--size", default="640x480", choices=["160x120", "640x480", "1280x960"],
                   help="frame size (default: 640x480)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--kill-every", type=float, default=60.0, metavar="S",
                   help="kill a worker every S seconds (default: 60)")
    p.add_argument("--tree", choices=["head", "worktree"], default="head",
                   help="camstream under test: a snapshot of the last commit, or the working "
                   "tree as it is")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=1))
    ok = result["memory_flat"] and not result["lost_outside_fault_windows"] and \
        not result["client_disconnects"] and not result["client_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
