"""Scaling out (README "Scaling out"): remote workers over CURVE tcp on 127.0.0.1, refused
keys, a remote worker cut mid-run, and nginx in front of two ingest nodes and one pool. Real
processes, bounded waits, every process stopped by pid."""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio
import zmq
from tests.helpers import ROOT, Daemon, free_port, make_jpeg, wait_for
from tests.helpers.jsclient import jpeg_file, js_client, js_result  # noqa: F401 (a fixture)
from tests.helpers import streaming

from camstream import bus, wire
from camstream.keys import Curve
from camstream.ingest.ledger import LOST_AFTER
from workers.worker import STATS_INTERVAL

PY = sys.executable


class Proc:
    """A camstream process of the test's own (worker, pool, nginx), stopped by its pid."""

    def __init__(self, tmp: Path, tag: str, argv: list[str]) -> None:
        self.log_path = tmp / f"{tag}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def procs(tmp_path):
    started: list = []

    def start(tag: str, *argv: str) -> Proc:
        p = Proc(tmp_path, tag, list(argv))
        started.append(p)
        return p
    yield start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def servers(tmp_path):
    """conftest's Daemon (``camstream serve``) with any arguments; stopped after the test."""
    started: list[Daemon] = []

    def start(*args: str, workers: int = 1, ready: bool = True) -> Daemon:
        d = Daemon(tmp_path, *args, workers=workers)
        started.append(d)
        if ready:
            d.wait_ready(timeout=40)
        return d
    yield start
    for d in started:
        d.shutdown()


def make_keys(directory: Path, name: str = "worker") -> Path:
    subprocess.run([PY, "-m", "camstream", "keys", "generate", str(directory), "--name", name],
                   check=True, capture_output=True, timeout=30, cwd=ROOT)
    return directory


def worker_argv(port: int, keys: Path | None, *extra: str) -> list[str]:
    argv = [PY, "-m", "camstream", "worker", "--connect", f"tcp://127.0.0.1:{port}", *extra]
    return argv + (["--curve-keys", str(keys)] if keys else [])


def send_frames(sio: socketio.Client, count: int, fps: float) -> int:
    """``frame`` events with acks at ``fps``; returns how many were accepted."""
    frames = [make_jpeg(seed=i) for i in range(4)]
    acks = streaming.send_frames(sio, [frames[n % len(frames)] for n in range(count)], fps)
    return sum(bool(ack.get("accepted")) for ack in acks)


def settled(d: Daemon, name: str) -> dict:
    """The client's row once nothing is in flight any more (lost is settled LOST_AFTER on)."""
    return wait_for(lambda: (lambda row: row if row["in_flight"] == 0 else None)(
        d.health()["clients"][name]), LOST_AFTER + 10, what=f"{name}'s frames to settle")


# -- remote workers ----------------------------------------------------------------------------

def test_remote_worker_takes_frames_and_reports_its_host(servers, procs, clients, tmp_path):
    keys = make_keys(tmp_path / "keys")
    port = free_port(3)
    d = servers("--worker-endpoint", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys))
    w = procs("remote-worker", *worker_argv(port, keys))
    remote = wait_for(lambda: d.health()["workers"].get("remote"), 30,
                      what=f"the remote worker in /healthz:\n{w.output()}")
    assert remote[0]["pid"] == w.proc.pid and remote[0]["alive"] and remote[0]["host"]
    assert d.health()["workers"]["alive"] == 2
    accepted = send_frames(clients(d.url, "remote1"), 60, 30)
    row = wait_for(lambda: (lambda r: r if r["processed"] == accepted - r["dropped"] else None)(
        d.health()["clients"]["remote1"]), 20, what="every frame processed")
    assert row["errors"] == 0 and row["lost"] == 0
    by_remote = d.health()["workers"]["remote"][0]["processed"]
    assert 0 < by_remote < row["processed"], "both the local and the remote worker took frames"


