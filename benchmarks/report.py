"""results/summary.md (one table) and the PNG plots, from the benchmarks' result dicts."""
from __future__ import annotations

import os
import platform
import time

import psutil

from benchmarks.common import RESULTS


def machine() -> dict:
    return {"cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "mem_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


BASELINES = {
    "ingest": "stock python-socketio + gevent-websocket, same clients",
    "flood": "ingest's own idle RSS / offered rate",
    "pipeline": "plain cv2.imdecode loop in W processes",
    "latency": "one cv2.imdecode (p50/p99), same process; capacity from a saturation run",
    "isolation": "the prototype's design: one gevent process decoding + working in the handler",
    "profile": "",
    "webview": "the same daemon and streams with no viewer (both 0-viewer windows)",
}


def write_summary(results: dict[str, dict], mode: str, seconds: dict[str, float],
                  source: dict) -> str:
    m = machine()
    under_test = (f"commit {source['commit'][:10]}" if source.get("commit") else
                  "the working tree") + (" + " + ", ".join(source["patches"])
                                         if source.get("patches") else "")
    lines = [f"# camstream benchmarks ({mode} run, {time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gb']} GB, "
             f"Python {m['python']}. Clients, servers and workers all share these "
             f"{m['cpus']} cores, so client CPU is taken from the server: absolute numbers "
             "are lower bounds; the ratios against the baseline measured in the same run "
             "are what to compare.", "", f"Under test: camstream {under_test}.", ""]
    for name, res in results.items():
        took = seconds.get(name, 0)
        lines.append(f"## {name} ({took:.0f} s) - baseline: {BASELINES.get(name, '')}")
        lines.append("")
        if "error" in res:
            lines += [f"**failed**: `{res['error']}`", ""]
            continue
        lines.append("| metric | camstream | baseline | ratio | target | met |")
        lines.append("|---|---:|---:|---:|---|---|")
        for r in res.get("rows", []):
            lines.append(f"| {r['metric']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | "
                         f"{_fmt(r['ratio'])} | {r['target'] or ''} | "
                         f"{_fmt(r['ok']) if r['ok'] is not None else ''} |")
        lines.append("")
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(text)
    return text


def plot_all(results: dict[str, dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []

    ing = results.get("ingest")
    if ing and "camstream" in ing:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for side, style in (("camstream", "o-"), ("stock", "s--")):
            ks = [k for k in ing[side] if k.isdigit()]
            a1.plot([int(k) for k in ks], [ing[side][k]["fps"] for k in ks], style, label=side)
            a2.plot([int(k) for k in ks], [ing[side][k]["frames_per_cpu_s"] or 0 for k in ks],
                    style, label=side)
        for ax, title in ((a1, "frames/s accepted"), (a2, "frames per ingest CPU-second")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("clients (1 frame in flight each)")
            ax.set_title(title)
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle("ingest, 640x480 JPEG (60 KB), 2 shared cores")
        fig.tight_layout()
        fig.savefig(RESULTS / "ingest_throughput.png", dpi=100)
        plt.close(fig)
        made.append("ingest_throughput.png")

    lat = results.get("latency")
    if lat and lat.get("cdf_ms"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("cdf_ms", "ingest receive -> worker done"),
                           ("decode_cdf_ms", "cv2.imdecode alone")):
            v = lat[key]
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of frames")
        ax.set_title(f"latency at {lat['offered_fps']} fps (70 % of capacity)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "latency_cdf.png", dpi=100)
        plt.close(fig)
        made.append("latency_cdf.png")

    series = []
    if results.get("flood", {}).get("rss_series"):
        series.append(("flood: camstream ingest", results["flood"]["rss_series"]))
    iso = results.get("isolation", {})
    for side in ("camstream", "prototype"):
        if iso.get(side, {}).get("rss_series"):
            series.append((f"isolation: {side}", iso[side]["rss_series"]))
    if series:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, s in series:
            ax.plot([t for t, _ in s], [r for _, r in s], label=label)
        ax.set_xlabel("s")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("server RSS over time")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "rss_over_time.png", dpi=100)
        plt.close(fig)
        made.append("rss_over_time.png")
    return made
