"""``camstream tap``: a running daemon's processor results as JSON lines on standard output.

A subscriber on the bus (pub-sub, processed frames, read through :mod:`camstream.attach.subscribe`),
so it attaches and detaches at any time without ingest or the workers noticing; like any
subscriber it loses the oldest results if it falls behind (the bus never waits for it). Each line is the worker's result object with
the frame's ``client``, ``session``, ``recv_ns`` and the byte size of the annotated image
(``annotated``, 0 when none) added::

    camstream tap --client alice | jq -c 'select(.faces > 0)'
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camstream.cli.args import add_runtime_dir, runtime_dir_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_dir(parser, port=True)
    parser.add_argument("--client", metavar="NAME", action="append", default=[],
                        help="only this client's results (repeat for more; default: all)")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N results (default: run until Ctrl-C)")


def line(frame) -> bytes:
    """One output line from a processed :class:`camstream.attach.subscribe.Frame`."""
    out = {"client": frame.client, "session": frame.session, "seq": frame.seq,
           "recv_ns": frame.recv_ns}
    out.update(frame.result)
    out["annotated"] = len(frame.jpeg) if frame.annotated else 0
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


def run(args: argparse.Namespace) -> int:
    from camstream import bus
    from camstream.attach.subscribe import Subscription

    args.runtime_dir = runtime_dir_of(args)
    if not (Path(args.runtime_dir) / bus.BUS_OUT).exists():
        print(f"camstream tap: no daemon in {args.runtime_dir} yet; waiting for one "
              "(its --port or --runtime-dir?)", file=sys.stderr)
    results = Subscription(args.runtime_dir, args.client, raw=False, processed=True,
                           hwm=1000, check=False)
    out = sys.stdout.buffer
    shown = 0
    try:
        for frame in results:
            out.write(line(frame))
            out.flush()
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (| head): that is how taps end
        sys.stderr.close()
    finally:
        results.close()
    return 0