def test_tcp_without_keys_is_refused_at_startup(tmp_path):
    for argv in (["serve", "-p", str(free_port()), "--runtime-dir", str(tmp_path / "run"),
                  "--worker-endpoint", "tcp://127.0.0.1:5555"],
                 ["worker", "--connect", "tcp://127.0.0.1:5555"],
                 ["pool", "--worker-endpoint", "tcp://127.0.0.1:5555",
                  "--runtime-dir", str(tmp_path / "pool")]):
        r = subprocess.run([PY, "-m", "camstream", *argv], capture_output=True, text=True,
                           timeout=30, cwd=ROOT)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "needs CURVE keys" in lines[0] and "camstream keys generate" in lines[0]


def test_a_worker_without_an_allowed_key_gets_nothing(servers, procs, clients, tmp_path):
    keys = make_keys(tmp_path / "keys")
    stranger = make_keys(tmp_path / "stranger")  # a pair of its own, unknown to the server
    shutil.copyfile(keys / "server.key", stranger / "server.key")  # knows the server's key
    port = free_port(3)
    d = servers("--worker-endpoint", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys))
    w = procs("stranger", *worker_argv(port, stranger))
    # and a plain ZeroMQ PULL without CURVE at all
    ctx = zmq.Context()
    plain = ctx.socket(zmq.PULL)
    plain.linger = 0
    plain.connect(f"tcp://127.0.0.1:{port}")
    try:
        time.sleep(1.5)  # time for both handshakes to be refused
        accepted = send_frames(clients(d.url, "guarded"), 40, 30)
        row = wait_for(lambda: (lambda r: r if r["processed"] == accepted - r["dropped"]
                                else None)(d.health()["clients"]["guarded"]), 20,
                       what="every frame processed by the local worker")
        assert row["lost"] == 0 and row["processed"] > 0
        assert plain.poll(500) == 0, "an unauthenticated PULL received a frame"
    finally:
        ctx.destroy(linger=0)
    assert w.proc.poll() is None, "the refused worker keeps trying, harmlessly"
    assert "remote" not in d.health()["workers"], "its stats must not reach the bus either"


def test_sigkilled_remote_worker_loses_at_most_what_it_held(servers, procs, tmp_path):
    keys = make_keys(tmp_path / "keys")
    port = free_port(3)
    d = servers("--worker-endpoint", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys))
    w = procs("victim", *worker_argv(port, keys))
    wait_for(lambda: d.health()["workers"].get("remote"), 30, what="the remote worker")
    fps = 20.0
    sio = socketio.Client(reconnection=False)
    sio.connect(d.url, transports=["websocket"], auth={"username": "cut", "password": ""},
                wait_timeout=10)
    result: dict = {}
    sender = threading.Thread(target=lambda: result.update(n=send_frames(sio, 120, fps)))
    sender.start()
    try:
        wait_for(lambda: d.health()["workers"]["remote"][0]["processed"] >= 5, 20,
                 what="the remote worker to have processed frames")
        os.kill(w.proc.pid, signal.SIGKILL)
        sender.join(timeout=60)
    finally:
        sio.disconnect()
    time.sleep(LOST_AFTER)
    row = settled(d, "cut")
    assert row["dispatched"] == row["processed"] + row["errors"] + row["lost"]
    # what a killed worker held: its PULL queue and the sender's pipe to it (worker_hwm each,
    # Config.worker_hwm = 2), the frame in hand, and what it processed but had not yet
    # reported (its stats go out every STATS_INTERVAL; about half the frames went its way)
    bound = 2 + 2 + 1 + math.ceil(fps / 2 * STATS_INTERVAL)
    assert row["lost"] <= bound, row
    assert d.health()["workers"]["remote"][0]["alive"] is False
    # the local pool went on: frames sent after the kill were processed
    assert row["processed"] >= result["n"] - row["dropped"] - bound


# -- nginx, two ingest nodes, one pool ----------------------------------------------------------

