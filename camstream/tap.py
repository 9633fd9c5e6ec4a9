"""``camstream tap``: a running daemon's processor results as JSON lines on standard output.

A subscriber on the bus (pub-sub, ``PROCESSED`` topic), so it attaches and detaches at any
time without ingest or the workers noticing; like any subscriber it loses the oldest results
if it falls behind (the bus never waits for it). Each line is the worker's result object with
the frame's ``client``, ``session``, ``recv_ns`` and the byte size of the annotated image
(``annotated``, 0 when none) added::

    camstream tap --client alice | jq -c 'select(.faces > 0)'
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from camstream.cli import add_runtime_dir
    add_runtime_dir(parser, port=True)
    parser.add_argument("--client", metavar="NAME", action="append", default=[],
                        help="only this client's results (repeat for more; default: all)")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N results (default: run until Ctrl-C)")


def line(parts: list) -> bytes:
    """One output line from a ``[topic, header, result json, annotated jpeg]`` message."""
    from camstream.wire import Header
    header = Header.unpack(parts[1])
    result = json.loads(bytes(parts[2]))
    out = {"client": header.client, "session": header.session, "seq": header.seq,
           "recv_ns": header.recv_ns}
    out.update(result)
    out["annotated"] = len(parts[3]) if len(parts) > 3 else 0
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


def run(args: argparse.Namespace) -> int:
    import zmq

    from camstream import bus, wire
    from camstream.cli import runtime_dir_of

    args.runtime_dir = runtime_dir_of(args)
    topics = [wire.topic(wire.PROCESSED, name) for name in args.client] or [wire.PROCESSED]
    if not (Path(args.runtime_dir) / bus.BUS_OUT).exists():
        print(f"camstream tap: no daemon in {args.runtime_dir} yet; waiting for one "
              "(its --port or --runtime-dir?)", file=sys.stderr)
    ctx = zmq.Context()
    sub = bus.bus_sub(ctx, args.runtime_dir, *topics, hwm=1000)
    out = sys.stdout.buffer
    shown = 0
    try:
        while not args.count or shown < args.count:
            parts = sub.recv_multipart()
            try:
                text = line(parts)
            except (ValueError, IndexError, UnicodeDecodeError):
                continue  # not a result we can read (another version?): skip it
            out.write(text)
            out.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (| head): that is how taps end
        sys.stderr.close()
    finally:
        sub.close(0)
        ctx.term()
    return 0
