"""Ingest: camstream's front door, one gevent process.

Speaks socket.io to the clients, authenticates them, stamps each frame with a header and hands
it to the dispatcher, which never blocks a handler. It never decodes a frame. It also serves
``/healthz`` and ``/metrics`` on the same port, from counters the workers report on the bus.

Handlers (camstream.ingest.handlers) run inline in each connection's reading greenlet
(``async_handlers=False``): a greenlet per event would let a flooding client queue without
bound. Each transport yields after each event it handles, because a gevent socket read does
not yield while data is waiting, so a fast client would otherwise keep the loop to itself.
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time

import gevent
import gevent.event
import gevent.socket
import prometheus_client
import socketio
import zmq as zmq_plain
import zmq.green as zmq

from camstream import bus, proc, wire
from camstream.ingest import camerapage, httpguard, wsfast
from camstream.ingest.eio3 import transport as legacy
from camstream.ingest.eio4 import server as sioserver
from camstream.config import Config
from camstream.ingest.dispatch import Dispatcher
from camstream.ingest.handlers import NOT_CONNECTED, UNHANDLED, Conn, Handlers
from camstream.ingest.limits import ConnectionCount
from camstream.ingest.routing import Router
from camstream.rundir import RuntimeDirError
from camstream.ingest.ledger import Ledger, LedgerCollector
from camstream.users import Users, UsersError, check_name

log = logging.getLogger("camstream.ingest")

HEARTBEAT_INTERVAL = 0.5
RESULT_ERRORS_LOGGED: set[type] = set()  # --emit-results: kinds of failure logged once


def run_in_threadpool(fn, *args):
    """A CPU-heavy call (a password hash) in the hub's thread pool: other connections go on."""
    return gevent.get_hub().threadpool.apply(fn, args)


