"""``camstream keys generate``: the CURVE key pairs that tcp endpoints require."""
from __future__ import annotations

import argparse
from typing import Any

from camstream.cli.args import CliError, Parser


def add_parser(verbs: Any) -> None:
    keys = verbs.add_parser("keys", help="make CURVE keys for tcp endpoints",
                            description="Make the CURVE key pairs that tcp endpoints require "
                            "(layout: see README 'Scaling out').")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                  required=True)
    gen = actions.add_parser("generate", help="make a server pair (once) and a client "
                             "pair, and admit the client's public key",
                             description="Make DIR/server.key{,_secret} (unless there) and "
                             "DIR/NAME.key{,_secret}, and copy NAME.key to DIR/authorized/.")
    gen.add_argument("dir", metavar="DIR")
    gen.add_argument("--name", default="worker", help="client key pair name (default: "
                     "%(default)s); one per machine lets you revoke one machine")
    keys.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.keys import generate
    try:
        made = generate(args.dir, args.name)
    except OSError as e:
        raise CliError(f"{args.dir}: {e.strerror}") from None
    for path in made:
        print(f"made {path}")
    print(f"{args.dir}/authorized/ admits {args.name}.key. The serving machine (serve "
          f"--worker-endpoint, pool) needs server.key_secret and authorized/; each connecting "
          f"machine (worker, serve --ingest-only) needs server.key and {args.name}.key_secret.")
    return 0
