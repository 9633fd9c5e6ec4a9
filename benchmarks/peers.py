"""peers: camstream's ingest against the socket.io servers a user would pick instead.

The peers, each on 127.0.0.1, each doing the least a frame server does (ack ``frame``, count
``receiveImage``): Node ``socket.io`` 4.x with and without ``bufferutil`` and Node
``socket.io`` 2.x (Engine.IO 3, the Android app's revision) with and without it
(``node_peers/``), python-socketio on uvicorn (``asgi_server.py``), the stock python-socketio
+ gevent-websocket stack (``stock_server.py``); and ``camstream serve -w 1`` as the other
benchmarks start it. All are up at once and driven by the same JS clients (``jsload.js``:
socket.io-client 4.x for Engine.IO 4, 2.x for Engine.IO 3), which stay connected to every
server, so windows alternate between servers with nothing in between.

Measured per window: frames the server counted (camstream: received - refused) per CPU-second
of the server process (utime + stime from /proc/<pid>/stat, via psutil). For camstream that is
the ``camstream: ingest`` process alone, the comparable figure: the worker (which decodes every
frame it gets), the supervisor and the bus broker are not in it; their sum with ingest is kept
as ``daemon_cpu_s``. Cells: 10, 60 and 200 KB frames x {ack, window 1; ack, window 4; paced
``receiveImage`` without acks} x {Engine.IO 4, Engine.IO 3}. Then "many phones": N connections
to every server, held idle, then each server's N stream at 2 Hz of 60 KB with acks in turn:
frames kept, server CPU, ack p50/p99, idle RSS per connection.

Writes results/peers.md (the tables) and results/peers.png (via report.plot_all).
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import requests

from benchmarks import report
from benchmarks.common import (
    BENCH,
    NODE,
    PY,
    RESULTS,
    ROOT,
    SOURCE,
    Daemon,
    Script,
    Server,
    cpu_seconds,
    free_port,
    make_jpeg,
    percentile,
    stop_process,
    summary_stats,
)
from benchmarks.suite import Run, row, serves_eio3

NODE_PEERS = BENCH / "node_peers"
JS_CLIENTS = ROOT / "tests" / "js"
STOCK_MAX_PHONES = 100  # the stock stack's many-phones limit (it saturates a core at 100)
FRAMES = {"10KB": (256, 192), "60KB": (640, 480), "200KB": (1200, 900)}   # JPEG q80 sizes
MODES = {"ack w1": {"mode": "ack", "window": 1, "fps": 0},
         "ack w4": {"mode": "ack", "window": 4, "fps": 0},
         "paced": {"mode": "emit", "event": "receiveImage", "fps": 50}}
CONNECTIONS = 4        # per server, as in the issue: 4 clients
DRIVERS = 2            # JS client processes per revision (the connections split between them)
PHONE_HZ = 2.0
# The stock stack reads paced 60 KB frames slower than 4 x 50 Hz brings them: its backlog in
# the kernel's buffers then answers the count seconds late and spends CPU during the next
# servers' windows. Benchmark ``ingest`` measures it paced, at 4 x 12.5 Hz.
NOT_PACED = {"stock"}
PROTOCOL = {"4": "EIO4", "2": "EIO3"}   # socket.io 4.x / 2.x speak Engine.IO 4 / 3


# -- setup ------------------------------------------------------------------------------------

def _npm_ci(folder: Path, needed: Path) -> None:
    """``npm ci`` in ``folder`` (exactly its lockfile) unless ``needed`` is already there."""
    stamp = folder / "node_modules" / ".package-lock.json"
    if needed.exists() and stamp.exists() and \
            stamp.stat().st_mtime >= (folder / "package-lock.json").stat().st_mtime:
        return
    print(f"peers: npm ci in {folder.relative_to(ROOT)}", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, check=True,
                   timeout=600, capture_output=True)


def setup() -> dict:
    """What the peers need, installed when missing: Node (Debian's ``nodejs``/``npm``: not
    installed here), the npm packages of node_peers/ and tests/js/ (from their lockfiles), and
    ``uvicorn[standard]`` (part of the ``bench`` extra). Returns the versions in use."""
    if not shutil.which(NODE) or not shutil.which("npm"):
        raise RuntimeError("node or npm not found: apt-get install nodejs npm")
    _npm_ci(NODE_PEERS, NODE_PEERS / "node_modules" / "bufferutil")
    _npm_ci(JS_CLIENTS, JS_CLIENTS / "node_modules" / "sio4")
    if not all(importlib.util.find_spec(m) for m in ("uvicorn", "websockets")):
        print("peers: uvicorn[standard] is missing (pip install -e '.[bench]'): "
              "installing it with pip", flush=True)
        subprocess.run([PY, "-m", "pip", "install", "-q", "uvicorn[standard]"], check=True,
                       timeout=600)

    def npm_version(folder: Path, package: str) -> str:
        return json.loads((folder / "node_modules" / package / "package.json").read_text())[
            "version"]
    versions = subprocess.run([PY, "-c", "import socketio, engineio, uvicorn, websockets; "
                               "from importlib.metadata import version as v; "
                               "print(v('python-socketio'), v('python-engineio'), "
                               "uvicorn.__version__, v('websockets'))"],
                              capture_output=True, text=True, timeout=60).stdout.split()
    return {"node": subprocess.run([NODE, "--version"], capture_output=True, text=True,
                                   timeout=30).stdout.strip(),
            "socket.io": npm_version(NODE_PEERS, "socket.io"),
            "socket.io 2": npm_version(NODE_PEERS, "socket.io-v2"),
            "bufferutil": npm_version(NODE_PEERS, "bufferutil"),
            "socket.io-client 4": npm_version(JS_CLIENTS, "sio4"),
            "socket.io-client 2": npm_version(JS_CLIENTS, "sio2"),
            "python-socketio": versions[0] if versions else "?",
            "python-engineio": versions[1] if len(versions) > 1 else "?",
            "uvicorn": versions[2] if len(versions) > 2 else "?",
            "websockets": versions[3] if len(versions) > 3 else "?"}


# -- the servers ------------------------------------------------------------------------------

class NodePeer(Script):
    """node_peers/server.js: socket.io 4.x or 2.x, with or without bufferutil."""

    def __init__(self, revision: str, bufferutil: bool, workdir: Path) -> None:
        port = free_port()
        self.kind = f"node socket.io {revision}.x" + (" + bufferutil" if bufferutil else "")
        argv = [NODE, "--expose-gc", str(NODE_PEERS / "server.js"), "--revision", revision,
                "--port", str(port)]
        Server.__init__(self, argv + ([] if bufferutil else ["--no-bufferutil"]), port,
                        workdir, f"node{revision}{'bu' if bufferutil else ''}")
        self.bufferutil = bufferutil

    def wait_ready(self, timeout: float = 30) -> None:
        super().wait_ready(timeout)
        said = "bufferutil=yes" if self.bufferutil else "bufferutil=no"
        if said not in self.output():  # the variant must be the one it claims to be
            raise RuntimeError(f"{self.kind}: expected {said}: {self.output()[-500:]}")


class Target:
    """One server as the benchmark sees it: where to connect, how many frames it has counted,
    whose CPU and RSS to read."""

    def __init__(self, key: str, label: str, server: Server, revisions: tuple[str, ...]) -> None:
        self.key, self.label, self.server, self.revisions = key, label, server, revisions
        self.url = server.url

    def proc(self) -> psutil.Process:
        return self.server.ingest() if isinstance(self.server, Daemon) else self.server.process()

    def count(self) -> int:
        for attempt in range(2):  # a loaded server may reset an HTTP request: ask again
            try:
                if isinstance(self.server, Daemon):
                    t = self.server.health()["totals"]
                    return t["received"] - t["refused"]
                c = requests.get(self.url + "/count", timeout=5).json()
                return c["frame"] + c["receiveImage"]
            except requests.RequestException:
                if attempt == 1:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def rss(self) -> int:
        """Resident bytes; a Node peer collects its garbage first (its RSS otherwise moves with
        the next collection, by more than N idle connections take)."""
        if isinstance(self.server, NodePeer):
            requests.get(self.url + "/gc", timeout=10)
        return self.proc().memory_info().rss

    def daemon_cpu(self) -> float | None:
        """camstream: supervisor + ingest + workers + broker; None for a peer."""
        if not isinstance(self.server, Daemon):
            return None
        top = psutil.Process(self.server.proc.pid)
        total = cpu_seconds(top)
        for child in top.children(recursive=True):
            try:
                total += cpu_seconds(child)
            except psutil.Error:
                pass
        return total

    def sample(self) -> tuple[int, float, float | None, float, float]:
        """count, CPU, daemon CPU, when, and how long the count took to come (a busy server
        answers late, and the window it measures shrinks by that much)."""
        t = time.monotonic()
        count = self.count()
        now = time.monotonic()
        return count, cpu_seconds(self.proc()), self.daemon_cpu(), now, now - t


def start_servers(run: Run) -> list[Target]:
    """All of them at once (each waits for the others' start): camstream first in the list."""
    d = Daemon(run.workdir, 1)
    started: list[Server] = [d]
    try:
        peers = [("node4bu", NodePeer("4", True, run.workdir), ("4",)),
                 ("node4", NodePeer("4", False, run.workdir), ("4",)),
                 ("uvicorn", Script("asgi_server", run.workdir), ("4",)),
                 ("stock", Script("stock_server", run.workdir), ("4",)),
                 ("node2bu", NodePeer("2", True, run.workdir), ("2",)),
                 ("node2", NodePeer("2", False, run.workdir), ("2",))]
        started += [s for _, s, _ in peers]
        d.wait_ready()
        for _, s, _ in peers:
            s.wait_ready()
    except BaseException:
        for s in started:
            s.stop()
        raise
    revisions = ("4", "2") if serves_eio3(d.url) else ("4",)
    labels = {"node4bu": "Node socket.io 4 + bufferutil", "node4": "Node socket.io 4",
              "uvicorn": "python-socketio on uvicorn", "stock": "stock gevent stack",
              "node2bu": "Node socket.io 2 + bufferutil", "node2": "Node socket.io 2"}
    return [Target("camstream", "camstream", d, revisions)] + [
        Target(key, labels[key], s, revs) for key, s, revs in peers]


# -- the JS clients ---------------------------------------------------------------------------

class JsLoad:
    """One ``jsload.js`` process: connections to several targets, windows on command."""

    def __init__(self, revision: str, name: str, targets: dict[str, str], connections: int,
                 frames: dict[str, Path], workdir: Path) -> None:
        cfg = {"revision": revision, "name": name, "connections": connections, "batch": 50,
               "targets": targets, "frames": {k: str(v) for k, v in frames.items()}}
        self.name = name
        self.log_path = workdir / f"jsload-{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([NODE, str(BENCH / "jsload.js"), json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, cwd=ROOT, text=True, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def reply(self, timeout: float) -> dict:
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            msg = None
        if msg is None:
            self._log.flush()
            raise RuntimeError(f"jsload {self.name}: no answer in {timeout:.0f} s (exit "
                               f"{self.proc.poll()}): {self.log_path.read_text()[-1500:]}")
        return msg

    def send(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        try:
            self.send({"cmd": "quit"})
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_process(self.proc, timeout=5)
        self._log.close()


def start_drivers(revision: str, targets: list[Target], per_driver: int, frames: dict,
                  workdir: Path, tag: str) -> list[JsLoad]:
    drivers = [JsLoad(revision, f"{tag}{i}", {t.key: t.url for t in targets}, per_driver,
                      frames, workdir) for i in range(DRIVERS)]
    try:
        for drv in drivers:
            connected = drv.reply(timeout=30 + per_driver * len(targets) * 0.2)["connected"]
            short = {k: n for k, n in connected.items() if n < per_driver}
            if short:
                raise RuntimeError(f"jsload {drv.name}: connected only {short}")
    except BaseException:
        for drv in drivers:
            drv.stop()
        raise
    return drivers


def window(drivers: list[JsLoad], target: Target, cmd: dict, frame: str, duration: float,
           warm: float, tail: float) -> dict:
    """All drivers run ``cmd`` on ``target`` from a common start; the server's count and CPU
    are read ``warm`` s after the start and ``tail`` s before the end."""
    start_at = time.time() + 0.08
    for drv in drivers:
        drv.send({**cmd, "cmd": "run", "target": target.key, "frame": frame,
                  "start_at": start_at, "duration": duration})
    time.sleep(max(0.0, start_at + warm - time.time()))
    c0, cpu0, d0, t0, late0 = target.sample()
    time.sleep(max(0.0, start_at + duration - tail - time.time()))
    c1, cpu1, d1, t1, late1 = target.sample()
    replies = [drv.reply(timeout=duration + 20) for drv in drivers]
    frames, cpu, wall = c1 - c0, cpu1 - cpu0, t1 - t0
    acks = [a for r in replies for a in r["ack_ms"]]
    out = {"frames": frames, "seconds": round(wall, 3), "fps": round(frames / wall, 1),
           "cpu_s": round(cpu, 3), "cpu_util": round(cpu / wall, 3),
           "frames_per_cpu_s": round(frames / cpu) if cpu > 0 else None,
           "sent": sum(r["sent"] for r in replies), "refused": sum(r["refused"] for r in replies),
           "skipped": sum(r["skipped"] for r in replies),
           "unacked": sum(r["unacked"] for r in replies),
           "disconnects": sum(r["disconnects"] for r in replies), "ack_ms": summary_stats(acks),
           "count_latency_s": round(max(late0, late1), 3),
           # a count that came late measured a shorter window than planned: left out
           "valid": wall >= 0.75 * (duration - warm - tail) and late0 + late1 < 0.5}
    if d0 is not None:
        out["daemon_cpu_s"] = round(d1 - d0, 3)
        out["frames_per_daemon_cpu_s"] = round(frames / (d1 - d0)) if d1 > d0 else None
    return out


# -- the benchmark ----------------------------------------------------------------------------

def cell_key(revision: str, size: str, mode: str) -> str:
    return f"{PROTOCOL[revision]} {size} {mode}"


def run_matrix(run: Run, targets: list[Target], frames: dict, out: dict) -> None:
    rounds = 3 if run.full else 1
    duration, warm, tail = (run.t(1.0, 5.0), run.t(0.25, 0.8), 0.1)
    out["config"].update(rounds=rounds, window_s=duration, measured_s=duration - warm - tail)
    revisions = [r for r in ("4", "2") if r in targets[0].revisions]
    drivers = {}
    try:
        for rev in revisions:
            on = [t for t in targets if rev in t.revisions]
            drivers[rev] = start_drivers(rev, on, CONNECTIONS // DRIVERS, frames, run.workdir,
                                         f"eio{rev}-")
        for rev in revisions:  # warm-up: the JS clients' JIT and the servers' first frames
            for t in [t for t in targets if rev in t.revisions]:
                window(drivers[rev], t, MODES["ack w4"], "60KB", run.t(0.4, 2.0), 0.15, 0.1)
        turn = 0
        for _ in range(rounds):
            for rev in revisions:
                on = [t for t in targets if rev in t.revisions]
                for size in FRAMES:
                    for mode, cmd in MODES.items():
                        turn += 1
                        order = on[turn % len(on):] + on[:turn % len(on)]  # rotated each cell
                        cell = out["cells"].setdefault(cell_key(rev, size, mode), {})
                        for t in order:
                            if mode == "paced" and t.key in NOT_PACED:
                                continue
                            w = window(drivers[rev], t, cmd, size, duration, warm, tail)
                            cell.setdefault(t.key, []).append(w)
    finally:
        for ds in drivers.values():
            for drv in ds:
                drv.stop()


def many_phones(run: Run, targets: list[Target], frames: dict, out: dict) -> None:
    """N connections at 2 Hz of 60 KB with acks (EIO4, 4.x client) to every server at once,
    idle; then each server's N stream in turn (alternating rounds in full mode)."""
    n = run.t(100, 1000)
    rounds = run.t(1, 2)
    duration, warm, tail = run.t(2.5, 15.0), run.t(0.6, 3.0), 0.3
    out["config"].update(phones=n, phone_hz=PHONE_HZ, phone_window_s=duration,
                         phone_rounds=rounds)
    on = [t for t in targets if "4" in t.revisions]
    if n > STOCK_MAX_PHONES:  # it spends a whole core on 100: with more, it answers nothing
        on = [t for t in on if t.key != "stock"]
        out["config"]["phones_without"] = f"stock gevent stack (over {STOCK_MAX_PHONES} phones)"
    rss0 = {t.key: t.rss() for t in on}
    drivers = start_drivers("4", on, n // DRIVERS, {"60KB": frames["60KB"]}, run.workdir,
                            "phones-")
    try:
        time.sleep(1.0)  # connected and idle
        rss1 = {t.key: t.rss() for t in on}
        for rnd in range(rounds):
            for t in on if rnd % 2 == 0 else on[::-1]:
                c_before = t.count()
                w = window(drivers, t, {"mode": "ack", "window": 2, "fps": PHONE_HZ}, "60KB",
                           duration, warm, tail)
                time.sleep(0.3)
                kept = t.count() - c_before
                w.update(connections=n, counted=kept,
                         kept_pct=round(100 * kept / w["sent"], 2) if w["sent"] else None,
                         idle_rss_kb_per_connection=round((rss1[t.key] - rss0[t.key]) / n / 1024,
                                                          1),
                         rss_idle_mb=round(rss1[t.key] / 2 ** 20, 1))
                out["many_phones"].setdefault(t.key, []).append(w)
    finally:
        for drv in drivers:
            drv.stop()


def median_fpcs(windows: list[dict]) -> float | None:
    v = [w["frames_per_cpu_s"] for w in windows if w.get("frames_per_cpu_s") and w["valid"]]
    return percentile(v, 50)


def bench_peers(run: Run) -> dict:
    versions = setup()
    frames = {}
    for label, (w, h) in FRAMES.items():
        path = run.workdir / f"peers-{label}.jpg"
        path.write_bytes(make_jpeg(w, h, seed=w * h, label=f"{w}x{h}", sigma=1.4))
        frames[label] = path
    out: dict = {"versions": versions, "frame_bytes": {k: p.stat().st_size
                                                       for k, p in frames.items()},
                 "config": {"connections": CONNECTIONS, "drivers_per_revision": DRIVERS,
                            "paced_hz": MODES["paced"]["fps"], "camstream_workers": 1},
                 "cells": {}, "many_phones": {}}
    targets = start_servers(run)
    try:
        out["servers"] = {t.key: {"label": t.label, "revisions": list(t.revisions)}
                          for t in targets}
        out["load_average_before"] = [round(x, 1) for x in os.getloadavg()]
        # phones first: their idle RSS is read on servers whose heaps no earlier load has grown
        t0 = time.monotonic()
        many_phones(run, targets, frames, out)
        t1 = time.monotonic()
        run_matrix(run, targets, frames, out)
        out["phase_s"] = {"phones": round(t1 - t0, 1), "matrix": round(time.monotonic() - t1, 1)}
        out["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        for t in targets:
            t.server.stop()
    rows = []
    for cell, by_server in out["cells"].items():
        c = median_fpcs(by_server.get("camstream", []))
        best = "node4bu" if cell.startswith("EIO4") else "node2bu"
        b = median_fpcs(by_server.get(best, []))
        rows.append(row(f"{cell}: frames per server CPU-s (vs {out['servers'][best]['label']})",
                        c, b, ">= 1x", bool(c and b and c >= b)))
    phones = out["many_phones"]
    if "camstream" in phones and "node4bu" in phones:
        c, b = phones["camstream"][0], phones["node4bu"][0]
        rows += [row(f"{c['connections']} phones: frames kept %", c["kept_pct"], b["kept_pct"],
                     "100", c["kept_pct"] is not None and c["kept_pct"] >= 99.9),
                 row("phones: server CPU (cores)", c["cpu_util"], b["cpu_util"],
                     "<= Node + bufferutil", c["cpu_util"] <= b["cpu_util"]),
                 row("phones: ack p99 (ms)", c["ack_ms"].get("p99"), b["ack_ms"].get("p99"),
                     "<= Node's", (c["ack_ms"].get("p99") or 1e9) <= (b["ack_ms"].get("p99") or 0)),
                 row("phones: idle RSS per connection (KB)", c["idle_rss_kb_per_connection"],
                     b["idle_rss_kb_per_connection"], "<= Node's",
                     c["idle_rss_kb_per_connection"] <= b["idle_rss_kb_per_connection"])]
    out["rows"] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.md").write_text(report.peers_markdown(
        out, SOURCE.get("commit", ""), "full" if run.full else "quick"))
    return out