class Ingest(Handlers):
    """The handlers (camstream.ingest.handlers) on gevent and ZeroMQ: the frame pipeline, the
    event bus, the heartbeat and the HTTP endpoints."""

    def __init__(self, config: Config, users: Users, ctx: zmq.Context,
                 restarted: bool = False) -> None:
        ledger = Ledger(restarted)
        ledger.own_clients_only = config.ingest_only
        ledger.forget_after = config.forget_after
        if not config.ingest_only:  # the pool's count comes with its first report
            ledger.workers_configured = config.workers
        self.on_heartbeat: list = []  # what else runs twice a second
        self.serving = False
        # tcp (scaling out): frames offered to remote workers, or sent to a pool's streamer
        offer, self.to = bus.offered(config), bus.reached(config)
        self.binds = bus.IpcBinds()  # checked by the heartbeat: a removed file is bound again
        self.zap = offer.curve.authenticator(ctx) if offer else None  # before the tcp bind
        # plain sockets: PUB never blocks, stats are polled, and the pipeline is sent to
        # without blocking, its wait for room green (Dispatcher.hand_over); pyzmq's gevent
        # sockets cost 20 us more per send (a getsockopt and wake-ups)
        plain = zmq_plain.Context.shadow(ctx.underlying)
        if config.route == "client":  # one pipeline per local worker (camstream.ingest.routing)
            self.frames_push = None
            router = Router(expected=config.workers)
            ledger.owners = router.owner  # shown in /healthz
        else:
            self.frames_push = bus.frames_push(plain, config.runtime_dir, config.worker_hwm,
                                               offer=offer, to=self.to, binds=self.binds)
            router = None
        # an ingest node also publishes on its supervisor's local bus: its heartbeat does not
        # depend on the pool being there
        self.bus_pub = bus.bus_pub(plain, config.runtime_dir, to=self.to,
                                   local=config.ingest_only)
        self.stats_sub = bus.bus_sub(plain, config.runtime_dir, wire.STATS, hwm=10000,
                                     to=self.to, local=config.ingest_only)
        if config.ingest_only:
            ledger.pool_endpoint = config.worker_endpoint
        self.pool_was_missing = False
        self.dispatcher = Dispatcher(
            self.frames_push, self.bus_pub, config.queue_depth, router=router,
            worker_push=lambda i: bus.worker_push(plain, config.runtime_dir, i,
                                                  config.worker_hwm, self.binds))
        super().__init__(config, users, ledger, self.dispatcher, self.bus_pub.send_multipart,
                         later=gevent.spawn_later, blocking=run_in_threadpool, pause=gevent.sleep)
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(LedgerCollector(self.ledger))
        self.anonymous_registry = prometheus_client.CollectorRegistry()  # no client names
        self.anonymous_registry.register(LedgerCollector(self.ledger, names=False))

    # -- background greenlets ----------------------------------------------------------------

    def read_stats(self) -> None:
        """Take the counters workers and supervisor published since the last call. Polled
        from the heartbeat on a plain (not gevent) socket: a greenlet woken for each message
        cost a third of ingest's time under load."""
        for _, report in bus.drain(self.stats_sub, wire.Stats.unpack, malformed=self._malformed):
            try:
                if report.get("role") == "worker":
                    self.ledger.worker_report(report)
                    if self.dispatcher.router and not report.get("remote"):
                        self.dispatcher.worker_seen(int(report["index"]),
                                                    bool(report.get("stopping")))
                elif report.get("role") == "supervisor" and report.get("pid") == os.getppid() \
                        and report.get("host", proc.HOST) == proc.HOST:  # a shared bus
                    self.ledger.supervisor = report
                elif report.get("role") == "pool":
                    self.ledger.pool_report(report)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                self._malformed(e)

    @staticmethod
    def _malformed(e: Exception) -> None:
        log.warning("ignoring a malformed stats message: %r", e)

    def close(self, linger_ms: int = 0) -> None:
        """What ``ctx.destroy()`` cannot close: the sockets on the plain shadow context (it
        does not know them, and its ``term`` waits for them forever) and the ZAP thread.
        Frames already in the pipeline have ``linger_ms`` to reach a worker."""
        for lane in self.dispatcher.all_lanes():
            lane.room.close()  # its watcher first: the fd is ZeroMQ's, closed with the socket
            lane.push.close(linger=linger_ms)
        self.stats_sub.close(linger=0)
        self.bus_pub.close(linger=200)  # the last events still leave
        if self.zap is not None:
            self.zap.stop()

    def listen_results(self, ctx: zmq.Context) -> None:
        """--emit-results: each worker result goes back, as a ``result`` event, to the
        connection that sent the frame (header.session). A greenlet of its own on the bus,
        off the frame path; a result whose connection has gone is skipped."""
        sub = bus.bus_sub(ctx, self.config.runtime_dir, wire.PROCESSED, hwm=1000, to=self.to)
        handled = 0
        while True:
            try:
                result = bus.receive(sub, wire.Result.unpack, copy=False)
                header = result.header
                conn = self.numbered.get(header.session)
                if conn is not None and conn.name == header.client:
                    conn.emit("result", result.result)
            except Exception as e:  # a bad message or a closing connection: skip it
                if type(e) not in RESULT_ERRORS_LOGGED:
                    RESULT_ERRORS_LOGGED.add(type(e))
                    log.warning("a result could not be sent to its client: %r (further "
                                "errors of this kind are not logged)", e)
            handled += 1
            if handled % 16 == 0:
                gevent.sleep(0)  # recv does not yield while results are waiting

    def check_endpoints(self) -> None:
        """The pipeline's socket files: one removed is bound again; one that cannot be is a
        reason for /healthz to say degraded (and a log line)."""
        try:
            self.binds.rebind()
            self.ledger.problems.pop("ipc", None)
        except (zmq.ZMQError, OSError, RuntimeDirError) as e:
            if "ipc" not in self.ledger.problems:
                log.error("cannot bind the frame pipeline's ipc endpoint again: %s", e)
            self.ledger.problems["ipc"] = f"frame pipeline endpoint gone and not rebound: {e}"

    def check_pool(self) -> None:
        """--ingest-only: say when the pool goes missing and when it is back. A missing pool
        is not a hung ingest: clients stay connected, their frames are dropped and counted."""
        missing = self.ledger.pool_missing_s() is not None
        if missing and not self.pool_was_missing:
            log.warning("waiting for the pool at %s (nothing heard from it for %.0f s: "
                        "'camstream pool' stopped, or unreachable); clients stay connected, "
                        "their frames are dropped and counted meanwhile",
                        self.config.worker_endpoint, self.ledger.pool_missing_s())
        elif self.pool_was_missing and not missing:
            log.info("the pool at %s answers again", self.config.worker_endpoint)
        self.pool_was_missing = missing

    def heartbeat(self) -> None:
        """Publish ingest's totals; the supervisor takes them as proof that ingest answers."""
        while True:
            self.read_stats()
            self.check_endpoints()
            self.check_pool()
            self.ledger.checkpoint()
            for task in self.on_heartbeat:
                task()
            if self.dispatcher.router:
                self.dispatcher.check()
            self.dispatcher.release_overdue(time.monotonic())
            health = self.ledger.health()
            self.bus_pub.send_multipart(wire.Stats("ingest", {
                "role": "ingest", "pid": os.getpid(), "host": proc.HOST,
                "totals": health["totals"],
                "clients": sum(1 for n in self.ledger.connected.values() if n),
                "dropped": {name: row["dropped"] for name, row in health["clients"].items()},
                "serving": self.serving, "draining": self.draining}).pack())
            gevent.sleep(HEARTBEAT_INTERVAL)

    # -- HTTP --------------------------------------------------------------------------------

    def may_see_names(self, environ) -> bool:
        """Under -a, client names (user names: an attacker's list of whom to guess) are for
        callers who prove who they are: HTTP basic auth of a user of the users file (through
        the login throttle), ``Authorization: Bearer`` --metrics-token, or a loopback
        address with --metrics-trust-loopback. Without -a names are not secrets."""
        if not self.config.auth:
            return True
        address = environ.get("REMOTE_ADDR", "?")
        if self.config.metrics_trust_loopback:
            try:
                if ipaddress.ip_address(address).is_loopback:
                    return True
            except ValueError:
                pass
        kind, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if kind.lower() == "bearer" and self.config.metrics_token:
            return hmac.compare_digest(credentials.strip().encode(),
                                       self.config.metrics_token.encode())
        if kind.lower() == "basic":
            try:
                name, _, password = base64.b64decode(credentials.strip(), validate=True) \
                    .decode("utf-8").partition(":")
                name = check_name(name)
            except (ValueError, UsersError):
                return False
            return self.check_password(address, name, password)
        return False

    def http_app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/metrics"):
            self.read_stats()
        names = path in ("/healthz", "/metrics") and self.may_see_names(environ)
        if path == "/healthz":
            body = json.dumps(self.ledger.health(names), indent=1).encode()
            ctype = "application/json"
        elif path == "/metrics":
            body = prometheus_client.generate_latest(
                self.registry if names else self.anonymous_registry)
            ctype = prometheus_client.CONTENT_TYPE_LATEST
        elif path == "/":
            body = b"camstream is running: see /healthz and /metrics\n"
            ctype = "text/plain"
        elif camerapage.page(path) is not None:  # static, from memory (camstream.ingest.camerapage)
            body, ctype = camerapage.page(path)
            start_response("200 OK", [("Content-Type", ctype),
                                      ("Content-Length", str(len(body)))] + camerapage.HEADERS)
            return [body]
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]


