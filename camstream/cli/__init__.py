"""The ``camstream`` command line: parse and validate at the edge, then hand over one frozen
Config. Every error here is one clear line and a non-zero exit, before anything starts."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import getpass
import logging
import os
import re
import socket
import sys
from pathlib import Path

from camstream import __version__
from camstream.config import Config, default_users_file


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        raise CliError(f"{message} (see '{self.prog} --help')")


def size_arg(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, 500k, 1048576)")
    unit = (m.group(2) or "b")[0]
    value = int(float(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def pixels_arg(text: str) -> int:
    """A pixel count: 16000000, 16M, 12.5M or 4096x4096."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text.lower())
    if m:
        value = int(m.group(1)) * int(m.group(2))
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([km]?)p?\s*", text.lower())
        if not m:
            raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 16M, "
                                             "4096x4096, 12000000)")
        value = int(float(m.group(1)) * {"": 1, "k": 1000, "m": 1000 ** 2}[m.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError("a pixel count must be positive")
    return value


def add_frame_limits(parser: argparse.ArgumentParser) -> None:
    """What a worker spends on one frame at most (checked before and while decoding)."""
    parser.add_argument("--max-pixels", type=pixels_arg, default="16M", metavar="N",
                        help="largest frame decoded, read from its JPEG header before "
                        "decoding (larger ones are counted as errors); e.g. 16M or 4096x4096 "
                        "(default: 16M, more than any phone camera streams)")
    parser.add_argument("--frame-timeout", type=positive_float, default=5.0,
                        metavar="SECONDS", help="a worker still decoding and processing one "
                        "frame after this long is replaced, and the frame counted as an error "
                        "(default: %(default)s)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def server_url(text: str) -> str:
    """A server address as users write it: ``http(s)://HOST:PORT``, or ``HOST:PORT`` meaning
    ``http://HOST:PORT`` (and a bare ``HOST`` the daemon's default port, 8080)."""
    from urllib.parse import urlsplit
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number
    except ValueError:
        parts = port = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected a server URL such as "
                                         f"http://HOST:8080 (or HOST:PORT), got {text!r}")
    if "://" not in text and port is None:  # a bare host: the daemon's default port
        url += ":8080"
    return url


def build_parser() -> Parser:
    parser = Parser(prog="camstream", description=(
        "Frame-ingest daemon: phones and cameras stream JPEG frames over socket.io; camstream "
        "authenticates them and fans the frames out to a pool of OpenCV worker processes."))
    parser.add_argument("--version", action="version", version=f"camstream {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    serve = verbs.add_parser("serve", help="run the daemon (ingest, workers, bus)",
                             description="Run the daemon: a socket.io ingest process, a pool "
                             "of OpenCV workers and the bus, under one supervisor.")
    serve.add_argument("--config", metavar="FILE",
                       help="read settings from FILE (key = value lines, the long option "
                       "names; see systemd/camstream.conf); flags given here override it")
    serve.add_argument("-i", "--ip", default="0.0.0.0",
                       help="address to listen on (default: %(default)s, every interface)")
    serve.add_argument("-p", "--port", type=port_arg, default=8080,
                       help="port for socket.io, /healthz and /metrics (default: %(default)s)")
    serve.add_argument("-a", "--auth", action="store_true",
                       help="require a username and password from the users file; without "
                       "it any credentials are accepted and the username names the stream")
    serve.add_argument("-d", "--display", action="store_true",
                       help="also start a display window per client (needs a screen)")
    serve.add_argument("--web", metavar="[HOST:]PORT", default="",
                       help="also serve the live view to browsers at http://HOST:PORT/ (a "
                       "display process, restarted if it dies; HOST defaults to -i; login "
                       "and TLS as -a and --certfile)")
    serve.add_argument("-w", "--workers", type=positive_int, default=os.cpu_count() or 1,
                       help="worker processes (default: the CPU count, %(default)s)")
    serve.add_argument("--users", metavar="FILE", default=default_users_file(),
                       help="users file, managed with 'camstream users' (default: %(default)s)")
    add_runtime_dir(serve)
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="log verbosity (default: %(default)s)")
    serve.add_argument("--max-frame-size", type=size_arg, default="4MiB", metavar="SIZE",
                       help="largest JPEG accepted; larger frames are refused with a reason "
                       "(default: 4MiB, enough for 1280x960 at quality 100)")
    serve.add_argument("--queue-depth", type=positive_int, default=1, metavar="N",
                       help="frames a client may have waiting for a worker; when full the "
                       "oldest is dropped, so the newest frames win (default: %(default)s)")
    serve.add_argument("--stop-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                       help="bound on a graceful stop, drain included (default: %(default)s)")
    serve.add_argument("--max-fps", type=positive_float, default=100.0, metavar="FPS",
                       help="frames a second one connection may send; beyond it frames are "
                       "refused with 'rate limited' (default: %(default)s)")
    serve.add_argument("--max-connections-per-ip", type=positive_int, default=32, metavar="N",
                       help="open connections one address may hold (default: %(default)s)")
    serve.add_argument("--max-queued-bytes", type=size_arg, default="1MiB", metavar="SIZE",
                       help="packets an Engine.IO 3 long-polling session may have waiting for "
                       "its next poll; beyond it the session is closed (default: 1MiB)")
    serve.add_argument("--max-incomplete-bytes", type=size_arg, default="64MiB",
                       metavar="SIZE", help="bytes held, all connections together, for events "
                       "whose binary attachments have not all arrived; one connection may "
                       "hold one message's worth (default: 64MiB)")
    serve.add_argument("--incomplete-timeout", type=positive_float, default=10.0,
                       metavar="SECONDS", help="an event still missing attachments this long "
                       "closes its connection (default: %(default)s)")
    serve.add_argument("--header-timeout", type=positive_float, default=10.0,
                       metavar="SECONDS", help="time a connection has to send a request's "
                       "line and headers (default: %(default)s)")
    serve.add_argument("--handshake-timeout", type=positive_float, default=10.0,
                       metavar="SECONDS", help="time a connection has to finish the TLS "
                       "handshake (default: %(default)s)")
    serve.add_argument("--max-pending-connections", type=positive_int, default=512,
                       metavar="N", help="connections that have not yet sent a whole request "
                       "(handshake and headers); beyond it the oldest is closed "
                       "(default: %(default)s)")
    serve.add_argument("--metrics-token", default="", metavar="TOKEN",
                       help="with -a: a caller of /healthz and /metrics sending 'Authorization: "
                       "Bearer TOKEN' sees client names, as does one with HTTP basic auth of a "
                       "user of the users file; others see totals only (put it in --config "
                       "to keep it out of ps)")
    serve.add_argument("--metrics-trust-loopback", action="store_true",
                       help="with -a: callers of /healthz and /metrics on 127.0.0.0/8 or ::1 "
                       "see client names without credentials")
    serve.add_argument("--forget-clients-after", type=positive_float, default=600.0,
                       metavar="SECONDS", help="a client name gone this long has its counters "
                       "folded into /healthz's 'departed' totals (default: %(default)s)")
    serve.add_argument("--worker-timeout", type=positive_float, default=10.0,
                       metavar="SECONDS", help="a worker or ingest silent this long is "
                       "killed and replaced (default: %(default)s)")
    serve.add_argument("--ping-interval", type=positive_float, default=25.0, metavar="SECONDS",
                       help="heartbeat interval told to clients (default: %(default)s)")
    serve.add_argument("--ping-timeout", type=positive_float, default=20.0, metavar="SECONDS",
                       help="a client silent this long past a heartbeat is dropped "
                       "(default: %(default)s)")
    serve.add_argument("--certfile", metavar="FILE",
                       help="serve https/wss with this certificate (PEM; with --keyfile)")
    serve.add_argument("--keyfile", metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument("--processor", default="stats", metavar="NAME",
                       help="what workers do with each frame: a built-in (stats, faces, "
                       "motion, edges), an installed entry point (group camstream.processors) "
                       "or module:attr (default: %(default)s)")
    serve.add_argument("--processor-opt", dest="processor_options", action="append",
                       type=processor_opt, default=[], metavar="KEY=VALUE",
                       help="an option for the processor, e.g. --processor-opt neighbors=3; "
                       "repeat for more")
    serve.add_argument("--route", choices=["auto", "any", "client"], default="auto",
                       help="which worker gets a frame: any free one, or always the same one "
                       "for a client (needed by processors that keep state per client, such "
                       "as motion); auto: client for those, any for the rest "
                       "(default: %(default)s)")
    serve.add_argument("--record", metavar="DIR", default="",
                       help="record every frame the workers receive, as it arrived, in "
                       "DIR/<client>/<date>/ with an index of headers and results")
    serve.add_argument("--record-max-gb", type=positive_float, default=0.0, metavar="GB",
                       help="with --record: delete the oldest days beyond this size "
                       "(default: keep everything)")
    add_frame_limits(serve)
    serve.add_argument("--emit-results", action="store_true",
                       help="send each processor result back to the client that sent the "
                       "frame, as a 'result' event")
    add_tcp_arguments(serve, "serve")
    serve.set_defaults(run=run_serve)

    demo = verbs.add_parser("demo", help="run the daemon on 127.0.0.1 with a demo client",
                            description="Start 'camstream serve' on 127.0.0.1 and stream "
                            "synthetic frames into it, then print what was processed.")
    demo.add_argument("-p", "--port", type=port_arg, default=8080,
                      help="port (default: %(default)s)")
    demo.add_argument("-w", "--workers", type=positive_int, default=2,
                      help="worker processes (default: %(default)s)")
    demo.add_argument("--seconds", type=float, default=20.0,
                      help="how long to stream; 0 streams until Ctrl-C (default: %(default)s)")
    demo.add_argument("--fps", type=positive_float, default=10.0,
                      help="frames per second of the demo client (default: %(default)s)")
    demo.set_defaults(run=run_demo)

    users = verbs.add_parser("users", help="manage the users file (scrypt hashes)",
                             description="Add, remove and list users. Passwords are stored "
                             "as scrypt hashes; a running daemon reloads the file on SIGHUP.")
    users_verbs = users.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                       required=True)
    for action, text in (("add", "add a user or change a password"),
                         ("remove", "remove a user"), ("list", "list the users")):
        p = users_verbs.add_parser(action, help=text, description=text)
        if action != "list":
            p.add_argument("name", help="user name (letters, digits, _ . @ -)")
        if action == "add":
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password from standard input (for scripts) "
                           "instead of prompting")
        p.add_argument("--users", metavar="FILE", default=default_users_file(),
                       help="users file (default: %(default)s)")
    users.set_defaults(run=run_users)

    send = verbs.add_parser("send", help="reference client: stream frames to a server",
                            description="Stream JPEG frames to a camstream server, as a phone "
                            "would, and print sent/accepted/dropped and fps once a second.")
    send.add_argument("url", nargs="?", default="http://127.0.0.1:8080", type=server_url,
                      help="server URL, http(s)://HOST:PORT; HOST:PORT means http "
                      "(default: %(default)s)")
    send.add_argument("-u", "--username", default="demo", help="user name (default: demo)")
    send.add_argument("--password", default="",
                      help="password (or set CAMSTREAM_PASSWORD; default: empty)")
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
    send.set_defaults(run=run_send)

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
    status.add_argument("-u", "--username", default=None,
                        help="a user of the users file: under -a the daemon shows client rows "
                        "only to a user who logs in")
    status.add_argument("--password", default="",
                        help="that user's password (or set CAMSTREAM_PASSWORD)")
    add_tls_trust(status)
    status.set_defaults(run=run_status)

    from camstream.attach import display
    show = verbs.add_parser("display", help="attach a window per client to a running daemon",
                            description="Attach to a running daemon and show the newest frame "
                            "of each client in a window titled with its name (fps and "
                            "latency overlaid); q, closing the last window or Ctrl-C detaches. "
                            "With --web, serve the same to browsers instead.")
    display.add_arguments(show)
    show.set_defaults(run=display.run)

    from camstream.attach import tap
    taps = verbs.add_parser("tap", help="print a running daemon's results as JSON lines",
                            description="Attach to a running daemon's bus and print every "
                            "processor result as one JSON object per line (for jq and "
                            "friends); Ctrl-C detaches.")
    tap.add_arguments(taps)
    taps.set_defaults(run=tap.run)

    from camstream import tls
    certs = verbs.add_parser("tls", help="make a self-signed https certificate for this "
                             "machine (for phones' camera page)",
                             description="Make a self-signed certificate for this machine's "
                             "names and addresses, for serve --certfile (browsers give the "
                             "camera page a camera only over https).")
    tls.add_arguments(certs)
    certs.set_defaults(run=tls.run)

    units = verbs.add_parser("systemd", help="print how to install camstream as a service",
                             description="Print a step-by-step recipe that installs camstream "
                             "as a systemd service, with the paths of its unit files.")
    units.set_defaults(run=run_systemd)

    reload = verbs.add_parser("reload", help="make a running daemon reload (systemctl reload "
                              "runs this)", description="Send SIGHUP to the daemon whose "
                              "supervisor is PID: it re-reads the users file (added users can "
                              "log in, removed ones are disconnected) and applies workers and "
                              "log-level from its configuration. The unit's ExecReload runs "
                              "it, so that no /bin/kill is needed.")
    reload.add_argument("pid", type=positive_int, metavar="PID",
                        help="the supervisor's pid (systemd: $MAINPID)")
    reload.set_defaults(run=run_reload)

    pool = verbs.add_parser("pool", help="run a worker pool that several ingest nodes feed",
                            description="Run workers and the bus for 'serve --ingest-only' "
                            "nodes on this or other machines: they connect to "
                            "--worker-endpoint (CURVE tcp). See README 'Scaling out'.")
    add_tcp_arguments(pool, "pool")
    pool.add_argument("-w", "--workers", type=positive_int, default=os.cpu_count() or 1,
                      help="worker processes (default: the CPU count, %(default)s)")
    add_processor_arguments(pool)
    add_frame_limits(pool)
    add_runtime_dir(pool)
    pool.add_argument("--log-level", default="info",
                      choices=["debug", "info", "warning", "error"],
                      help="log verbosity (default: %(default)s)")
    pool.add_argument("--worker-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                      help="a worker silent this long is replaced (default: %(default)s)")
    pool.add_argument("--stop-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                      help="bound on a graceful stop (default: %(default)s)")
    pool.set_defaults(run=run_pool)

    worker = verbs.add_parser("worker", help="run a worker on another machine",
                              description="Pull frames from 'camstream serve --worker-endpoint' "
                              "on another machine (CURVE tcp) and publish results and stats "
                              "on its bus, as its local workers do. Ctrl-C drains and stops.")
    add_tcp_arguments(worker, "worker")
    add_processor_arguments(worker)
    add_frame_limits(worker)
    worker.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: %(default)s)")
    worker.set_defaults(run=run_worker)

    keys = verbs.add_parser("keys", help="make CURVE keys for tcp endpoints",
                            description="Make the CURVE key pairs that tcp endpoints require "
                            "(layout: see README 'Scaling out').")
    keys_verbs = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                     required=True)
    gen = keys_verbs.add_parser("generate", help="make a server pair (once) and a client "
                                "pair, and admit the client's public key",
                                description="Make DIR/server.key{,_secret} (unless there) and "
                                "DIR/NAME.key{,_secret}, and copy NAME.key to DIR/authorized/.")
    gen.add_argument("dir", metavar="DIR")
    gen.add_argument("--name", default="worker", help="client key pair name (default: "
                     "%(default)s); one per machine lets you revoke one machine")
    keys.set_defaults(run=run_keys)
    return parser


def endpoint_arg(text: str) -> str:
    m = re.fullmatch(r"tcp://([^:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text)
    if not m or not 0 < int(m.group(2)) < 65535:
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {text!r}")
    return text


def add_tcp_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The scaling-out options: tcp endpoints (see camstream.bus) and their CURVE keys."""
    if verb == "worker":
        parser.add_argument("--connect", dest="worker_endpoint", type=endpoint_arg,
                            required=True, metavar="tcp://HOST:PORT",
                            help="the serving machine's --worker-endpoint")
        parser.add_argument("--bus", dest="bus_endpoint", type=endpoint_arg, default=None,
                            metavar="tcp://HOST:PORT",
                            help="its bus (default: the same host, PORT+1)")
        parser.add_argument("--key", default="worker", metavar="NAME",
                            help="use DIR/NAME.key_secret (default: %(default)s)")
    else:
        parser.add_argument("--worker-endpoint", type=endpoint_arg, default=None,
                            required=verb == "pool", metavar="tcp://HOST:PORT",
                            help="where ingest nodes ('serve --ingest-only') and remote "
                            "workers connect, e.g. tcp://0.0.0.0:5555" if verb == "pool" else
                            "also offer frames to remote workers here (e.g. "
                            "tcp://0.0.0.0:5555); with --ingest-only: the pool's endpoint")
        parser.add_argument("--bus-endpoint", type=endpoint_arg, default=None,
                            metavar="tcp://HOST:PORT", help="the bus over tcp: PORT (publish) "
                            "and PORT+1 (subscribe) (default: --worker-endpoint's PORT+1)")
    parser.add_argument("--curve-keys", metavar="DIR", default="",
                        help="CURVE keys, required by tcp endpoints (make them with "
                        "'camstream keys generate DIR')")
    if verb == "serve":
        parser.add_argument("--ingest-only", action="store_true",
                            help="no workers here: send frames to a 'camstream pool' at "
                            "--worker-endpoint and use its bus (several ingest nodes "
                            "behind nginx)")


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


def add_processor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processor", default="stats", metavar="NAME",
                        help="what workers do with each frame (as serve's; default: "
                        "%(default)s)")
    parser.add_argument("--processor-opt", dest="processor_options", action="append",
                        type=processor_opt, default=[], metavar="KEY=VALUE",
                        help="an option for the processor; repeat for more")


def require_opencv(gui: bool = False):
    """``cv2`` for the verbs that need it, or one line saying which build to install."""
    from camstream import opencv
    try:
        return opencv.require_gui() if gui else opencv.require()
    except opencv.OpenCVUnusable as e:
        raise CliError(str(e)) from None


def checked_processor(args: argparse.Namespace) -> tuple:
    from workers.processors import load
    require_opencv()
    options = tuple(tuple(pair) for pair in args.processor_options)
    try:
        load(args.processor, options)
    except Exception as e:  # the built-ins name themselves: say it once
        raise CliError(f"--processor {args.processor}: "
                       f"{str(e).removeprefix(args.processor + ': ')}") from None
    return options


def processor_opt(text: str) -> tuple[str, str]:
    from workers.processors import parse_option
    try:
        return parse_option(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_tls_trust(parser: argparse.ArgumentParser) -> None:
    """How a client verifies an https:// server (serve --certfile): by default against the
    system's certificate authorities."""
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", metavar="PEM", type=existing_file,
                       help="trust the server's certificate (or its authority) from this "
                       "file: a lab's self-signed certificate")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate at all")


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def add_runtime_dir(parser: argparse.ArgumentParser, port: bool = False) -> None:
    """``--runtime-dir``, whose default follows the port (:func:`runtime_dir_of`); with
    ``port``, also the ``--port`` an attaching tool finds its daemon by."""
    from camstream.rundir import default
    if port:
        parser.add_argument("-p", "--port", type=port_arg, default=8080,
                            help="the daemon's port, which names its default runtime "
                            "directory (default: %(default)s)")
    parser.add_argument("--runtime-dir", metavar="DIR", default=None,
                        help="where the daemon's ipc sockets live (default: one per port, "
                        f"e.g. {default(8080)} for port 8080)")


def runtime_dir_of(args: argparse.Namespace) -> str:
    """``--runtime-dir`` as given, else the default for the daemon's port (a pool's: its
    --worker-endpoint's)."""
    from camstream.rundir import default
    if args.runtime_dir:
        return str(Path(args.runtime_dir).absolute())
    if args.verb == "pool":
        return default(f"pool-{args.worker_endpoint.rpartition(':')[2]}")
    return default(args.port)


# -- serve --------------------------------------------------------------------------------------

def choose_route(args: argparse.Namespace) -> str:
    """``--route``: "client" for ordered processors (auto), where there are local workers to
    route to; remote workers and pools pull from the shared pipeline."""
    from workers.processors import is_ordered
    shared_by = ("--ingest-only" if args.ingest_only
                 else "--worker-endpoint" if args.worker_endpoint else "")
    if args.route == "client" and shared_by:
        raise CliError(f"--route client works with this machine's workers only: with "
                       f"{shared_by}, workers elsewhere pull from a shared pipeline")
    if args.route != "auto":
        return args.route
    if is_ordered(args.processor) and not shared_by:
        return "client"
    return "any"


def config_from_args(args: argparse.Namespace) -> Config:
    from camstream.users import Users, UsersError

    if args.auth:
        try:
            users = Users.load(args.users)
        except UsersError as e:
            raise CliError(f"--auth: {e}") from None
        if not len(users):
            raise CliError(f"--auth: the users file {args.users} has no users "
                           f"(add one with: camstream users add NAME --users {args.users})")
    options = checked_processor(args)
    route = choose_route(args)
    record_dir = str(Path(args.record).absolute()) if args.record else ""
    if record_dir:
        try:
            Path(record_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"--record {args.record}: {e.strerror}") from None
        if not os.access(record_dir, os.W_OK):
            raise CliError(f"--record {args.record}: not writable")
    elif args.record_max_gb:
        raise CliError("--record-max-gb needs --record DIR")
    if bool(args.certfile) != bool(args.keyfile):
        raise CliError("--certfile and --keyfile go together")
    if args.certfile:
        import ssl
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as e:
            raise CliError(f"--certfile/--keyfile: cannot load them: {e}") from None
    web = ""
    if args.web:
        from camstream.attach.webview import web_address
        try:
            web = "%s:%d" % web_address(args.web, args.ip)
        except ValueError as e:
            raise CliError(f"--web: {e}") from None
        if args.ingest_only:
            raise CliError("--web needs this machine's bus: run 'camstream display --web' "
                           "on the pool's machine instead of with --ingest-only")
    tcp = tcp_settings(args, "connect" if args.ingest_only else "bind")
    return Config(**tcp, ip=args.ip, port=args.port, auth=args.auth, display=args.display,
                  workers=0 if args.ingest_only else args.workers,
                  users_file=str(Path(args.users).absolute()),
                  runtime_dir=runtime_dir_of(args),
                  log_level=args.log_level, max_frame_bytes=args.max_frame_size,
                  queue_depth=args.queue_depth, stop_timeout=args.stop_timeout,
                  processor=args.processor, processor_options=options,
                  record_dir=record_dir, record_max_gb=args.record_max_gb,
                  emit_results=args.emit_results, web=web, route=route, max_fps=args.max_fps,
                  max_connections_per_ip=args.max_connections_per_ip,
                  max_pixels=args.max_pixels, frame_timeout=args.frame_timeout,
                  max_queued_bytes=args.max_queued_bytes,
                  max_incomplete_bytes=args.max_incomplete_bytes,
                  incomplete_timeout=args.incomplete_timeout,
                  header_timeout=args.header_timeout, handshake_timeout=args.handshake_timeout,
                  max_pending_connections=args.max_pending_connections,
                  metrics_token=args.metrics_token,
                  metrics_trust_loopback=args.metrics_trust_loopback,
                  forget_after=args.forget_clients_after,
                  worker_timeout=args.worker_timeout, ping_interval=args.ping_interval,
                  ping_timeout=args.ping_timeout,
                  certfile=str(Path(args.certfile).absolute()) if args.certfile else "",
                  keyfile=str(Path(args.keyfile).absolute()) if args.keyfile else "")


def listen(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise CliError(f"cannot listen on {ip}:{port}: the port is in use "
                           "(another camstream? choose one with -p PORT)") from None
        raise CliError(f"cannot listen on {ip}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def claim_runtime_dir(path: str) -> int:
    """Create or check the runtime directory and lock it (camstream.rundir), or one line."""
    from camstream.bus import worker_frames
    from camstream.rundir import RuntimeDirError, claim
    try:
        return claim(path, worker_frames(9999))
    except RuntimeDirError as e:
        raise CliError(str(e)) from None


TRUE = {"1", "yes", "true", "on"}
FALSE = {"0", "no", "false", "off"}


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """``key = value`` lines (``#`` comments), keys being serve's long option names. Every
    problem is one line naming the file, the line and the key."""
    actions = {a.option_strings[-1][2:]: a for a in parser._actions
               if a.option_strings and a.option_strings[-1].startswith("--")
               and a.dest not in ("help", "config")}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"--config {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
        raise CliError(f"--config {path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}"
                       f"); is it the right file?") from None
    values: dict = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        where = f"{path}:{lineno}"
        if not sep:
            raise CliError(f"{where}: expected 'key = value', got {line!r}")
        action = actions.get(key.replace("_", "-"))
        if action is None:
            raise CliError(f"{where}: unknown key {key!r} (keys are serve's long options: "
                           f"{', '.join(sorted(actions))})")
        if action.nargs == 0:  # a switch such as auth
            if value.lower() not in TRUE | FALSE:
                raise CliError(f"{where}: {key}: expected yes or no, got {value!r}")
            values[action.dest] = value.lower() in TRUE
            continue
        try:
            converted = action.type(value) if action.type else value
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise CliError(f"{where}: {key}: {e}") from None
        if action.choices and converted not in action.choices:
            raise CliError(f"{where}: {key}: expected one of {', '.join(action.choices)}, "
                           f"got {value!r}")
        if isinstance(action, argparse._AppendAction):  # a repeatable key
            values.setdefault(action.dest, []).append(converted)
        else:
            values[action.dest] = converted
    return values


def parse_serve(argv: list[str]) -> Config:
    """Flags over the --config file over the defaults, validated into a Config."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        serve = parser._subparsers._group_actions[0].choices["serve"]
        serve.set_defaults(**read_config_file(args.config, serve))
        args = parser.parse_args(argv)
    return config_from_args(args)


def run_serve(args: argparse.Namespace) -> int:
    from camstream.supervisor.notify import Notifier
    from camstream.proc import setup_logging
    from camstream.supervisor import children
    from camstream.supervisor.arbiter import Supervisor

    argv = args.argv
    config = parse_serve(argv)
    listener = listen(config.ip, config.port)
    web_host, _, web_port = config.web.rpartition(":")
    web_listener = listen(web_host, int(web_port)) if config.web else None
    claim_runtime_dir(config.runtime_dir)
    import setproctitle
    setproctitle.setproctitle("camstream: supervisor")
    setup_logging(config.log_level)
    if config.display and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        logging.getLogger("camstream").warning(
            "--display: no screen (DISPLAY and WAYLAND_DISPLAY are unset); serving without "
            "a display (camstream display --snapshot DIR works headless)")
        config = dataclasses.replace(config, display=False)
    os.umask(0o007)  # recordings readable by the service's group (sockets: camstream.rundir)
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
    if config.ingest_only:  # no workers here: they are a pool's
        from camstream.supervisor.pool import ingest_node
        return ingest_node(config, listener, notifier, reload=lambda: parse_serve(argv)).run()
    return Supervisor(config, children.serving(config, listener, web_listener), notifier,
                      reload=lambda: parse_serve(argv)).run()


def run_pool(args: argparse.Namespace) -> int:
    from camstream.supervisor.notify import Notifier
    from camstream.supervisor.pool import pool
    from camstream.proc import setup_logging

    config = Config(workers=args.workers, runtime_dir=runtime_dir_of(args),
                    log_level=args.log_level, processor=args.processor,
                    processor_options=checked_processor(args),
                    worker_timeout=args.worker_timeout, stop_timeout=args.stop_timeout,
                    max_pixels=args.max_pixels, frame_timeout=args.frame_timeout,
                    **tcp_settings(args, "bind"))
    claim_runtime_dir(config.runtime_dir)
    import setproctitle
    setproctitle.setproctitle("camstream: pool")
    setup_logging(config.log_level)
    os.umask(0o007)
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
    return pool(config, notifier).run()


def run_worker(args: argparse.Namespace) -> int:
    from camstream.supervisor.arbiter import worker_env
    from workers.worker import run_standalone

    config = Config(workers=1, log_level=args.log_level, processor=args.processor,
                    processor_options=checked_processor(args), max_pixels=args.max_pixels,
                    frame_timeout=args.frame_timeout, **tcp_settings(args, "connect"))
    os.environ.update(worker_env(config))  # OpenCV's pixel limit is read at the first decode
    return run_standalone(config)


def run_keys(args: argparse.Namespace) -> int:
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


# -- the other verbs ----------------------------------------------------------------------------

def run_users(args: argparse.Namespace) -> int:
    from camstream.users import Users, UsersError

    try:
        users = Users.load(args.users, missing_ok=args.action == "add")
        if args.action == "list":
            for name in sorted(users.hashes):
                print(name)
            return 0
        if args.action == "remove":
            users.remove(args.name)
            users.save(args.users)
            print(f"removed {args.name} from {args.users}")
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = ask_password(args.name, args.users)
        users.add(args.name, password)
        users.save(args.users)
    except UsersError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.users}: {e.strerror}") from None
    print(f"saved {args.name} in {args.users} (a running daemon picks it up on SIGHUP)")
    return 0


def ask_password(name: str, users_file: str) -> str:
    """Twice, on the terminal; with none (a script, a service), say what to use instead."""
    hint = (f"no terminal to ask for the password on: pipe it in with --password-stdin, "
            f"e.g. echo \"$PW\" | camstream users add {name} --password-stdin --users "
            f"{users_file}")
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        if not sys.stdin.isatty():
            raise CliError(hint) from None
    try:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ")
    except EOFError:
        raise CliError(hint) from None
    return password


def run_send(args: argparse.Namespace) -> int:
    from camstream.client import send
    if not Path(args.source).is_dir():  # a folder of JPEGs is sent as it is, without OpenCV
        require_opencv()
    password = args.password or os.environ.get("CAMSTREAM_PASSWORD", "")
    return send(args, password)


def run_status(args: argparse.Namespace) -> int:
    from camstream.client import print_status, tls_verify
    url = args.url or f"http://127.0.0.1:{args.port}"
    auth = None
    if args.username is not None:
        auth = (args.username, args.password or os.environ.get("CAMSTREAM_PASSWORD", ""))
    return print_status(url, as_json=args.json, verify=tls_verify(args), auth=auth)


def run_systemd(args: argparse.Namespace) -> int:
    from camstream.supervisor.systemd import recipe
    print(recipe())
    return 0


def run_reload(args: argparse.Namespace) -> int:
    from camstream.supervisor.systemd import ReloadError, reload
    try:
        reload(args.pid)
    except ReloadError as e:
        raise CliError(str(e)) from None
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from camstream.client import demo
    return demo(args)


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
    except CliError as e:
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
