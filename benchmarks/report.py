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
    "peers": "Node socket.io + bufferutil, same JS clients (all peers: results/peers.md)",
    "webview": "the same daemon and streams with no viewer (both 0-viewer windows)",
}


def _measured(source: dict) -> str:
    """Which tree a section was measured on, and when: a summary mixes this run's results
    with earlier ones of the benchmarks not run now."""
    commit = source.get("commit", "")[:10] or "the working tree"
    return f"commit {commit}, {source.get('measured_at', 'date not recorded')}"


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
             "are what to compare.", "", f"This run: camstream {under_test}; each section "
             "says the commit and time it was measured at.", ""]
    for name, res in results.items():
        took = seconds.get(name, 0)
        lines.append(f"## {name} ({took:.0f} s; {_measured(res.get('source', {}))}) - "
                     f"baseline: {BASELINES.get(name, '')}")
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

    if results.get("peers", {}).get("cells"):
        plot_peers(results["peers"], RESULTS / "peers.png")
        made.append("peers.png")
    return made


# -- peers: results/peers.md and peers.png -----------------------------------------------------

PEER_COLUMNS = {"EIO4": ["camstream", "node4bu", "node4", "uvicorn", "stock"],
                "EIO3": ["camstream", "node2bu", "node2"]}
PEER_NAMES = {"camstream": "camstream (ingest)", "node4bu": "Node socket.io 4 + bufferutil",
              "node4": "Node socket.io 4", "uvicorn": "python-socketio on uvicorn",
              "stock": "stock gevent stack", "node2bu": "Node socket.io 2 + bufferutil",
              "node2": "Node socket.io 2"}


def _median(values: list) -> float | None:
    v = sorted(x for x in values if x is not None)
    return v[len(v) // 2] if v else None


def _span(windows: list[dict], key: str) -> str:
    """One window's value, or min-max over the rounds; "late" when the server's count came
    too late in every window (the window it measured was too short to mean anything)."""
    v = [w[key] for w in windows if w.get(key) is not None and w.get("valid", True)]
    if not v:
        return "late" if any(not w.get("valid", True) for w in windows) else ""
    lo, hi = min(v), max(v)
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}-{_fmt(hi)}"


