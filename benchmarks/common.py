"""What every benchmark shares: test frames, servers and clients as processes of their own
(started and stopped by pid, every wait bounded), CPU/RSS sampling and the bus tap.

Only 127.0.0.1 is ever used. Clients are separate processes (``benchmarks.loadclient``) that
connect, wait for a common start time, run for a fixed duration and write a JSON report.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests
import zmq

from camstream import bus, wire
from tests import helpers
from tests.helpers import free_port, make_jpeg, wait_for  # noqa: F401 (re-exported)
from tests.helpers.procs import kill_leftovers, terminate
from tests.helpers.waiting import WaitTimeout

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PY = sys.executable
NODE = shutil.which("node") or "node"
SIZES = {"160x120": (160, 120), "640x480": (640, 480), "1280x960": (1280, 960)}


def frame_files(workdir: Path) -> dict[str, Path]:
    """Encode each test frame once; clients read the bytes from these files."""
    out = {}
    for name, (w, h) in SIZES.items():
        path = workdir / f"frame-{name}.jpg"
        if not path.exists():
            path.write_bytes(make_jpeg(w, h, seed=w * h, label=name, sigma=1.4))
        out[name] = path
    return out


# The camstream under test: the last commit, unpacked (``snapshot_head``), so that a working
# tree being edited while the benchmarks run cannot change what is measured; or, with
# ``--tree worktree``, the working tree itself.
SOURCE = {"dir": ROOT, "commit": ""}


def snapshot_head(dest: Path) -> None:
    """``git archive HEAD camstream workers`` into ``dest``; servers then import from there."""
    dest.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "camstream", "workers"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    SOURCE.update(dir=dest, commit=commit, patches=[])


def apply_patch(patch: Path) -> None:
    """Apply a proposed change (a unified diff, paths a/camstream/...) to the snapshot only:
    the repository's files are never touched."""
    if SOURCE["dir"] == ROOT:
        raise ValueError("--patch needs --tree head (it patches the snapshot, not the tree)")
    subprocess.run(["patch", "-p1", "-d", str(SOURCE["dir"]), "-i", str(patch.resolve())],
                   check=True, timeout=30, capture_output=True)
    SOURCE["patches"].append(patch.name)


def env_with_pythonpath() -> dict:
    """camstream from SOURCE first, then the repository (for ``benchmarks``, e.g. the daemon's
    workers import ``benchmarks.slow``)."""
    env = dict(os.environ)
    paths = [str(SOURCE["dir"]), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                else [])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """``terminate`` it, then SIGKILL whatever children it left (listed while it ran: once it
    has gone, its pid may be another process's)."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    terminate(proc, timeout)
    kill_leftovers(children)


class Server:
    """A server under test: the camstream daemon or one of the baseline scripts."""

    kind = "server"

    def __init__(self, argv: list[str], port: int, workdir: Path, tag: str,
                 env: dict | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{tag}-{port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or env_with_pythonpath(), cwd=SOURCE["dir"])

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited {self.proc.returncode}:\n"
                               + self.output()[-3000:])

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


_SERVE_HELP: list[str] = []


def unlimited_args() -> list[str]:
    """Lift the per-connection frame rate and per-address connection limits, if this version
    of ``camstream serve`` has them: a benchmark measures capacity, not the limits."""
    if not _SERVE_HELP:
        _SERVE_HELP.append(subprocess.run([PY, "-m", "camstream", "serve", "--help"],
                                          capture_output=True, text=True, timeout=60,
                                          cwd=SOURCE["dir"], env=env_with_pythonpath()).stdout)
    extra = []
    if "--max-fps" in _SERVE_HELP[0]:
        extra += ["--max-fps", "1000000"]
    if "--max-connections-per-ip" in _SERVE_HELP[0]:
        extra += ["--max-connections-per-ip", "5000"]  # peers --full: 1,000 phones and more
    return extra


class Daemon(helpers.Daemon):
    """The tests' ``camstream serve``, run from SOURCE, quiet, with the limits lifted; a health
    check may take long under load, and stopping it kills whatever children it left."""

    health_timeout = 30.0

    def __init__(self, workdir: Path, workers: int, *args: str, env: dict | None = None) -> None:
        super().__init__(workdir, "--log-level", "warning", *unlimited_args(), *args,
                         workers=workers, env=env or env_with_pythonpath(), cwd=SOURCE["dir"])
        self._ingest: psutil.Process | None = None

    def wait_ready(self, timeout: float = 60) -> dict:
        return super().wait_ready(timeout)

    def stop(self, timeout: float = 20) -> int:
        leftovers = self.children()
        code = super().stop(timeout)
        kill_leftovers(leftovers)
        return code

    def ingest(self) -> psutil.Process:
        """The supervisor's child titled ``camstream: ingest``."""
        if self._ingest is None or not self._ingest.is_running():
            def find():
                for p in psutil.Process(self.proc.pid).children():
                    if " ".join(p.cmdline()).strip() == "camstream: ingest":
                        return p
                return None
            self._ingest = wait_for(find, 20, what="the ingest process")
        return self._ingest