def limit_websockets(app, limit: int, ledger: Ledger | None = None):
    """Open websockets per address, capped before socket.io sees them: a refused socket.io
    connect alone would leave the transport open. Refusals are logged once per address and
    counted in ``ledger`` (/healthz refused_connections)."""
    count = ConnectionCount(limit)
    if ledger is not None:
        ledger.connection_limits.append(count)

    def middleware(environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is None:
            return app(environ, start_response)
        address = environ.get("REMOTE_ADDR", "?")
        if not count.acquire(address):
            if count.first_refusal(address):
                log.warning("refusing websockets from %s: it has %d open "
                            "(--max-connections-per-ip)", address, limit)
            ws.close(1008, b"too many connections from this address")
            return []
        try:
            return app(environ, start_response)
        finally:
            count.release(address)
    return middleware


def socketio_server(ingest: Ingest, config: Config) -> socketio.Server:
    """The current protocol (Engine.IO 4 / Socket.IO 5), served by python-socketio."""
    sio = sioserver.Server(
        async_mode="gevent", async_handlers=False, cors_allowed_origins="*",
        ping_interval=config.ping_interval, ping_timeout=config.ping_timeout,
        # refuse an oversize frame politely up to 1.5x the limit (base64 over polling adds a
        # third); only beyond that does the transport drop the connection
        max_http_buffer_size=ingest.max_message,
        serializer=sioserver.BoundedPacket, logger=False, engineio_logger=False)
    sio.incomplete = ingest.incomplete  # bytes held for events awaiting attachments
    sio.hits = ingest.ledger.limit_hits
    ingest.on_heartbeat.append(sio.expire_incomplete)

    @sio.event
    def connect(sid, environ, auth=None):
        if ingest.draining:  # an Engine.IO session opened just before the stop: it is closed
            return None      # with the others; a refusal here would tell it not to reconnect
        conn = Conn(sid, environ.get("REMOTE_ADDR", "?"),
                    lambda event, *args: sio.emit(event, args if len(args) != 1 else args[0],
                                                  to=sid),
                    lambda: sio.disconnect(sid))
        if not ingest.connect(conn):
            raise socketio.exceptions.ConnectionRefusedError("too many connections")
        environ["camstream.connection"] = conn.label  # for sioserver's log lines
        if isinstance(auth, dict) and "username" in auth:
            if not ingest.login(conn, auth.get("username"), auth.get("password")):
                ingest.disconnect(conn, "login failed")
                # the wait the throttle now imposes, as the error's data (err.data in JS):
                # a client can say when to try again instead of hammering
                raise socketio.exceptions.ConnectionRefusedError("authentication failed", {
                    "retry_in_s": ingest.login_wait(conn.address, auth.get("username"))})

    @sio.event
    def disconnect(sid, reason=None):
        conn = ingest.conns.get(sid)
        if conn is not None:
            ingest.disconnect(conn, str(reason or ""))

    def on(event: str):
        """python-socketio's handler for one event of the table: it runs the handler, then
        yields (after a refused frame too)."""
        def handler(sid, *args):
            conn = ingest.conns.get(sid)
            try:
                if conn is None:  # not (or no longer) connected
                    return NOT_CONNECTED.get(event)
                result = ingest.on_event(conn, event, args)
                return None if result is UNHANDLED else result
            finally:
                gevent.sleep(0)
        return handler

    for event in ingest.events:
        sio.on(event, on(event))

    def frame_acked_later(sid, args: tuple, ack) -> None:
        """``frame`` with its ack deferred (sioserver: the lean websocket path, and every
        ``frame`` that asks for an ack); it yields now and then, as every handler."""
        conn = ingest.conns.get(sid)
        try:
            if conn is None:
                ack(NOT_CONNECTED["frame"])
            else:
                ingest.on_frame(conn, args, ack)
        finally:
            wsfast.yield_now_and_then()
    sio.on_frame = frame_acked_later

    @sio.on("*")
    def unknown(event, sid, *args):
        """Logged once per connection; no ack even when one is asked for, as the reference
        server (no handler, no answer)."""
        conn = ingest.conns.get(sid)
        if conn:
            ingest.on_unknown(conn, event)
        return sio.not_handled

    return sio


def refuse_handshakes_while(draining, app):
    """While ingest drains (SIGTERM), a new session is refused with ``503`` (and the HTTP
    connection closed: :class:`Handler`). New TCP connections are already refused (the
    listening socket is closed); this is for a client whose keep-alive connection is still
    open. Every socket.io client retries after a 503 (tests/integration/test_conformance.py); a Socket.IO
    connect error would tell JS 4.x to give up."""
    def middleware(environ, start_response):
        if draining() and environ.get("PATH_INFO", "").startswith("/socket.io") and \
                "sid=" not in environ.get("QUERY_STRING", ""):
            body = b"camstream is stopping: try again in a moment\n"
            start_response("503 Service Unavailable", [  # Handler adds Connection: close
                ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                ("Retry-After", "1")])
            return [body]
        return app(environ, start_response)
    return middleware


def close_transports(sio: sioserver.Server, old: legacy.LegacyServer) -> int:
    """The end of a graceful stop: every client's transport is closed with no Socket.IO
    disconnect (``41``) nor Engine.IO close packet, which clients take as "sent away" and
    never reconnect; a closed transport they retry, as after a crash. How many were closed."""
    return sio.eio.drop_all() + old.drop_all()


class Handler(httpguard.GuardedHandler):
    """gevent-websocket's request handler, closing the connection after a refused websocket
    upgrade (426, 400) and a 503 (the drain), and saying so (``Connection: close``, a header
    WSGI apps may not set). gevent-websocket closed after a refused upgrade without saying it:
    an HTTP client that keeps connections alive (node-fetch on Node 20) then sent its next
    request into the closed socket and got "socket hang up"."""

    READ_BUFFER = 1024  # bytes: a request's head, a websocket frame's header and text packet

    def __init__(self, sock, address, server, rfile=None):
        """The connection's read buffer at 1 KB, not io's 8 KB: it is held for the life of
        every connection (a sixth of an idle one's memory), and what is larger (a frame's
        payload, a POST's body) is read past it, straight into its own buffer."""
        super().__init__(sock, address, server,
                         rfile if rfile is not None else sock.makefile("rb", self.READ_BUFFER))

    def start_response(self, status, headers, exc_info=None):
        refused_upgrade = not status.startswith("101") and \
            self.environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if (refused_upgrade or status.startswith("503")) and \
                not any(name.lower() == "connection" for name, _ in headers):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)


