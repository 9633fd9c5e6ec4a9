"""``python -m benchmarks [--quick|--full] [--only NAME ...]``: run the benchmarks, write
benchmarks/results/*.json, summary.md and the plots. See benchmarks/README.md."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import report
from benchmarks.common import (
    RESULTS,
    SOURCE,
    apply_patch,
    frame_files,
    snapshot_head,
    write_json,
)
from benchmarks.suite import BENCHMARKS, Run

DEFAULT = ["ingest", "flood", "pipeline", "latency", "isolation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs (default; < 3 min)")
    mode.add_argument("--full", action="store_true", help="long runs, for a lab machine")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                        help="run only this benchmark (repeatable): "
                        + ", ".join(BENCHMARKS) + "; 'profile' runs only when named")
    parser.add_argument("--tree", choices=["head", "worktree"], default="head",
                        help="camstream under test: the last commit (default: a snapshot, so "
                        "edits during the run change nothing) or the working tree as it is")
    parser.add_argument("--patch", action="append", type=Path, metavar="DIFF",
                        help="apply this unified diff (paths a/camstream/...) to the snapshot "
                        "under test, never to the repository; repeatable")
    args = parser.parse_args(argv)
    names = args.only or DEFAULT
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    # earlier results of benchmarks not run now stay in the summary
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if name not in names and path.exists() and args.only:
            results[name] = json.loads(path.read_text())
            seconds[name] = results[name].get("took_s", 0)
    with tempfile.TemporaryDirectory(prefix="camstream-bench-") as tmp:
        if args.tree == "head":
            snapshot_head(Path(tmp) / "src")
            for patch in args.patch or []:
                apply_patch(patch)
        run = Run(full=args.full, workdir=Path(tmp), frames=frame_files(Path(tmp)))
        for name in names:
            t0 = time.monotonic()
            print(f"== {name} ...", file=sys.stderr, flush=True)
            try:
                res = BENCHMARKS[name](run)
            except Exception as e:  # one failure must not lose the others' results
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {e}"}
            seconds[name] = res["took_s"] = round(time.monotonic() - t0, 1)
            res["mode"] = "full" if args.full else "quick"
            res["machine"] = report.machine()
            res["source"] = {"tree": args.tree, "commit": SOURCE["commit"],
                             "patches": SOURCE.get("patches", []),
                             "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            write_json(name, res)
            results[name] = res
            print(f"== {name} done in {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    ordered = {n: results[n] for n in BENCHMARKS if n in results}
    print(report.write_summary(ordered, "full" if args.full else "quick", seconds,
                               dict(SOURCE, dir="")))
    report.plot_all(ordered)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
