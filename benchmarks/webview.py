"""webview: what a browser viewer of ``serve --web`` costs, and that it costs ingest nothing.

One daemon with ``--web`` and 1 worker; 2 clients stream 640x480 frames with acks, paced at
15 fps each (``benchmarks.loadclient``), for the whole run. After a 4 s warm-up, windows of 12 s (30 s
full) with 0, 1 and 10 viewers attached, then 0 again (a drift in the machine's load shows as a
difference between the two 0 windows), and 1 real headless Chromium when it is installed.

A viewer here does what the page's script (camstream/static/view.js) does, in a thread of this
process: long-poll ``/api/state``, then fetch the newest JPEG of each tile whose frame changed,
then ask again. Measured per window, with psutil ``cpu_times``:

- ingest: frames accepted per ingest CPU-second (the figure that must not move with viewers);
- the web view process: CPU-seconds per second, and per viewer per stream (the window's web
  view CPU minus the 0-viewer window's, divided by viewers x streams);
- what the viewers got: frames per second per viewer per stream (at most the stream's 15).
"""
from __future__ import annotations

import threading
import time

import psutil
import requests

from benchmarks.common import ROOT, Clients, Daemon, cpu_seconds, free_port, ratio, wait_for
from benchmarks.suite import Run, row

STREAMS = 2
FPS = 15.0
VIEWERS = (0, 1, 10, 0)   # after a warm-up window; the two 0 windows are the baseline


