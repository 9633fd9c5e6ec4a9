"""``camstream display --web [HOST:]PORT``: the live view in a browser, a display process.

A **subscriber** on the bus like the X display (frames through :mod:`camstream.attach.subscribe`),
that serves HTTP instead of drawing windows. It never runs inside ingest and never sends on the
bus, so whatever the browsers do cannot reach ingest.

Newest frame only, for every viewer, by construction: nothing is ever queued per viewer. A
page asks ``/api/state`` (a long poll answered as soon as something newer than what it has
exists) and then fetches the newest JPEG of each tile whose frame changed, as it arrived
(never decoded or re-encoded here). A slow tab, a phone on a bad network, a tab in the
background or a browser frozen by SIGSTOP simply asks less often; one thread per connection
blocks on its own socket, never on the bus thread or another viewer.

Under ``-a`` every page and API needs a login with a user of the users file: a form that sets
a session cookie, or HTTP basic auth (for scripts). A wrong password is throttled like a
socket.io login (:class:`camstream.ingest.limits.LoginThrottle`). ``--certfile`` serves https.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import http.server
import json
import logging
import math
import os
import secrets
import signal
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources

from camstream import bus, wire
from camstream.ingest.limits import ConnectionCount, LoginThrottle
from camstream.attach.subscribe import Frame, StreamRate, Subscription
from camstream.cli.args import CliError, add_tls_files, add_users_file, check_tls_files
from camstream.users import Users, UsersError, check_name

log = logging.getLogger("camstream.webview")

FRAME_HWM = 16          # frames the view may hold unread; the proxy drops the rest for it
IDLE = 5.0              # seconds without frames before a client's tile goes
LONG_POLL = 10.0        # seconds a state request waits for something newer
SESSION_TTL = 12 * 3600  # seconds a login lasts
MAX_CONNECTIONS = 256   # open HTTP connections at most (a thread each)
MAX_PER_ADDRESS = 64    # ... and from one address, so that one cannot hold them all
BASIC_TTL = 60.0        # seconds a checked basic-auth header is trusted without scrypt again
SOCKET_TIMEOUT = 30.0   # seconds a connection may stay silent (slow TLS handshakes included)
VIEWER_SEEN = 5.0       # a viewer that asked for state this recently counts as watching
KINDS = ("raw", "processed")
COOKIE = "camstream_view"
STATIC = {"view.js": "text/javascript", "view.css": "text/css", "index.html": "text/html",
          "login.html": "text/html"}


def web_address(text: str, default_host: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = default_host
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected [HOST:]PORT with a port 1-65535, got {text!r}")
    return host, int(port)


def static_file(name: str) -> bytes:
    """A file of the page (camstream/static/), packaged with camstream."""
    return resources.files("camstream").joinpath("static", name).read_bytes()


# -- what the view knows --------------------------------------------------------------------------

@dataclass
class Tile:
    """One client: its newest frame of each kind and the figures shown under it."""

    name: str
    newest: dict[str, Frame] = field(default_factory=dict)   # kind -> frame
    rate: StreamRate = field(default_factory=StreamRate)
    last_arrival: float = 0.0

    def take(self, frame: Frame, now: float) -> None:
        kind = "processed" if frame.processed else "raw"
        self.newest[kind] = frame
        if kind == "raw" or "raw" not in self.newest:
            self.rate.update(frame.seq, now)
        self.last_arrival = now

    def shown(self, kind: str) -> Frame | None:
        """What a viewer of ``kind`` sees: that kind's newest frame, else the other's."""
        return self.newest.get(kind) or next(iter(self.newest.values()), None)


class View:
    """The tiles, their version numbers (one per kind) and the viewers waiting for a change."""

    def __init__(self) -> None:
        self.tiles: dict[str, Tile] = {}
        self.dropped: dict[str, int] = {}       # ingest's per-client dropped counters
        self.left_ns: dict[str, int] = {}       # frames received before a leave are stale
        self.versions = dict.fromkeys(KINDS, 0)
        self.changed = threading.Condition()
        self.viewers: dict[str, float] = {}     # viewer id -> monotonic time last seen
        self._cache: dict[str, tuple[int, bytes]] = {}
        self.login = False                      # viewers log in (-a): the page offers log out

    def take(self, frame: Frame) -> None:
        now = time.monotonic()
        with self.changed:
            stale = self.left_ns.get(frame.client)
            if stale is not None:
                if frame.recv_ns <= stale:
                    return
                del self.left_ns[frame.client]
            tile = self.tiles.get(frame.client)
            if tile is None:
                tile = self.tiles[frame.client] = Tile(frame.client)
                log.info("%s: showing its stream", frame.client)
            tile.take(frame, now)
            self._bump("processed" if frame.processed else "raw")

    def leave(self, name: str) -> None:
        with self.changed:
            self.left_ns[name] = time.time_ns()
            if self.tiles.pop(name, None) is not None:
                log.info("%s: left; its tile goes", name)
                self._bump(*KINDS)

    def expire(self) -> None:
        now = time.monotonic()
        with self.changed:
            for name, tile in list(self.tiles.items()):
                if now - tile.last_arrival > IDLE:
                    del self.tiles[name]
                    log.info("%s: no frames for %g s; its tile goes", name, IDLE)
                    self._bump(*KINDS)

    def set_dropped(self, dropped: dict) -> None:
        with self.changed:
            self.dropped.update((k, v) for k, v in dropped.items() if isinstance(v, int))

    def _bump(self, *kinds: str) -> None:
        for kind in kinds:
            self.versions[kind] += 1
        self.changed.notify_all()

    def wait(self, kind: str, since: int, timeout: float) -> bytes:
        """The state of ``kind`` as JSON once its version is past ``since`` (or at timeout)."""
        with self.changed:
            self.changed.wait_for(lambda: self.versions[kind] > since, timeout)
            version = self.versions[kind]
            cached = self._cache.get(kind)
            if cached is not None and cached[0] == version:
                return cached[1]
            now_ns = time.time_ns()
            clients = []
            for name in sorted(self.tiles):
                tile = self.tiles[name]
                frame = tile.shown(kind)
                if frame is None:
                    continue
                clients.append({
                    "name": name, "seq": frame.seq,
                    "kind": "processed" if frame.processed else "raw",
                    "fps": None if tile.rate.fps is None else round(tile.rate.fps, 1),
                    "latency_ms": round(frame.latency_ms, 1),
                    "age_ms": round((now_ns - frame.arrived_ns) / 1e6),
                    "dropped": self.dropped.get(name), "result": frame.result,
                    "annotated": frame.annotated, "has_image": bool(len(frame.jpeg))})
            body = json.dumps({"version": version, "kind": kind, "clients": clients,
                               "login": self.login},
                              separators=(",", ":")).encode()
            self._cache[kind] = (version, body)
            return body

    def jpeg(self, name: str, kind: str) -> tuple[int, bytes] | None:
        with self.changed:
            tile = self.tiles.get(name)
            frame = tile.shown(kind) if tile else None
            if frame is None or not len(frame.jpeg):
                return None
            return frame.seq, frame.jpeg_bytes()

    def saw_viewer(self, viewer: str) -> None:
        now = time.monotonic()
        with self.changed:
            self.viewers[viewer[:64]] = now
            if len(self.viewers) > 10000:   # bound what made-up ids can cost
                self.viewers = {k: t for k, t in self.viewers.items()
                                if now - t < VIEWER_SEEN}

    def viewer_count(self) -> int:
        now = time.monotonic()
        with self.changed:
            return sum(1 for t in self.viewers.values() if now - t < VIEWER_SEEN)


def read_bus(view: View, runtime_dir: str, stop: threading.Event,
             client: str | None = None) -> None:
    """The bus thread: frames and join/leave into ``view`` (one client's only, with
    ``client``), ingest's dropped counters too."""
    import zmq
    frames = Subscription(runtime_dir, client, raw=True, processed=True, events=True,
                          hwm=FRAME_HWM, check=False)
    stats = bus.bus_sub(frames.ctx, runtime_dir, wire.topic(wire.STATS, "ingest"), hwm=100)
    frames.poller.register(stats, zmq.POLLIN)
    log.info("attached to %s", runtime_dir)
    try:
        while not stop.is_set():
            frames.poll(0.2)
            for event in frames.events():
                if event.kind == "leave":
                    view.leave(event.client)
            for frame in frames.drain():
                view.take(frame)
            for event in frames.events():  # a leave that came while draining frames wins
                if event.kind == "leave":
                    view.leave(event.client)
            for _, report in bus.drain(stats, wire.Stats.unpack):
                if isinstance(report.get("dropped"), dict):
                    view.set_dropped(report["dropped"])
            view.expire()
    finally:
        frames.close()


