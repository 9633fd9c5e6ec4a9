"""``camstream tap``: the verb of camstream.attach.tap (results as JSON lines)."""
from __future__ import annotations

from typing import Any


def add_parser(verbs: Any) -> None:
    from camstream.attach import tap
    taps = verbs.add_parser("tap", help="print a running daemon's results as JSON lines",
                            description="Attach to a running daemon's bus and print every "
                            "processor result as one JSON object per line (for jq and "
                            "friends); Ctrl-C detaches.")
    tap.add_arguments(taps)
    taps.set_defaults(run=tap.run)
