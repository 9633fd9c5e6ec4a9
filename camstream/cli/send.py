"""``camstream send``: the reference client streams frames to a server, as a phone would
(the client itself: camstream.client)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from camstream.cli.args import (Parser, add_login, add_tls_trust, password_of, require_opencv,
                                server_url, verb_parser)

HELP = "reference client: stream frames to a server"
DESCRIPTION = ("Stream JPEG frames to a camstream server, as a phone would, and print "
               "sent/accepted/dropped and fps once a second.")


def add_parser(verbs: Any) -> None:
    add_arguments(verbs.add_parser("send", help=HELP, description=DESCRIPTION))


def send_parser() -> Parser:
    """send's flags alone, for a verb that sends as send does (demo)."""
    return verb_parser("send", DESCRIPTION, add_arguments)


def add_arguments(send: argparse.ArgumentParser) -> None:
    send.add_argument("url", nargs="?", default="http://127.0.0.1:8080", type=server_url,
                      help="server URL, http(s)://HOST:PORT; HOST:PORT means http "
                      "(default: %(default)s)")
    add_login(send, "demo", "user name (default: demo)",
              "password (or set CAMSTREAM_PASSWORD; default: empty)")
    send.add_argument("--source", default="synthetic",
                      help="'synthetic' (generated frames with a counter and a clock), a "
                      "video file, a folder of JPEG images, or a camera number "
                      "(default: %(default)s)")
    send.add_argument("--size", default="640x480", metavar="WxH",
                      help="frame size for synthetic frames (default: %(default)s)")
    send.add_argument("--quality", type=int, default=80,
                      help="JPEG quality when encoding (default: %(default)s)")
    send.add_argument("--fps", type=float, default=5.0,
                      help="frames per second; 0 sends as fast as acks allow "
                      "(default: %(default)s)")
    send.add_argument("--count", type=int, default=0,
                      help="frames to send, then stop; 0 sends until Ctrl-C (default)")
    send.add_argument("--legacy", action="store_true",
                      help="use the prototype's events (authenticate, receiveImage without "
                      "acks) instead of connect-time auth and frame with acks")
    send.add_argument("--transport", choices=["websocket", "polling", "default"],
                      default="websocket",
                      help="'default' starts with long-polling and upgrades, as the Android "
                      "app does (default: %(default)s)")
    send.add_argument("--results", action="store_true",
                      help="print each result the server sends back (serve --emit-results) "
                      "as a JSON line on stdout")
    send.add_argument("--quiet", action="store_true", help="no live line, only the summary")
    add_tls_trust(send)
    send.set_defaults(run=run, verb="send")


def run(args: argparse.Namespace) -> int:
    from camstream.client import send
    if not Path(args.source).is_dir():  # a folder of JPEGs is sent as it is, without OpenCV
        require_opencv()
    return send(args, password_of(args))
