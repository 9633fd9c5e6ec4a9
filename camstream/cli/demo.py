"""``camstream demo``: the daemon on 127.0.0.1 with the reference client streaming into it,
then its counters; a first look without a phone."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from camstream.cli.args import port_arg, positive_float, positive_int
from camstream.cli.send import send_parser


def add_parser(verbs: Any) -> None:
    demo = verbs.add_parser("demo", help="run the daemon on 127.0.0.1 with a demo client",
                            description="Start 'camstream serve' on 127.0.0.1 and stream "
                            "synthetic frames into it, then print what was processed.")
    demo.add_argument("-p", "--port", type=port_arg, default=8080,
                      help="port (default: %(default)s)")
    demo.add_argument("-w", "--workers", type=positive_int, default=2,
                      help="worker processes (default: %(default)s)")
    demo.add_argument("--seconds", type=float, default=20.0,
                      help="how long to stream; 0 streams until Ctrl-C (default: %(default)s)")
    demo.add_argument("--fps", type=positive_float, default=10.0,
                      help="frames per second of the demo client (default: %(default)s)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """serve on 127.0.0.1 + send synthetic frames + status: a first look without a phone."""
    from camstream.client import client_counts, print_status, send
    from camstream.proc import python_module

    url = f"http://127.0.0.1:{args.port}"
    # send's options come from send's own parser, so they cannot drift from it
    send_args = send_parser().parse_args(
        [url, "-u", "demo", "--fps", repr(args.fps),
         "--count", str(int(args.seconds * args.fps))])
    sent = 1
    with tempfile.TemporaryDirectory(prefix="camstream-demo-") as rundir:
        serve = subprocess.Popen(python_module(
            "camstream", "serve", "-i", "127.0.0.1", "-p", str(args.port),
            "-w", str(args.workers), "--runtime-dir", rundir))
        try:
            if not wait_ready(url, serve, args.workers, timeout=60):
                print("camstream demo: the daemon did not start (see the lines above)",
                      file=sys.stderr)
                return 1
            print(f"camstream demo: daemon ready on {url}; streaming synthetic 640x480 frames "
                  f"at {args.fps:g} fps" + (f" for {args.seconds:g} s" if args.seconds else
                                            " until Ctrl-C"), file=sys.stderr)
            sent = send(send_args, "")
            time.sleep(1.5)  # processed counts arrive twice a second
            print_status(url)
            row = (client_counts(url, "demo", True) or {}) if not sent else {}
            if row.get("processed"):
                print(f"camstream demo: {row['processed']} of {row['received']} frames "
                      "processed. Next: 'camstream serve' on the lab machine, and the app "
                      "pointed at it (README: Connect the Android app)", file=sys.stderr)
            elif not sent:
                print("camstream demo: no frame was processed (see the lines above)",
                      file=sys.stderr)
                sent = 1
        except KeyboardInterrupt:
            pass
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    return 1 if sent or serve.returncode else 0


def wait_ready(url: str, serve: subprocess.Popen, workers: int, timeout: float) -> bool:
    """The daemon answers /healthz with ``workers`` alive (False: it exited, or the time ran
    out)."""
    import requests

    from camstream.client import fetch_health
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and serve.poll() is None:
        try:
            if fetch_health(url, timeout=1)["workers"]["alive"] >= workers:
                return True
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False

