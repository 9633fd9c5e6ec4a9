"""Scaling out (README "Scaling out"): what a second worker over CURVE tcp and a second
ingest node behind nginx add, on this machine.

- pipeline: processed frames/s (results counted on the bus) with 1 local worker, then with 1
  local + 1 "remote" worker (``camstream worker --connect tcp://127.0.0.1:P``) on the same
  daemon, 4 ack clients, 640x480.
- ingest: accepted frames/s of 8 ack clients through nginx in front of 1, then 2,
  ``serve --ingest-only`` nodes feeding one ``camstream pool -w 1``. nginx runs the shipped
  systemd/nginx-camstream.conf with ``least_conn`` instead of ``ip_hash``: every load client
  comes from 127.0.0.1 (ip_hash would send all to one node) and is websocket-only (one
  connection, no stickiness needed).

On a 2-core machine every process (clients, nginx, ingest nodes, workers) shares the same two
cores: a second node or worker can only show what contention leaves of it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psutil
import requests

from benchmarks.common import PY, ROOT, BusTap, Daemon, Server, free_port, ratio, wait_for
from benchmarks.suite import Run, _ingest_window, row, saturate


def _keys(workdir: Path) -> Path:
    keys = workdir / "curve-keys"
    if not keys.exists():
        subprocess.run([PY, "-m", "camstream", "keys", "generate", str(keys)], check=True,
                       capture_output=True, timeout=60, cwd=ROOT)
    return keys


def _tcp_port() -> int:
    """A port whose next two are free as well (the bus takes them)."""
    while True:
        port = free_port()
        if port + 2 < 65535 and all(free_port() != port + i for i in (1, 2)):
            return port


def bench_pipeline_remote(run: Run, keys: Path, window: float) -> dict:
    port = _tcp_port()
    frame = run.frames["640x480"]
    out: dict = {}
    with Daemon(run.workdir, 1, "--worker-endpoint", f"tcp://127.0.0.1:{port}",
                "--curve-keys", str(keys)) as d:
        d.wait_ready()
        tap = BusTap(d.runtime_dir)
        try:
            out["1 local"] = saturate(run, d, tap, frame, window)
            remote = Server([PY, "-m", "camstream", "worker", "--connect",
                             f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys),
                             "--log-level", "warning"], port, run.workdir, "remote-worker")
            try:
                wait_for(lambda: d.health()["workers"].get("remote"), 30, what="the remote worker")
                out["1 local + 1 remote"] = saturate(run, d, tap, frame, window)
            finally:
                remote.stop()
        finally:
            tap.close()
    return out


def _nginx_conf(prefix: Path, port: int, nodes: list[int]) -> Path:
    site = (ROOT / "systemd" / "nginx-camstream.conf").read_text()
    site = re.sub(r"(?m)^    server 127\.0\.0\.1:\d+;\n", "", site)
    site = site.replace("    ip_hash;\n", "    least_conn;\n" + "".join(
        f"    server 127.0.0.1:{p};\n" for p in nodes))
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    conf = prefix / "nginx.conf"
    conf.write_text(
        ("user root;\n" if psutil.Process().uids().real == 0 else "")
        + f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix};\n"
        f" proxy_temp_path {prefix};\n include {prefix}/site.conf;\n}}\n")
    return conf


class _Nginx(Server):
    kind = "nginx"

    def __init__(self, workdir: Path, nodes: list[int], tag: str) -> None:
        port = free_port()
        prefix = workdir / f"nginx-{tag}"
        conf = _nginx_conf(prefix, port, nodes)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        super().__init__([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                         port, workdir, f"nginx-{tag}")
        wait_for(lambda: requests.get(self.url + "/", timeout=2).ok, 20, what="nginx to answer")


def bench_ingest_nodes(run: Run, keys: Path, window: float) -> dict:
    port = _tcp_port()
    frame = str(run.frames["640x480"])
    specs = [{"name": f"lb{i}", "frame": frame, "mode": "ack"} for i in range(8)]
    out: dict = {}
    pool = Server([PY, "-m", "camstream", "pool", "-w", "1", "--worker-endpoint",
                   f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys), "--runtime-dir",
                   str(run.workdir / f"pool-{port}"), "--log-level", "warning"],
                  port, run.workdir, "pool")
    nodes: list[Daemon] = []
    try:
        for _ in range(2):
            nodes.append(Daemon(run.workdir, 1, "--ingest-only", "--worker-endpoint",
                                f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys)))
        for n in nodes:
            n.wait_ready()
        for k in (1, 2):
            used = nodes[:k]

            def accepted():
                return sum(t["received"] - t["refused"]
                           for t in (n.health()["totals"] for n in used))
            with _Nginx(run.workdir, [n.port for n in used], f"{k}") as ngx:
                out[f"{k} node"] = _ingest_window(run, ngx, accepted, ngx_process(ngx), specs,
                                                  window)
    finally:
        for n in nodes:
            n.stop()
        pool.stop()
    return out


def ngx_process(ngx: Server) -> psutil.Process:
    """nginx's worker (the master only accepts no traffic)."""
    return wait_for(lambda: psutil.Process(ngx.proc.pid).children()[0], 10, what="nginx's worker")


def bench_scaleout(run: Run) -> dict:
    window = run.t(5, 15)
    keys = _keys(run.workdir)
    out: dict = {"window_s": window, "cores": psutil.cpu_count(),
                 "pipeline": bench_pipeline_remote(run, keys, window)}
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        out["ingest"] = bench_ingest_nodes(run, keys, window)
    p1, p2 = out["pipeline"]["1 local"], out["pipeline"]["1 local + 1 remote"]
    rows = [row("pipeline 640x480 processed fps: 1 local + 1 remote (tcp) vs 1 local",
                p2["processed_fps"], p1["processed_fps"], unit="fps")]
    if "ingest" in out:
        i1, i2 = out["ingest"]["1 node"], out["ingest"]["2 node"]
        rows.append(row("ingest via nginx, 8 ack clients, frames/s accepted: 2 nodes vs 1",
                        i2["fps"], i1["fps"], unit="fps"))
        rows.append(row("nginx CPU-s per 1000 frames (2 nodes)",
                        round(1000 * i2["cpu_s"] / max(1, i2["frames"]), 2)))
    out["ratios"] = {"pipeline": ratio(p2["processed_fps"], p1["processed_fps"]),
                     "ingest": ratio(out["ingest"]["2 node"]["fps"],
                                     out["ingest"]["1 node"]["fps"]) if "ingest" in out else None}
    out["rows"] = rows
    return out
