"""Checks that load something to know it works: the processor (with OpenCV) and the CURVE
keys of tcp endpoints. They read, and change nothing; each problem is one line."""
from __future__ import annotations

import argparse
from pathlib import Path

from camstream.cli.args import CliError, require_opencv


def checked_processor(args: argparse.Namespace) -> tuple:
    """``--processor-opt`` pairs, once the processor loads with them (or one line)."""
    from workers.processors import load
    require_opencv()
    options = tuple(tuple(pair) for pair in args.processor_options)
    try:
        load(args.processor, options)
    except Exception as e:  # the built-ins name themselves: say it once
        raise CliError(f"--processor {args.processor}: "
                       f"{str(e).removeprefix(args.processor + ': ')}") from None
    return options


def tcp_settings(args: argparse.Namespace, side: str) -> dict:
    """Config fields of the tcp options, checked: no tcp without CURVE keys, one line each."""
    from camstream.bus import tcp_plus
    from camstream.keys import Curve, KeysError, require_tcp_keys

    frames, bus_ep = args.worker_endpoint or "", args.bus_endpoint or ""
    ingest_only = getattr(args, "ingest_only", False)
    if not frames:
        if ingest_only:
            raise CliError("--ingest-only needs --worker-endpoint tcp://POOL:PORT")
        if bus_ep:
            raise CliError("--bus-endpoint needs --worker-endpoint")
        return {}
    bus_ep = bus_ep or tcp_plus(frames, 1)
    if side == "connect" and any(f"//{h}:" in e for e in (frames, bus_ep)
                                 for h in ("0.0.0.0", "*", "[::]")):
        raise CliError(f"{frames}: connect to the serving machine's address, not a wildcard")
    key = getattr(args, "key", "worker")
    try:
        require_tcp_keys([frames, bus_ep], args.curve_keys)
        if side == "bind":
            Curve.server(args.curve_keys)
        else:
            Curve.client(args.curve_keys, key)
    except KeysError as e:
        raise CliError(f"--curve-keys: {e}") from None
    return {"worker_endpoint": frames, "bus_endpoint": bus_ep, "tcp_side": side,
            "curve_keys": str(Path(args.curve_keys).absolute()), "curve_key": key,
            "ingest_only": ingest_only}