def peers_markdown(res: dict, commit: str, mode: str) -> str:
    """The tables of the peers benchmark: frames per server CPU-second and camstream's ratio
    to each peer, frames/s, and the many-phones scenario."""
    m, cfg = machine(), res["config"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    v = res["versions"]
    lines = [f"# camstream against its peers ({mode} run)", "",
             f"Measured {when} at commit `{commit[:12] or 'working tree'}` on {m['cpus']} "
             f"cores ({m['cpu_model']}), shared by clients, servers and camstream's worker. "
             f"`python -m benchmarks --only peers{' --full' if mode == 'full' else ''}`.", "",
             f"{cfg['connections']} connections per server from {cfg['drivers_per_revision']} "
             f"JS client processes (socket.io-client {v['socket.io-client 4']} for Engine.IO 4, "
             f"{v['socket.io-client 2']} for Engine.IO 3), {cfg['rounds']} round(s) of "
             f"{cfg['window_s']} s windows per server and cell ({cfg['measured_s']:.2f} s "
             "measured), servers alternating. Paced: `receiveImage` without acks at "
             f"{cfg['paced_hz']} Hz per connection. Frames: "
             + ", ".join(f"{k} = {b:,} bytes" for k, b in res["frame_bytes"].items()) + ".", "",
             f"Peers: Node {v['node']}, socket.io {v['socket.io']} and {v['socket.io 2']}, "
             f"bufferutil {v['bufferutil']}; python-socketio {v['python-socketio']} "
             f"(engineio {v['python-engineio']}) on uvicorn {v['uvicorn']} (websockets "
             f"{v['websockets']}) and on gevent-websocket. Engine.IO 3 only has the Node 2.x "
             "peers: python-socketio 5 does not speak it.", "",
             "CPU: utime + stime (/proc/<pid>/stat) of the server process. For camstream the "
             "`camstream: ingest` process alone (the comparable figure); its worker decodes "
             "every frame it takes and is not counted, nor are the supervisor and the bus: "
             "their sum with ingest is the last column. /proc counts in clock ticks (10 ms): "
             "a quick window's reading is within 10 ms, so a paced cell (least CPU) is within "
             "about 20 %; `--full` runs 3 rounds of 5 s windows.", "",
             f"Load average of the machine (other jobs included) before and after: "
             f"{res.get('load_average_before')} -> {res.get('load_average_after')}; "
             f"took {res.get('phase_s')} s. \"late\": the server answered the count so late "
             "that the window it measured was too short. The stock stack is not run paced: it "
             "reads 4 x 50 Hz of 60 KB slower than they come, and its backlog would answer "
             "late and spend CPU in the next servers' windows (benchmark `ingest` runs it "
             "paced at 4 x 12.5 Hz).", ""]
    for rev in ("EIO4", "EIO3"):
        cells = {k: c for k, c in res["cells"].items() if k.startswith(f"{rev} ")}
        if not cells:
            continue
        cols = PEER_COLUMNS[rev]
        peers = cols[1:]
        lines += [f"## Engine.IO {rev[3]}: frames per server CPU-second", "",
                  "| cell | " + " | ".join(PEER_NAMES[c] for c in cols)
                  + " | " + " | ".join(f"camstream / {PEER_NAMES[p]}" for p in peers)
                  + " | camstream whole daemon |",
                  "|---|" + "---:|" * (len(cols) + len(peers) + 1)]
        for key, by in cells.items():
            med = {c: _median([w.get("frames_per_cpu_s") for w in by.get(c, [])
                               if w.get("valid", True)]) for c in cols}
            ratios = [_fmt(round(med["camstream"] / med[p], 2))
                      if med["camstream"] and med[p] else "" for p in peers]
            lines.append(f"| {key[len(rev) + 1:]} | "
                         + " | ".join(_span(by.get(c, []), "frames_per_cpu_s") for c in cols)
                         + " | " + " | ".join(ratios) + " | "
                         + _span(by.get("camstream", []), "frames_per_daemon_cpu_s") + " |")
        lines += ["", f"Frames/s counted by the server (Engine.IO {rev[3]}; bounded by the "
                  "clients and the shared cores, not a capacity):", "",
                  "| cell | " + " | ".join(PEER_NAMES[c] for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for key, by in cells.items():
            lines.append(f"| {key[len(rev) + 1:]} | "
                         + " | ".join(_span(by.get(c, []), "fps") for c in cols) + " |")
        lines.append("")
    phones = res.get("many_phones", {})
    if phones:
        cols = [c for c in PEER_COLUMNS["EIO4"] if c in phones]
        n = phones[cols[0]][0]["connections"]
        lines += [f"## Many phones: {n:,} connections x {cfg['phone_hz']:g} Hz of 60 KB with "
                  f"acks (Engine.IO 4), {cfg['phone_window_s']} s windows, "
                  f"{cfg.get('phone_rounds', 1)} round(s)", "",
                  f"Every server holds its {n:,} connections through the whole scenario; each "
                  "server's connections stream in turn. Idle RSS per connection: the server's "
                  "RSS once they are connected, less before, over N.", "",
                  f"| {n:,} x {cfg['phone_hz']:g} Hz | " + " | ".join(PEER_NAMES[c] for c in cols)
                  + " |", "|---|" + "---:|" * len(cols)]

        def line(label, fn):
            lines.append(f"| {label} | " + " | ".join(
                ", ".join(fn(w) for w in phones[c]) for c in cols) + " |")
        line("frames kept (counted / sent)", lambda p: f"{_fmt(p['kept_pct'])} %")
        line("server CPU (cores)", lambda p: _fmt(p["cpu_util"]))
        line("ack p50 / p99 (ms)", lambda p: f"{_fmt(p['ack_ms'].get('p50'))} / "
             f"{_fmt(p['ack_ms'].get('p99'))}")
        lines.append("| idle RSS per connection (KB) | " + " | ".join(
            _fmt(phones[c][0]["idle_rss_kb_per_connection"]) for c in cols) + " |")
        line("disconnects", lambda p: _fmt(p["disconnects"]))
        lines.append("")
    return "\n".join(lines)


def plot_peers(res: dict, path) -> None:
    """Frames per server CPU-second by frame size, one line per server; a panel per protocol
    revision and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = list(dict.fromkeys(k.split(" ", 2)[2] for k in res["cells"]))
    revs = [r for r in ("EIO4", "EIO3") if any(k.startswith(f"{r} ") for k in res["cells"])]
    sizes = list(res["frame_bytes"])
    fig, axes = plt.subplots(len(revs), len(modes), figsize=(4.2 * len(modes), 3.6 * len(revs)),
                             squeeze=False, sharey=True)
    styles = {"camstream": ("k", "o", 2.5), "node4bu": ("C0", "s", 1.5),
              "node4": ("C1", "s", 1.5), "uvicorn": ("C2", "^", 1.5),
              "stock": ("C3", "v", 1.5), "node2bu": ("C0", "D", 1.5), "node2": ("C1", "D", 1.5)}
    kb = [res["frame_bytes"][s] / 1000 for s in sizes]
    for i, rev in enumerate(revs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for server in PEER_COLUMNS[rev]:
                ys = [_median([w.get("frames_per_cpu_s") for w in
                               res["cells"].get(f"{rev} {s} {mode}", {}).get(server, [])
                               if w.get("valid", True)]) for s in sizes]
                color, marker, width = styles[server]
                ax.plot(kb, [y or float("nan") for y in ys], color=color, marker=marker,
                        linewidth=width, label=PEER_NAMES[server])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(kb, [f"{k:.0f} KB" for k in kb])
            ax.minorticks_off()
            ax.set_title(f"Engine.IO {rev[3]}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("frames per server CPU-second")
            if j == len(modes) - 1:
                ax.legend(fontsize=7)
    fig.suptitle("camstream ingest vs socket.io peers, same JS clients "
                 f"({machine()['cpus']} shared cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