class Viewer(threading.Thread):
    """The page's loop over HTTP: newest state, then the newest frame of each changed tile."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.http = requests.Session()
        self.frames = 0
        self.halt = threading.Event()

    def run(self) -> None:
        version, seen = -1, {}
        while not self.halt.is_set():
            try:
                state = self.http.get(self.url + "/api/state", params={
                    "since": version, "viewer": self.name}, timeout=15).json()
                version = state["version"]
                for c in state["clients"]:
                    if seen.get(c["name"]) != c["seq"]:
                        r = self.http.get(self.url + f"/api/frame/{c['name']}", timeout=15)
                        if r.ok:
                            self.frames += 1
                            seen[c["name"]] = c["seq"]
            except (requests.RequestException, ValueError):
                time.sleep(0.2)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=20)
        self.http.close()


def web_view(d: Daemon) -> psutil.Process:
    def find():
        for p in psutil.Process(d.proc.pid).children():
            if " ".join(p.cmdline()).strip() == "camstream: web view":
                return p
        return None
    return wait_for(find, 20, what="the web view process")


def window(d: Daemon, ingest: psutil.Process, view: psutil.Process, seconds: float,
           frames_seen) -> dict:
    t0, a0 = time.monotonic(), d.health()["totals"]
    i0, v0, f0 = cpu_seconds(ingest), cpu_seconds(view), frames_seen()
    time.sleep(seconds)
    t1, a1 = time.monotonic(), d.health()["totals"]
    i1, v1, f1 = cpu_seconds(ingest), cpu_seconds(view), frames_seen()
    took = t1 - t0
    accepted = (a1["received"] - a1["refused"]) - (a0["received"] - a0["refused"])
    return {"seconds": round(took, 2), "accepted_fps": round(accepted / took, 1),
            "ingest_cpu_s": round(i1 - i0, 3),
            "frames_per_ingest_cpu_s": round(accepted / (i1 - i0), 1) if i1 > i0 else None,
            "webview_cpu_per_s": round((v1 - v0) / took, 4),
            "viewer_frames_per_s": round((f1 - f0) / took, 1)}


def chromium_window(run: Run, d: Daemon, web: str, ingest, view, seconds: float) -> dict | None:
    """One real headless Chromium on the page (tests/helpers/browser.py's flags), if installed."""
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from browser import Browser, have_chromium
    except ImportError:  # selenium is a test extra
        return None
    if not have_chromium():
        return None
    browser = Browser()
    try:
        browser.driver.get(web + "/")
        time.sleep(3)  # the page loads and its loop starts

        def browser_cpu() -> float:
            return sum(cpu_seconds(p) for p in browser.processes() if p.is_running())
        c0 = browser_cpu()
        out = window(d, ingest, view, seconds, lambda: 0)
        out["chromium_cpu_per_s"] = round((browser_cpu() - c0) / out["seconds"], 3)
        return out
    finally:
        browser.quit()


def bench_webview(run: Run) -> dict:
    seconds = run.t(12, 30)
    frame = str(run.frames["640x480"])
    port = free_port()
    web = f"http://127.0.0.1:{port}"
    out: dict = {"streams": STREAMS, "fps_each": FPS, "window_s": seconds, "windows": []}
    specs = [{"name": f"cam{i}", "frame": frame, "mode": "ack", "fps": FPS}
             for i in range(STREAMS)]
    total = seconds * (len(VIEWERS) + 1) + 45
    with Daemon(run.workdir, 1, "--web", f"127.0.0.1:{port}") as d:
        d.wait_ready()
        ingest, view = d.ingest(), web_view(d)
        wait_for(lambda: requests.get(web + "/healthz", timeout=2).ok, 20, what="the web view")
        clients = Clients(d.url, run.workdir, specs, total)
        try:
            clients.wait_started()
            out["warm_up"] = window(d, ingest, view, 4, lambda: 0)
            for n in VIEWERS:
                viewers = [Viewer(web, f"bench{i}") for i in range(n)]
                for v in viewers:
                    v.start()
                time.sleep(1)
                w = window(d, ingest, view, seconds,
                           lambda viewers=viewers: sum(v.frames for v in viewers))
                w["viewers"] = n
                for v in viewers:
                    v.stop()
                out["windows"].append(w)
            chromium = chromium_window(run, d, web, ingest, view, seconds)
            if chromium:
                chromium["viewers"] = "1 chromium"
                out["windows"].append(chromium)
        finally:
            clients.kill()
    rows = []
    idle_windows = [w for w in out["windows"] if w["viewers"] == 0]
    idle = {"webview_cpu_per_s": sum(w["webview_cpu_per_s"] for w in idle_windows)
            / len(idle_windows)}
    base = round(sum(w["accepted_fps"] * w["seconds"] for w in idle_windows)
                 / sum(w["ingest_cpu_s"] for w in idle_windows), 1)
    out["baseline_frames_per_ingest_cpu_s"] = base
    for w in out["windows"]:
        n = w["viewers"]
        label = f"{n} viewers" if isinstance(n, int) else n
        rows.append(row(f"{label}: frames per ingest CPU-s", w["frames_per_ingest_cpu_s"],
                        base, target="ratio 1 (within noise)",
                        ok=bool(w["frames_per_ingest_cpu_s"] and base and
                                abs(ratio(w["frames_per_ingest_cpu_s"], base) - 1) < 0.15)))
        rows.append(row(f"{label}: frames/s accepted", w["accepted_fps"], STREAMS * FPS,
                        unit="fps"))
        extra = w["webview_cpu_per_s"] - idle["webview_cpu_per_s"]
        viewers = 1 if not isinstance(n, int) else n
        if viewers:
            w["webview_cpu_ms_per_viewer_per_stream_s"] = round(
                1000 * extra / viewers / STREAMS, 2)
            rows.append(row(f"{label}: web view CPU per viewer per stream",
                            w["webview_cpu_ms_per_viewer_per_stream_s"], unit="ms CPU/s"))
        if isinstance(n, int) and n:
            rows.append(row(f"{label}: frames/s each viewer got per stream",
                            round(w["viewer_frames_per_s"] / n / STREAMS, 1), FPS, unit="fps"))
        if "chromium_cpu_per_s" in w:
            rows.append(row("1 chromium: the browser's own CPU", w["chromium_cpu_per_s"],
                            unit="CPU-s/s"))
    rows.append(row("web view CPU with 0 viewers (bus reading only)",
                    round(idle["webview_cpu_per_s"], 4), unit="CPU-s/s"))
    out["rows"] = rows
    return out