# bytes the kernel holds for a connection's unsent data (it doubles this): what ingest sends
# is small (acks, events, polls' answers), and Linux would otherwise let the buffer of a client
# that reads nothing grow to 4 MB, kernel memory per connection
SEND_BUFFER = 256 * 1024


class Server(httpguard.GuardedServer):
    """gevent's WSGI server, with a failed TLS handshake (a plain-http request to the https
    port, a port scanner) one log line at most every ten seconds, not a traceback each; and
    each connection without Nagle's delay (TCP_NODELAY, as Node's http server): pywsgi writes
    a long-poll answer in pieces, and each small piece after the first waited for the client's
    delayed ACK, 40 ms per poll on Linux; its send buffer bounded (SEND_BUFFER)."""

    quiet_until = 0.0

    def do_read(self):
        accepted = super().do_read()
        if accepted is not None:
            try:
                accepted[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                accepted[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:  # already reset by the peer: handled as any dead connection
                pass
        return accepted

    def wrap_socket_and_handle(self, client_socket, address):
        try:
            return super().wrap_socket_and_handle(client_socket, address)
        except (ssl.SSLError, OSError) as e:
            client_socket.close()
            if time.monotonic() >= self.quiet_until:
                self.quiet_until = time.monotonic() + 10
                log.warning("TLS handshake with %s failed: %s (such failures are logged at "
                            "most every 10 s)", address[0], getattr(e, "reason", None) or e)


def raise_file_limit() -> None:
    """Each connection is a file descriptor: take the hard limit (a unit's LimitNOFILE=)
    rather than the soft one a shell leaves (often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)


def main() -> int:
    config = proc.child_start("ingest")
    listener = gevent.socket.socket(fileno=int(sys.argv[2]))  # the supervisor's, inherited
    try:
        users = Users.load(config.users_file, missing_ok=not config.auth)
    except UsersError as e:
        log.error("%s", e)
        return 2
    ctx = zmq.Context()
    ingest = Ingest(config, users, ctx, restarted=int(sys.argv[3]) > 0)
    # websocket messages bounded before their payload is read (counted in /healthz limits)
    wsfast.install(ingest.max_message, ingest.ledger.limit_hits)
    sio = socketio_server(ingest, config)
    old = legacy.wrap(socketio.WSGIApp(sio, ingest.http_app), ingest, config)
    app = limit_websockets(old, config.max_connections_per_ip, ingest.ledger)
    app = refuse_handshakes_while(lambda: ingest.draining, app)
    tls = {"certfile": config.certfile, "keyfile": config.keyfile} if config.certfile else {}
    server = Server(listener, app, handler_class=Handler, log=None,
                    error_log=logging.getLogger("camstream.http"),
                    header_timeout=config.header_timeout,
                    handshake_timeout=config.handshake_timeout,
                    max_pending=config.max_pending_connections, hits=ingest.ledger.limit_hits,
                    **tls)
    raise_file_limit()
    # gevent-websocket logs every HTTP request at INFO (each long-poll): only in debug
    server.logger = logging.getLogger("camstream.http.access")
    if config.log_level != "debug":
        server.logger.setLevel(logging.WARNING)

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, lambda: None)  # the supervisor handles Ctrl-C
    gevent.signal_handler(signal.SIGHUP, ingest.reload_users)
    tasks = [gevent.spawn(ingest.heartbeat)]
    if ingest.dispatcher.shared:  # else one greenlet per worker's lane, as workers report
        tasks.append(gevent.spawn(ingest.dispatcher.run))
    if config.emit_results:
        tasks.append(gevent.spawn(ingest.listen_results, ctx))
    server.start()
    ingest.serving = True
    log.info("serving socket.io on %s://%s:%d (auth %s, %d users)",
             "https" if tls else "http", config.ip, config.port,
             "on" if config.auth else "off", len(users))
    if config.route == "client":
        log.info("routing each client's frames to one worker (--route client: %s needs "
                 "them in order)", config.processor)
    stop.wait()

    log.info("stopping: no new connections, draining accepted frames")
    ingest.draining = True
    server.close()
    left = ingest.dispatcher.drain(time.monotonic() + config.stop_timeout / 2)
    if left:
        log.warning("%d accepted frames could not be dispatched before the stop bound", left)
    closed = close_transports(sio, old)
    log.info("closed %d client connections (they reconnect when camstream is back)", closed)
    gevent.sleep(0.1)  # the closes and the last poll answers leave
    gevent.killall(tasks + ingest.dispatcher.greenlets)
    linger_ms = int(config.stop_timeout / 2 * 1000)  # what is in flight still leaves
    ingest.close(linger_ms)
    ctx.destroy(linger=linger_ms)
    log.info("stopped")
    return 0


