"""``camstream tls``: the verb of camstream.tls (a self-signed certificate for https)."""
from __future__ import annotations

from typing import Any


def add_parser(verbs: Any) -> None:
    from camstream import tls
    certs = verbs.add_parser("tls", help="make a self-signed https certificate for this "
                             "machine (for phones' camera page)",
                             description="Make a self-signed certificate for this machine's "
                             "names and addresses, for serve --certfile (browsers give the "
                             "camera page a camera only over https).")
    tls.add_arguments(certs)
    certs.set_defaults(run=tls.run)
