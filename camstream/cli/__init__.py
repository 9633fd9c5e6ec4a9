"""The ``camstream`` command line: parse and validate at the edge, then hand over one frozen
Config. Every error here is one clear line and a non-zero exit, before anything starts.

One module per verb, each with its flags (``add_parser``) and its runner; what several verbs
share is in :mod:`camstream.cli.args`. :data:`VERBS` is the order ``camstream --help`` lists them;
they are imported when the parser is built, so that a module taking ``cli.args`` (the attach
processes do) does not import every verb with it.
"""
from __future__ import annotations

import importlib
import sys

from camstream import __version__
from camstream.cli.args import CliError, Parser
from camstream.supervisor.runtime import StartError

VERBS = ("serve", "demo", "users", "send", "status", "display", "tap", "tls", "systemd",
         "systemd:add_reload_parser", "pool", "worker", "keys")  # module[:function]


def build_parser() -> Parser:
    parser = Parser(prog="camstream", description=(
        "Frame-ingest daemon: phones and cameras stream JPEG frames over socket.io; camstream "
        "authenticates them and fans the frames out to a pool of OpenCV worker processes."))
    parser.add_argument("--version", action="version", version=f"camstream {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for verb in VERBS:
        module, _, function = verb.partition(":")
        verb_module = importlib.import_module(f"camstream.cli.{module}")
        getattr(verb_module, function or "add_parser")(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = parser.parse_args(argv)
        args.argv = argv
        if not getattr(args, "run", None):
            parser.print_help()
            return 2
        return args.run(args)
    except (CliError, StartError) as e:
        print(f"camstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        import zmq
        if isinstance(e, zmq.ZMQError):  # an endpoint that cannot be bound (a port in use)
            print(f"camstream: error: {e}", file=sys.stderr)
            return 2
        raise
