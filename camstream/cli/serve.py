"""``camstream serve``: the daemon's flags, checked into one frozen Config (flags over the
``--config`` file over the defaults), then the daemon started (camstream.supervisor.runtime)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from camstream.cli import configfile
from camstream.cli.args import (CliError, Parser, add_frame_limits, add_log_level,
                                add_processor, add_runtime_dir, add_stop_timeout,
                                add_tcp_arguments, add_tls_files, add_users_file, add_workers,
                                add_worker_timeout, check_tls_files, port_arg, positive_float,
                                positive_int, runtime_dir_of, size_arg, verb_parser)
from camstream.cli.checks import checked_processor, tcp_settings
from camstream.config import Config


HELP = "run the daemon (ingest, workers, bus)"
DESCRIPTION = ("Run the daemon: a socket.io ingest process, a pool of OpenCV workers and the "
               "bus, under one supervisor.")


def add_parser(verbs: Any) -> None:
    add_arguments(verbs.add_parser("serve", help=HELP, description=DESCRIPTION))


def serve_parser() -> Parser:
    """serve's flags alone, as ``camstream serve`` parses them (SIGHUP parses them again)."""
    return verb_parser("serve", DESCRIPTION, add_arguments)


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", metavar="FILE",
                       help="read settings from FILE (key = value lines, the long option "
                       "names; see systemd/camstream.conf); flags given here override it")
    add_service_flags(serve)
    add_limit_flags(serve)
    add_timing_flags(serve)
    add_processing_flags(serve)
    add_tcp_arguments(serve, "serve")
    serve.set_defaults(run=run, verb="serve")


def add_service_flags(serve: argparse.ArgumentParser) -> None:
    """Where it listens, who may stream, what else it runs."""
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
    add_workers(serve)
    add_users_file(serve, "users file, managed with 'camstream users' (default: %(default)s)")
    add_runtime_dir(serve)
    add_log_level(serve)


def add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """What one client, one address and all connections together may hold."""
    serve.add_argument("--max-frame-size", type=size_arg, default="4MiB", metavar="SIZE",
                       help="largest JPEG accepted; larger frames are refused with a reason "
                       "(default: 4MiB, enough for 1280x960 at quality 100)")
    serve.add_argument("--queue-depth", type=positive_int, default=1, metavar="N",
                       help="frames a client may have waiting for a worker; when full the "
                       "oldest is dropped, so the newest frames win (default: %(default)s)")
    add_stop_timeout(serve, "bound on a graceful stop, drain included (default: %(default)s)")
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


def add_timing_flags(serve: argparse.ArgumentParser) -> None:
    """Who sees client names in /metrics, and when silence means gone."""
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
    add_worker_timeout(serve, "a worker or ingest silent this long is killed and replaced "
                       "(default: %(default)s)")
    serve.add_argument("--ping-interval", type=positive_float, default=25.0, metavar="SECONDS",
                       help="heartbeat interval told to clients (default: %(default)s)")
    serve.add_argument("--ping-timeout", type=positive_float, default=20.0, metavar="SECONDS",
                       help="a client silent this long past a heartbeat is dropped "
                       "(default: %(default)s)")
    add_tls_files(serve, "serve https/wss with this certificate (PEM; with --keyfile)",
                  "the certificate's private key (PEM)")


def add_processing_flags(serve: argparse.ArgumentParser) -> None:
    """What the workers do with frames, and what is kept of them."""
    add_processor(serve, "what workers do with each frame: a built-in (stats, faces, "
                  "motion, edges), an installed entry point (group camstream.processors) "
                  "or module:attr (default: %(default)s)",
                  "an option for the processor, e.g. --processor-opt neighbors=3; "
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


# -- checked into a Config (no side effects: SIGHUP runs this again) ----------------------------

def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` (``serve`` and its flags): flags over the --config file over the defaults."""
    parser = serve_parser()
    args = parser.parse_args(argv[1:])
    if args.config:
        parser.set_defaults(**configfile.read(args.config, parser.flags))
        args = parser.parse_args(argv[1:])
    return args


def parse_serve(argv: list[str]) -> Config:
    """``argv`` validated into a Config."""
    return config_from_args(parse_serve_args(argv))


def checked_users(args: argparse.Namespace) -> None:
    """With --auth: a users file that loads and holds somebody."""
    from camstream.users import Users, UsersError
    try:
        users = Users.load(args.users)
    except UsersError as e:
        raise CliError(f"--auth: {e}") from None
    if not len(users):
        raise CliError(f"--auth: the users file {args.users} has no users "
                       f"(add one with: camstream users add NAME --users {args.users})")


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


def checked_web(args: argparse.Namespace) -> str:
    """``--web`` as HOST:PORT ("" without it)."""
    if not args.web:
        return ""
    from camstream.attach.webview import web_address
    try:
        web = "%s:%d" % web_address(args.web, args.ip)
    except ValueError as e:
        raise CliError(f"--web: {e}") from None
    if args.ingest_only:
        raise CliError("--web needs this machine's bus: run 'camstream display --web' "
                       "on the pool's machine instead of with --ingest-only")
    return web


def absolute(path: str) -> str:
    return str(Path(path).absolute()) if path else ""


def config_from_args(args: argparse.Namespace) -> Config:
    if args.auth:
        checked_users(args)
    options = checked_processor(args)
    route = choose_route(args)
    if args.record_max_gb and not args.record:
        raise CliError("--record-max-gb needs --record DIR")
    check_tls_files(args.certfile, args.keyfile)
    web = checked_web(args)
    tcp = tcp_settings(args, "connect" if args.ingest_only else "bind")
    return Config(**tcp, ip=args.ip, port=args.port, auth=args.auth, display=args.display,
                  workers=0 if args.ingest_only else args.workers,
                  users_file=absolute(args.users), runtime_dir=runtime_dir_of(args),
                  log_level=args.log_level, max_frame_bytes=args.max_frame_size,
                  queue_depth=args.queue_depth, stop_timeout=args.stop_timeout,
                  processor=args.processor, processor_options=options,
                  record_dir=absolute(args.record), record_max_gb=args.record_max_gb,
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
                  certfile=absolute(args.certfile), keyfile=absolute(args.keyfile))


# -- the daemon's start -------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from camstream.supervisor import runtime

    argv = args.argv
    given = parse_serve_args(argv)
    config = config_from_args(given)
    if config.record_dir:
        runtime.make_record_dir(config.record_dir, given.record)
    if config.certfile:
        runtime.load_tls(config.certfile, config.keyfile)
    listener = runtime.listen(config.ip, config.port)
    web_host, _, web_port = config.web.rpartition(":")
    web_listener = runtime.listen(web_host, int(web_port)) if config.web else None
    runtime.claim_runtime_dir(config.runtime_dir)
    runtime.become("supervisor", config.log_level)
    if config.display and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        logging.getLogger("camstream").warning(
            "--display: no screen (DISPLAY and WAYLAND_DISPLAY are unset); serving without "
            "a display (camstream display --snapshot DIR works headless)")
        config = dataclasses.replace(config, display=False)
    notifier = runtime.notifier()
    if config.ingest_only:  # no workers here: they are a pool's
        from camstream.supervisor.pool import ingest_node
        return ingest_node(config, listener, notifier, reload=lambda: parse_serve(argv)).run()
    from camstream.supervisor import children
    from camstream.supervisor.arbiter import Supervisor
    return Supervisor(config, children.serving(config, listener, web_listener), notifier,
                      reload=lambda: parse_serve(argv)).run()
