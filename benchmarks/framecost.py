"""``python -m benchmarks.framecost``: frames accepted per ingest CPU-second, for the lean
websocket path (issue 18), comparing camstream trees in alternating windows.

    python -m benchmarks.framecost --tree worktree --tree 1c9b225 --sizes 10,60 --windows 1,4

Each ``--tree`` (``worktree``, or a commit, unpacked with ``git archive``) runs its own daemon
(1 worker, limits lifted), all up at once; every configuration (revision x frame size x
window) runs a window on each daemon in turn, so a change of the machine's load hits them
alike. Clients: ``benchmarks/ackclient.js``, 4 JS socket.io-client 4.x (Engine.IO 4) or 2.x
(Engine.IO 3) processes sending ``frame`` with an ack, ``window`` frames in flight each.
Measured per window: accepted frames (``/healthz`` received - refused), ingest CPU-seconds
(psutil of the ``camstream: ingest`` child), dropped and processed shares, the clients' ack
latency. ``--profile DIR`` records py-spy (``--native``, 250 Hz) of each daemon's ingest over
one extra window (4.x clients, 60 KB, window 4) and writes its top entries there.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    BENCH,
    NODE,
    PY,
    ROOT,
    Daemon,
    cpu_seconds,
    summary_stats,
    wait_connected,
)
from benchmarks.suite import parse_collapsed
from tests.helpers.images import jpeg_of_size


def tree_env(workdir: Path, tree: str) -> tuple[dict, str]:
    """The environment that makes a daemon import camstream from ``tree``; its label."""
    env = dict(os.environ)
    if tree == "worktree":
        src, label = ROOT, "worktree"
    else:
        commit = subprocess.run(["git", "rev-parse", tree], cwd=ROOT, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        src = workdir / f"src-{commit[:9]}"
        archive = subprocess.run(["git", "archive", commit, "camstream", "workers"], cwd=ROOT,
                                 capture_output=True, check=True, timeout=60).stdout
        src.mkdir()
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=60)
        label = commit[:9]
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT)])
    return env, label


def run_clients(url: str, workdir: Path, client: str, frame: Path, window: int, count: int,
                seconds: float, fps: float = 0) -> tuple[list, float]:
    """Start ``count`` ack clients; return (processes with their report paths, start time)."""
    tag = time.monotonic_ns()
    go = workdir / f"go-{tag}"
    procs = []
    for i in range(count):
        out = workdir / f"ack-{tag}-{i}.json"
        cfg = {"url": url, "client": client, "name": f"cam{i}", "frame": str(frame),
               "window": window, "duration": seconds, "out": str(out), "go": str(go),
               "fps": fps}
        procs.append((subprocess.Popen([NODE, str(BENCH / "ackclient.js"), json.dumps(cfg)],
                                       cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL), out))
    wait_connected(procs, 30)
    start = time.time() + 0.3
    go.with_suffix(".tmp").write_text(repr(start))
    go.with_suffix(".tmp").rename(go)
    return procs, start


def collect(procs: list, seconds: float) -> list[dict]:
    reports = []
    for p, out in procs:
        try:
            p.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        Path(f"{out}.ready").unlink(missing_ok=True)
        if out.exists():
            reports.append(json.loads(out.read_text()))
            out.unlink()
        else:
            reports.append({"error": f"no report (exit {p.returncode})"})
    return reports


def totals(d: Daemon) -> dict:
    for attempt in range(3):
        try:
            return d.health()["totals"]
        except Exception:  # noqa: BLE001 (a loaded server may reset a request: ask again)
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError


def window_on(d: Daemon, workdir: Path, client: str, frame: Path, window: int, count: int,
              seconds: float, spy: Path | None = None, fps: float = 0) -> dict:
    """One measured window: from 1 s after the clients start to 0.5 s before they stop."""
    ingest = d.ingest()
    procs, start = run_clients(d.url, workdir, client, frame, window, count, seconds + 1.5,
                               fps)
    spy_proc = None
    try:
        time.sleep(max(0.0, start - time.time()) + 1.0)
        t0, c0, cpu0 = time.monotonic(), totals(d), cpu_seconds(ingest)
        if spy is not None:
            spy_proc = subprocess.Popen(
                [str(Path(PY).parent / "py-spy"), "record", "--pid", str(ingest.pid),
                 "--native", "--format", "raw", "-o", str(spy), "-d", str(int(seconds)),
                 "-r", "250"],  # --native cannot be --nonblocking
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(seconds)
        t1, c1, cpu1 = time.monotonic(), totals(d), cpu_seconds(ingest)
        if spy_proc is not None:
            spy_proc.wait(timeout=60)
    finally:
        reports = collect(procs, seconds)
    received = c1["received"] - c0["received"]
    accepted = received - (c1["refused"] - c0["refused"])
    cpu, wall = cpu1 - cpu0, t1 - t0
    dropped = c1["dropped"] - c0["dropped"]
    return {"accepted": accepted, "fps": round(accepted / wall, 1), "cpu_s": round(cpu, 2),
            "cpu_us_per_frame": round(cpu / accepted * 1e6) if accepted else None,
            "frames_per_cpu_s": round(accepted / cpu) if cpu > 0 else None,
            "dropped_pct": round(100 * dropped / accepted, 1) if accepted else None,
            "processed_fps": round((c1.get("processed", 0) - c0.get("processed", 0)) / wall, 1),
            "ack_ms_p50": _median([r.get("ack_ms", {}).get("p50") for r in reports]),
            "ack_ms_p99": max((r.get("ack_ms", {}).get("p99") or 0 for r in reports),
                              default=None),
            "disconnects": sum(r.get("disconnects", 0) for r in reports),
            "errors": [r["error"] for r in reports if r.get("error")]}


def profile_text(label: str, top: dict, clients: int, date: str) -> str:
    """The top entries of a py-spy profile, as benchmarks/results/profile-*.txt keep them."""
    w = top["window"]
    lines = [f"camstream ingest under load, commit {label}, {date}",
             f"py-spy record --native -r 250 (blocking: it slows ingest while it samples), "
             f"{clients} JS 4.x clients, frame with ack, window 4, "
             f"{round(w.get('bytes', 0) / 1000) or '?'} KB frames, 1 worker",
             "python -m benchmarks.framecost --tree COMMIT --profile DIR",
             f"during the profile: {w['fps']} accepted fps, {w['frames_per_cpu_s']} frames per "
             f"ingest CPU-s (the figures without the profiler are in docs/performance.md)",
             f"samples: {top['samples']}", "", "self (top 40)"]
    lines += [f"{e['pct']:5.1f} %  {e['frame']}" for e in top["self"][:40]]
    lines += ["", "total (top 60; the greenlet and server frames above the handlers omitted)"]
    lines += [f"{e['pct']:5.1f} %  {e['frame']}" for e in top["total"]
              if not e["frame"].startswith("greenlet::")][:60]
    return "\n".join(lines) + "\n"


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return summary_stats(values).get("p50") if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.framecost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", help="worktree or a commit (repeatable)")
    parser.add_argument("--sizes", default="10,60", help="frame sizes in KB")
    parser.add_argument("--windows", default="1,4", help="frames in flight per client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--revisions", default="4,2", help="JS client majors: 4 (EIO4), 2 (EIO3)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fps", type=float, default=0,
                        help="pace each client to this rate (0: as fast as acks come back)")
    parser.add_argument("--rounds", type=int, default=1, help="windows per daemon and config")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also py-spy each daemon's ingest; write the top entries here")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    trees = args.tree or ["worktree"]
    results: dict = {"trees": {}, "config": vars(args) | {"profile": str(args.profile),
                                                          "out": str(args.out)},
                     "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="camstream-framecost-") as tmp:
        workdir = Path(tmp)
        frames = {}
        for kb in (int(s) for s in args.sizes.split(",")):
            frames[kb] = workdir / f"frame-{kb}k.jpg"
            frames[kb].write_bytes(jpeg_of_size(kb * 1000, seed=kb))
        daemons = {}
        try:
            for tree in trees:
                env, label = tree_env(workdir, tree)
                daemons[label] = Daemon(workdir, 1, env=env)
                results["trees"][label] = []
            for d in daemons.values():
                d.wait_ready()
            for rev in args.revisions.split(","):
                for kb, frame in frames.items():
                    for window in (int(w) for w in args.windows.split(",")):
                        for _ in range(args.rounds):
                            for label, d in daemons.items():
                                res = window_on(d, workdir, rev, frame, window, args.clients,
                                                args.seconds, fps=args.fps)
                                res.update(client=f"{rev}.x", kb=kb, window=window,
                                           paced_fps=args.fps,
                                           bytes=frame.stat().st_size)
                                results["trees"][label].append(res)
                                print(f"{label:>9} {rev}.x {kb:>3} KB w{window}"
                                      f"{f' {args.fps:g} Hz' if args.fps else ''}: "
                                      f"{res['frames_per_cpu_s']} frames/CPU-s, "
                                      f"{res['fps']} fps, dropped {res['dropped_pct']} %, "
                                      f"processed {res['processed_fps']} fps, ack p50 "
                                      f"{res['ack_ms_p50']} p99 {res['ack_ms_p99']} ms "
                                      f"{res['errors'] or ''}", flush=True)
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                kb = max(frames)
                for label, d in daemons.items():
                    raw = workdir / f"spy-{label}.txt"
                    res = window_on(d, workdir, "4", frames[kb], 4, args.clients,
                                    max(args.seconds, 10), spy=raw)
                    res["bytes"] = frames[kb].stat().st_size
                    top = parse_collapsed(raw.read_text() if raw.exists() else "", top=90)
                    top["window"] = res
                    (args.profile / f"spy-{label}.json").write_text(json.dumps(top, indent=1))
                    (args.profile / f"profile-{label}.txt").write_text(
                        profile_text(label, top, args.clients, results["date"]))
                    if raw.exists():
                        (args.profile / f"spy-{label}.collapsed").write_text(raw.read_text())
        finally:
            for d in daemons.values():
                d.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
