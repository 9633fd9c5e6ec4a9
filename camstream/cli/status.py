"""``camstream status``: a running daemon's counters, from its /healthz."""
from __future__ import annotations

import argparse
from typing import Any

from camstream.cli.args import add_login, add_tls_trust, password_of, port_arg, server_url


def add_parser(verbs: Any) -> None:
    status = verbs.add_parser("status", help="print a running daemon's counters",
                              description="Print the counters of a running daemon "
                              "(from its /healthz).")
    status.add_argument("url", nargs="?", default=None, type=server_url,
                        help="server URL, http(s)://HOST:PORT; HOST:PORT means http "
                        "(default: http://127.0.0.1:8080, or the --port)")
    status.add_argument("-p", "--port", type=port_arg, default=8080,
                        help="the port of a daemon on this machine, when no URL is given "
                        "(default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print /healthz as it is")
    add_login(status, None, "a user of the users file: under -a the daemon shows client rows "
              "only to a user who logs in", "that user's password (or set CAMSTREAM_PASSWORD)")
    add_tls_trust(status)
    status.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.client import print_status, tls_verify
    url = args.url or f"http://127.0.0.1:{args.port}"
    auth = None
    if args.username is not None:
        auth = (args.username, password_of(args))
    return print_status(url, as_json=args.json, verify=tls_verify(args), auth=auth)
