"""``camstream display``: the verb of camstream.attach.display (windows, snapshots, or with
--web the browser view of camstream.attach.webview), which declares its flags and runs it."""
from __future__ import annotations

from typing import Any


def add_parser(verbs: Any) -> None:
    from camstream.attach import display
    show = verbs.add_parser("display", help="attach a window per client to a running daemon",
                            description="Attach to a running daemon and show the newest frame "
                            "of each client in a window titled with its name (fps and "
                            "latency overlaid); q, closing the last window or Ctrl-C detaches. "
                            "With --web, serve the same to browsers instead.")
    display.add_arguments(show)
    show.set_defaults(run=display.run)