class Script(Server):
    """A baseline server script in benchmarks/ (stock, prototype)."""

    def __init__(self, module: str, workdir: Path, *args: str, env: dict | None = None) -> None:
        port = free_port()
        self.kind = module
        super().__init__([PY, "-m", f"benchmarks.{module}", "--port", str(port), *args],
                         port, workdir, module, env)

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            self.check_alive()
            return requests.get(self.url + "/ping", timeout=2).status_code == 200
        wait_for(ready, timeout, what=f"{self.kind} to answer")

    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)


# -- clients ----------------------------------------------------------------------------------

def wait_connected(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    """Wait at most ``timeout`` s for each client to write ``<out>.ready`` (or exit), then go
    on regardless: a client that never connected says so in its report."""
    def connected():
        return all(Path(f"{out}.ready").exists() or proc.poll() is not None
                   for proc, out in procs)
    try:
        wait_for(connected, timeout, interval=0.05, what="the clients to connect")
    except WaitTimeout:
        pass


class Clients:
    """Client processes of ``benchmarks.loadclient``. Each connects and says so; once all have
    (or ``connect_timeout`` passed) they are told a common start time, shortly after."""

    def __init__(self, url: str, workdir: Path, specs: list[dict], duration: float,
                 connect_timeout: float = 40.0) -> None:
        self.duration = duration
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        self.go = workdir / f"go-{tag}"
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        for i, spec in enumerate(specs):
            out = workdir / f"client-{tag}-{i}.json"
            args = {"url": url, "duration": duration, "out": str(out), "go": str(self.go),
                    **spec}
            argv = ([NODE, str(BENCH / "legacy_client.js")] if spec.get("runner") == "node"
                    else [PY, "-m", "benchmarks.loadclient"])
            proc = subprocess.Popen([*argv, json.dumps(args)],
                                    cwd=ROOT, env=env_with_pythonpath(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append((proc, out))
        wait_connected(self.procs, connect_timeout)
        self.start_at = time.time() + 0.3
        tmp = self.go.with_suffix(".tmp")
        tmp.write_text(repr(self.start_at))
        tmp.rename(self.go)

    def wait_started(self) -> None:
        time.sleep(max(0.0, self.start_at - time.time()))

    def collect(self, extra: float = 25) -> list[dict]:
        deadline = self.start_at + self.duration + extra
        reports = []
        for proc, out in self.procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            err = proc.stderr.read().decode(errors="replace")[-2000:]
            proc.stderr.close()
            Path(str(out) + ".ready").unlink(missing_ok=True)
            if out.exists():
                report = json.loads(out.read_text())
                out.unlink()
            else:
                report = {"name": "?", "error": f"no report (exit {proc.returncode}): {err}"}
            reports.append(report)
        return reports

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


# -- measuring --------------------------------------------------------------------------------

class Sampler:
    """CPU seconds and RSS of some processes, sampled in a thread every ``interval`` s."""

    def __init__(self, procs: dict[str, psutil.Process], interval: float = 0.5) -> None:
        self.procs = procs
        self.interval = interval
        self.t0 = time.monotonic()
        self.samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = time.monotonic() - self.t0
        for name, p in self.procs.items():
            try:
                with p.oneshot():
                    ct = p.cpu_times()
                    self.samples[name].append((now, ct.user + ct.system,
                                               p.memory_info().rss / 2 ** 20))
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def rss_series(self, name: str) -> list[tuple[float, float]]:
        return [(round(t, 2), round(r, 1)) for t, _, r in self.samples[name]]


def cpu_seconds(p: psutil.Process) -> float:
    ct = p.cpu_times()
    return ct.user + ct.system


class BusTap:
    """Subscribes to the daemon's bus (PROCESSED) in a thread and keeps, per result,
    (client, seq, recv_ns, done_ns)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.ctx = zmq.Context()
        self.sub = bus.bus_sub(self.ctx, str(runtime_dir), wire.PROCESSED, hwm=200000)
        self.records: list[tuple[str, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # let the subscription reach the proxy

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            for result in bus.drain(self.sub, wire.Result.unpack):
                self.record(result.header, result.result)

    def record(self, h: wire.Header, result: dict) -> None:
        self.records.append((h.client, h.seq, h.recv_ns, result["done_ns"]))

    def between(self, t0_ns: int, t1_ns: int) -> list[tuple[str, int, int, int]]:
        return [r for r in self.records if t0_ns <= r[3] < t1_ns]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sub.close(0)
        self.ctx.term()


# -- statistics -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))
    return v[k]


def summary_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50), 3),
            "p90": round(percentile(values, 90), 3), "p99": round(percentile(values, 99), 3),
            "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