# -- who may look -------------------------------------------------------------------------------

class Logins:
    """Users of the users file (re-read when it changes), login throttling, session cookies."""

    def __init__(self, users_file: str) -> None:
        self.users_file = users_file
        self.users = Users.load(users_file)
        self.mtime = self._mtime()
        self.throttle = LoginThrottle()
        self.sessions: dict[str, tuple[str, float]] = {}   # token -> (user, expiry)
        self.basic: dict[str, tuple[str, float]] = {}      # checked header -> (user, expiry)
        self.lock = threading.Lock()

    def _mtime(self) -> float:
        try:
            return os.stat(self.users_file).st_mtime
        except OSError:
            return 0.0

    def check(self, address: str, name: str, password: str) -> tuple[bool, str]:
        """(ok, why not): the password, unless this address or name must wait first."""
        try:
            name = check_name(name)
        except UsersError:
            return False, "wrong user name or password"
        with self.lock:
            refused, slow = self.throttle.begin(address, name)  # counted before scrypt
            if refused:
                return False, f"too many failed logins: try again in {math.ceil(refused)} s"
            if self._mtime() != self.mtime:
                try:
                    self.users, self.mtime = Users.load(self.users_file), self._mtime()
                    log.info("users file %s re-read (%d users)", self.users_file,
                             len(self.users))
                except UsersError as e:
                    log.warning("%s (keeping the users read before)", e)
        ok = False
        try:
            if slow:
                time.sleep(slow)  # failures for this name from anywhere: slowed, not refused
            ok = self.users.verify(name, password)   # scrypt: outside the lock
        finally:
            with self.lock:
                self.throttle.end(address, name, ok)
        if not ok:
            log.warning("view login failed for user %r from %s", name, address)
        return ok, "" if ok else "wrong user name or password"

    def check_basic(self, address: str, header: str) -> str | None:
        """The user of an ``Authorization: Basic`` header, or None; a header that passed is
        trusted for BASIC_TTL seconds (a script polling the API pays scrypt once a minute)."""
        now = time.monotonic()
        with self.lock:
            known = self.basic.get(header)
        if known is not None and known[1] > now:
            return known[0]
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(
                ":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ok, _ = self.check(address, name, password)
        if not ok:
            return None
        with self.lock:
            if len(self.basic) > 1000:
                self.basic = {k: v for k, v in self.basic.items() if v[1] > now}
            self.basic[header] = (name, now + BASIC_TTL)
        return name

    def open_session(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self.lock:
            if len(self.sessions) > 10000:
                self.sessions = {k: v for k, v in self.sessions.items() if v[1] > now}
            self.sessions[token] = (name, now + SESSION_TTL)
        return token

    def session_user(self, token: str) -> str | None:
        with self.lock:
            entry = self.sessions.get(token)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def close_session(self, token: str) -> None:
        with self.lock:
            self.sessions.pop(token, None)


# -- HTTP -----------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait
    server_version = "camstream-view"
    sys_version = ""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(SOCKET_TIMEOUT)
            self.request.do_handshake()   # in this connection's thread, never in accept()
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)

    # -- answers ----------------------------------------------------------------------------

    def send_body(self, status: int, body: bytes, ctype: str, *headers: tuple[str, str]):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json")

    def redirect(self, where: str, *headers: tuple[str, str]) -> None:
        self.send_response(303)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def login_page(self, status: int = 200, message: str = "", next_path: str = "/") -> None:
        page = self.server.login_html.replace(b"{{message}}", _escape(message).encode())
        page = page.replace(b"{{next}}", _escape(next_path).encode())
        self.send_body(status, page, "text/html; charset=utf-8")

    # -- who is asking ----------------------------------------------------------------------

    def cookie_token(self) -> str:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == COOKIE:
                return value
        return ""

    def user(self) -> str | None:
        """The logged-in user (anyone, without -a); None when a login is needed."""
        logins = self.server.logins
        if logins is None:
            return "-"
        name = logins.session_user(self.cookie_token())
        if name:
            return name
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            return logins.check_basic(self.client_address[0], basic)
        return None

    def refuse(self, path: str) -> None:
        if path.startswith("/api/"):
            self.send_body(401, b'{"error": "login needed"}\n', "application/json",
                           ("WWW-Authenticate", 'Basic realm="camstream"'))
        else:
            self.login_page(401, "", path)

    # -- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        if path.startswith("/static/") and path[8:] in STATIC:
            name = path[8:]
            self.send_body(200, self.server.static[name], STATIC[name] + "; charset=utf-8")
            return
        if path == "/healthz":  # for supervisors and benchmarks: nothing about the streams
            self.send_json(200, {"status": "ok", "viewers": self.server.view.viewer_count()})
            return
        if path == "/logout":
            if self.server.logins is not None:
                self.server.logins.close_session(self.cookie_token())
            self.redirect("/", ("Set-Cookie", self.cookie("", 0)))
            return
        if path == "/login":
            self.login_page(200, "", _one(query, "next") or "/")
            return
        if self.user() is None:
            self.refuse(path)
            return
        if path == "/" or (path.startswith("/client/") and len(path) > 8):
            self.send_body(200, self.server.static["index.html"], "text/html; charset=utf-8")
        elif path == "/api/state":
            kind = _one(query, "kind")
            kind = kind if kind in KINDS else "raw"
            try:
                since = int(_one(query, "since") or -1)
            except ValueError:
                since = -1
            viewer = _one(query, "viewer")
            if viewer:
                self.server.view.saw_viewer(viewer)
            body = self.server.view.wait(kind, since, LONG_POLL)
            self.send_body(200, body, "application/json")
        elif path.startswith("/api/frame/"):
            name = urllib.parse.unquote(path[len("/api/frame/"):])
            kind = _one(query, "kind")
            got = self.server.view.jpeg(name, kind if kind in KINDS else "raw")
            if got is None:
                self.send_body(404, b"no frame\n", "text/plain")
            else:
                self.send_body(200, got[1], "image/jpeg", ("X-Camstream-Seq", str(got[0])))
        else:
            self.send_body(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/login":
            self.send_body(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= 4096:
            self.send_body(413, b"a login form is small\n", "text/plain")
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        next_path = _one(form, "next") or "/"
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"   # never redirect elsewhere
        logins = self.server.logins
        if logins is None:
            self.redirect(next_path)
            return
        name, password = _one(form, "username"), _one(form, "password")
        ok, why = logins.check(self.client_address[0], name, password)
        if not ok:
            self.login_page(401 if "wrong" in why else 429, why, next_path)
            return
        log.info("view login: %r from %s", name, self.client_address[0])
        self.redirect(next_path, ("Set-Cookie", self.cookie(logins.open_session(name),
                                                            SESSION_TTL)))

    def cookie(self, value: str, max_age: float) -> str:
        secure = "; Secure" if self.server.tls else ""
        return (f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; "
                f"Max-Age={int(max_age)}{secure}")


def _one(query: dict, key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


class WebServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A thread per connection (a slow one blocks only itself), at most MAX_CONNECTIONS, and
    MAX_PER_ADDRESS from one address; refused ones are closed at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, view: View, logins: Logins | None,
                 tls: ssl.SSLContext | None) -> None:
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.view = view
        self.logins = logins
        self.tls = tls
        self.static = {name: static_file(name) for name in STATIC}
        self.login_html = self.static["login.html"]
        self.open = 0
        self.per_address = ConnectionCount(MAX_PER_ADDRESS)
        self.open_lock = threading.Lock()

    def get_request(self):
        sock, address = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request, client_address) -> bool:
        with self.open_lock:
            if self.open >= MAX_CONNECTIONS:
                return False
            if not self.per_address.acquire(client_address[0]):
                if self.per_address.first_refusal(client_address[0]):
                    log.warning("refusing connections from %s: it has %d open",
                                client_address[0], MAX_PER_ADDRESS)
                return False
            self.open += 1
            return True

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.open_lock:
                self.open -= 1
                self.per_address.release(client_address[0])

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


# -- the process ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The web view's flags, on the ``display`` verb."""
    parser.add_argument("--web", metavar="[HOST:]PORT",
                        help="no windows: serve the live view to browsers at "
                        "http://HOST:PORT/ (HOST defaults to 0.0.0.0, as serve -i)")
    parser.add_argument("-a", "--auth", action="store_true",
                        help="with --web: viewers log in with a user of the users file")
    add_users_file(parser, "with --web -a: the users file (default: %(default)s)")
    add_tls_files(parser, "with --web: serve https with this certificate (PEM)",
                  "the certificate's private key")
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # from serve --web


def run(args: argparse.Namespace) -> int:
    """Check everything at the edge (one line each), then serve until SIGTERM or Ctrl-C."""
    from camstream import proc
    from camstream.attach.display import check_daemon
    from camstream.supervisor.runtime import listen, load_tls

    if args.snapshot:
        raise CliError("--web and --snapshot are two different displays: run one of each")
    if args.client is not None:
        try:
            check_name(args.client)
        except UsersError as e:
            raise CliError(f"--client: {e}") from None
    try:
        host, port = web_address(args.web, "0.0.0.0")
    except ValueError as e:
        raise CliError(f"--web: {e}") from None
    logins = None
    if args.auth:
        try:
            logins = Logins(args.users)
        except UsersError as e:
            raise CliError(f"--auth: {e}") from None
        if not len(logins.users):
            raise CliError(f"--auth: the users file {args.users} has no users (add one with: "
                           f"camstream users add NAME --users {args.users})")
    check_tls_files(args.certfile, args.keyfile)
    tls = load_tls(args.certfile, args.keyfile) if args.certfile else None
    if args.listen_fd is None:
        check_daemon(args.runtime_dir)
        sock = listen(host, port)
    else:  # serve --web: the supervisor bound it, once, and hands it to each of us
        sock = socket.socket(fileno=args.listen_fd)
    if args.parent_pid:
        proc.become("web view", args.parent_pid)
    else:
        import setproctitle
        setproctitle.setproctitle("camstream: web view")
    proc.setup_logging(args.log_level)

    view = View()
    view.login = logins is not None
    stop = threading.Event()
    reader = threading.Thread(target=read_bus, args=(view, args.runtime_dir, stop,
                                                     args.client), name="bus", daemon=True)
    reader.start()
    server = WebServer(sock, view, logins, tls)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    shown = "[::1]" if host == "::1" else host
    log.info("serving the web view on %s://%s:%d/ (login %s)", "https" if tls else "http",
             shown, port, "required" if logins else "not required")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        reader.join(timeout=2)
        server.server_close()
        log.info("detached")
    return 0