def nginx_conf(prefix: Path, port: int, nodes: list[int]) -> Path:
    """systemd/nginx-camstream.conf as shipped, with the test's ports; realip (X-Real-IP from
    127.0.0.1 only) lets each client show ip_hash an address of its own on loopback."""
    site = (ROOT / "systemd" / "nginx-camstream.conf").read_text()
    site = re.sub(r"(?m)^    server 127\.0\.0\.1:\d+;\n", "", site)
    site = site.replace("    ip_hash;\n", "    ip_hash;\n" + "".join(
        f"    server 127.0.0.1:{p};\n" for p in nodes))
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};\n"
                        "    set_real_ip_from 127.0.0.1;\n    real_ip_header X-Real-IP;")
    assert f"127.0.0.1:{nodes[-1]}" in site and f"listen 127.0.0.1:{port}" in site
    (prefix / "site.conf").write_text(site)
    for d in ("logs", "body", "proxy"):
        (prefix / d).mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.getuid() == 0 else "")
        + f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix}/body;\n"
        f" proxy_temp_path {prefix}/proxy;\n fastcgi_temp_path {prefix}/proxy;\n"
        f" uwsgi_temp_path {prefix}/proxy;\n scgi_temp_path {prefix}/proxy;\n"
        f" include {prefix}/site.conf;\n}}\n")
    return conf


