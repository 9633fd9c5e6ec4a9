"""What costly JPEGs cost another client: ``python -m benchmarks.hostile_frames [--tree DIR]``.

alice streams ordinary frames at 10 fps; mallory, beside her, sends at the same allowed rate
(``--max-fps 10``) the frames of issue 15: a progressive 4096x4096 JPEG whose last scan is
repeated 16,680 times, the same at 4000x4000 (under ``--max-pixels``), and a 631-byte file
declaring 8192x8192. Prints one JSON line: alice's share of processed frames, mallory's
counters, the lowest ``workers.alive`` and the statuses /healthz gave meanwhile, the largest
worker RSS. ``--tree DIR`` runs the daemon from another source tree (e.g. an older commit's
``git archive``) to compare.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil
import requests

from benchmarks.common import ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT), help="source tree to run the daemon from")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    from tests.helpers import Daemon
    from tests.helpers.hostile_jpeg import declaring, repeated_scans
    from tests.helpers.streaming import Streamer

    attacks = [repeated_scans(4096, 4096, 16680), repeated_scans(4000, 4000, 16680),
               declaring(8192, 8192)]
    with tempfile.TemporaryDirectory(prefix="camstream-hostile-") as tmp, \
            Daemon(Path(tmp), "--max-fps", "10", workers=2, env={"PYTHONPATH": args.tree},
                   cwd=Path(args.tree)) as serve:
        serve.wait_ready(60)
        url = serve.url
        alice = Streamer(url, "alice", fps=10).start()
        mallory = Streamer(url, "mallory", fps=10, frames=attacks).start()
        start, statuses, alive, rss = time.monotonic(), set(), 99, 0
        while time.monotonic() - start < args.seconds:
            h = requests.get(url + "/healthz", timeout=5).json()
            statuses.add(h["status"])
            alive = min(alive, h["workers"]["alive"])
            for child in serve.children():
                try:
                    if "worker" in " ".join(child.cmdline()):
                        rss = max(rss, child.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.5)
        mallory.stop()
        alice.stop()
        time.sleep(6)  # lost is counted 5 s after dispatch
        h = requests.get(url + "/healthz", timeout=5).json()
        a, m = h["clients"]["alice"], h["clients"].get("mallory", {})
        keys = ("processed", "dropped", "lost", "errors")
        print(json.dumps({
            "tree": args.tree, "alice_accepted": alice.accepted,
            "alice": {k: a[k] for k in keys},
            "alice_processed_share": round(a["processed"] / max(1, alice.accepted), 3),
            "mallory_accepted": mallory.accepted, "mallory": {k: m.get(k) for k in keys},
            "statuses_seen": sorted(statuses), "min_workers_alive": alive,
            "max_worker_rss_mb": round(rss / 2 ** 20),
            "worker_restarts": h["workers"]["restarts"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
