"""``camstream display``: windows or snapshots (camstream.attach.display), or with --web the
same frames served to browsers (camstream.attach.webview); each module declares its flags."""
from __future__ import annotations

import argparse
from typing import Any

from camstream.cli.args import runtime_dir_of


def add_parser(verbs: Any) -> None:
    from camstream.attach import display, webview
    show = verbs.add_parser("display", help="attach a window per client to a running daemon",
                            description="Attach to a running daemon and show the newest frame "
                            "of each client in a window titled with its name (fps and "
                            "latency overlaid); q, closing the last window or Ctrl-C detaches. "
                            "With --web, serve the same to browsers instead.")
    display.add_arguments(show)
    webview.add_arguments(show)
    show.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.attach import display, webview
    args.runtime_dir = runtime_dir_of(args)  # both views find the daemon by its port
    if args.web:  # the browser view: the same bus, served over HTTP
        return webview.run(args)
    return display.run(args)