class ResultTap:
    """Counts per-frame results on the pool's bus (over CURVE tcp, as an ingest node would)."""

    def __init__(self, keys: Path, pool_port: int) -> None:
        self.ctx = zmq.Context()
        remote = bus.Remote(f"tcp://127.0.0.1:{pool_port}", f"tcp://127.0.0.1:{pool_port + 1}",
                            Curve.client(str(keys)))
        self.sub = bus.bus_sub(self.ctx, "", wire.PROCESSED, hwm=100000, to=remote)
        self.seen: dict[tuple[str, int], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.sub.poll(100):
                for result in bus.drain(self.sub, wire.Result.unpack):
                    h = result.header
                    self.seen[(h.client, h.seq)] = self.seen.get((h.client, h.seq), 0) + 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sub.close(0)
        self.ctx.destroy(linger=0)


def python_client(url: str, name: str, real_ip: str, count: int, fps: float, out: dict) -> None:
    """python-socketio (current revision): long-polling first, then the websocket upgrade."""
    sio = socketio.Client(reconnection=False)
    sio.connect(url, transports=["polling", "websocket"], headers={"X-Real-IP": real_ip},
                auth={"username": name, "password": ""}, wait_timeout=15)
    try:
        out[name] = send_frames(sio, count, fps)
        out[name + ":transport"] = sio.transport()
    finally:
        sio.disconnect()


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed (tests/setup.sh installs it as root: "
                    "apt-get install -y nginx)")
def test_nginx_spreads_eight_clients_over_two_ingest_nodes_and_one_pool(
        servers, procs, tmp_path, jpeg_file):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    keys = make_keys(tmp_path / "keys")
    pool_port = free_port(3)  # the bus takes the next two ports
    pool = procs("pool", PY, "-m", "camstream", "pool", "-w", "2", "--worker-endpoint",
                 f"tcp://127.0.0.1:{pool_port}", "--curve-keys", str(keys),
                 "--runtime-dir", str(tmp_path / "pool-run"))
    nodes = [servers("--ingest-only", "--worker-endpoint", f"tcp://127.0.0.1:{pool_port}",
                     "--curve-keys", str(keys), workers=2) for _ in range(2)]
    assert pool.proc.poll() is None, pool.output()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = nginx_conf(prefix, port, [n.port for n in nodes])
    ngx = procs("nginx", nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, 15,
             what=f"nginx to answer: {ngx.output()}")
    tap = ResultTap(keys, pool_port)
    time.sleep(0.5)  # the tap's subscription reaches the pool's XPUB
    count, fps = 40, 10.0
    try:
        js = [js_client(url, "2", user=f"js{i}", frames=jpeg_file, count=count, fps=fps,
                        mode="default", real_ip=f"10.0.{i}.1", timeout=60) for i in range(4)]
        sent: dict = {}
        py = [threading.Thread(target=python_client, args=(url, f"py{i}", f"10.0.{i + 4}.1",
                                                         count, fps, sent)) for i in range(4)]
        for t in py:
            t.start()
        for t in py:
            t.join(timeout=90)
        for i, p in enumerate(js):
            code, summary = js_result(p, timeout=90)
            assert code == 0 and summary["sent"] == count, summary
            assert summary["upgraded"] and summary["transport"] == "websocket", summary
            sent[f"js{i}"] = count
        assert all(sent.get(f"py{i}") == count for i in range(4)), sent
        assert all(sent[f"py{i}:transport"] == "websocket" for i in range(4)), sent
        names = [f"js{i}" for i in range(4)] + [f"py{i}" for i in range(4)]

        def rows():  # each client's row on the node it landed on (sticky: exactly one)
            out = {}
            for n in nodes:
                for name, row in n.health()["clients"].items():
                    if row["received"]:
                        assert name not in out, f"{name} reached both ingest nodes"
                        out[name] = (n.port, row)
            return out if all(name in out and out[name][1]["in_flight"] == 0
                              and out[name][1]["received"] == count for name in names) else None
        landed = wait_for(rows, 30, what="every client's frames to settle")
        assert len({p for p, _ in landed.values()}) == 2, f"nginx used one node: {landed}"
        for name in names:
            row = landed[name][1]
            assert row["refused"] == 0 and row["errors"] == 0 and row["lost"] == 0, (name, row)
            assert row["processed"] == row["dispatched"] == count - row["dropped"], (name, row)
            results = [k for k in tap.seen if k[0] == name]
            assert len(results) == row["processed"], (name, len(results), row)
        assert set(tap.seen.values()) == {1}, "a frame was processed twice"
    finally:
        tap.close()


def test_an_ingest_node_whose_pool_stops_keeps_its_clients(servers, procs, tmp_path):
    """A missing pool is not a hung ingest: the node's ingest stays (it used to be SIGKILLed
    as silent, dropping every client), clients stay connected, their frames are counted as
    dropped, the log says what it waits for, /healthz and status say degraded; when the pool
    is back, frames are processed again."""
    from tests.helpers.streaming import Streamer
    keys = make_keys(tmp_path / "keys")
    pool_port = free_port(3)
    endpoint = f"tcp://127.0.0.1:{pool_port}"
    pool_argv = [PY, "-m", "camstream", "pool", "-w", "1", "--worker-endpoint", endpoint,
                 "--curve-keys", str(keys), "--runtime-dir", str(tmp_path / "pool-run")]
    pool = procs("pool", *pool_argv)
    node = servers("--ingest-only", "--worker-endpoint", endpoint, "--curve-keys", str(keys),
                   "--worker-timeout", "3", workers=1)
    ingest = node.child("ingest")
    alice = Streamer(node.url, "alice", fps=10).start()
    try:
        wait_for(lambda: node.health()["clients"]["alice"]["processed"] > 5, 20,
                 what="alice's frames processed by the pool")
        pool.stop()
        h = wait_for(lambda: (h := node.health())["status"] == "degraded" and h, 15,
                     what="degraded without the pool")
        assert h["reasons"][0].startswith(f"no worker pool: nothing heard from {endpoint}"), h
        time.sleep(8)  # well past --worker-timeout
        assert node.child("ingest").pid == ingest.pid, node.output()
        assert alice.disconnects == 0 and alice.errors == 0
        row = node.health()["clients"]["alice"]
        assert row["dropped"] > 0 and row["connected"] == 1, row
        out = subprocess.run([PY, "-m", "camstream", "status", node.url], capture_output=True,
                             text=True, timeout=30, cwd=ROOT).stdout
        assert f"the pool at {endpoint} is missing" in out.splitlines()[0], out
        assert out.splitlines()[1].startswith("degraded: no worker pool"), out
        assert f"waiting for the pool at {endpoint}" in node.output()
        assert "silent for" not in node.output()

        procs("pool-again", *pool_argv)
        processed = row["processed"]
        wait_for(lambda: (h := node.health())["status"] == "ok" and
                 h["clients"]["alice"]["processed"] > processed + 5, 40,
                 what="frames processed by the pool again")
        wait_for(lambda: f"the pool at {endpoint} answers again" in node.output(), 5,
                 what="the log saying the pool is back")
    finally:
        alice.stop()
