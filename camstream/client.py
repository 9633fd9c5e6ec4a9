"""The reference client (``camstream send``) and ``camstream status`` (which ``camstream
demo`` runs against a daemon of its own).

``send`` behaves like a phone: it logs in (connect-time ``auth``, or with ``--legacy`` the
prototype's ``authenticate`` event), then streams JPEG frames, either as ``frame`` with an
acknowledgement (so it paces itself on the server's answers) or as the prototype's
``receiveImage`` without one.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import requests
import socketio

# cv2 and numpy are imported by the frame sources that use them: status needs neither, and
# must run where OpenCV is not installed or cannot load.


# -- frame sources ------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 640x480, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError(f"--size out of range: {text}")
    return w, h


def synthetic_frames(width: int, height: int, quality: int) -> Iterator[bytes]:
    """Frames a person can recognise: a moving square, a counter and the time."""
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    background = np.dstack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                            np.full_like(xx, 96)]).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    scale = max(0.4, width / 640)
    for n in itertools.count(1):
        img = background.copy()
        side = max(8, height // 6)
        x = (n * 7) % max(1, width - side)
        cv2.rectangle(img, (x, height // 2 - side // 2), (x + side, height // 2 + side // 2),
                      (255, 255, 255), -1)
        cv2.putText(img, f"#{n}", (10, int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), max(1, int(2 * scale)))
        cv2.putText(img, time.strftime("%H:%M:%S"), (10, height - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, int(2 * scale)))
        ok, jpeg = cv2.imencode(".jpg", img, params)
        yield jpeg.tobytes()


def folder_frames(folder: Path) -> Iterator[bytes]:
    """Replay a folder of JPEG files as they are, in name order (no re-encoding). The folder is
    listed now, so that an empty one is said before connecting."""
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    except OSError as e:
        raise ValueError(f"--source {folder}: {e.strerror}") from None
    if not files:
        raise ValueError(f"--source {folder}: no .jpg or .jpeg files in that folder")
    return (path.read_bytes() for path in files)


def capture_frames(source: int | str, quality: int) -> Iterator[bytes]:
    """Frames of a video file or a camera, re-encoded as JPEG. The source is opened and its
    first frame read now, so that a file that is not a video, or a camera that is not there,
    is said before connecting."""
    import cv2

    what = f"camera {source}" if isinstance(source, int) else str(source)
    with quiet_stderr():  # OpenCV's and FFmpeg's own complaints would bury our one line
        cap = cv2.VideoCapture(source)
        ok, img = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        hint = ("no such camera, or it is busy" if isinstance(source, int)
                else "not a video OpenCV can read")
        raise ValueError(f"--source {what}: cannot read a frame ({hint})")
    return _captured(cap, img, quality)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C libraries write there directly) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _captured(cap, first, quality: int) -> Iterator[bytes]:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    img = first
    try:
        while img is not None:
            yield cv2.imencode(".jpg", img, params)[1].tobytes()
            ok, img = cap.read()
            if not ok:
                return
    finally:
        cap.release()


def open_source(source: str, size: str, quality: int) -> Iterator[bytes]:
    """The frames ``--source`` names; ValueError (one line) if it cannot give any."""
    if source == "synthetic":
        return synthetic_frames(*parse_size(size), quality)
    if source.isdigit():
        return capture_frames(int(source), quality)
    path = Path(source).expanduser()
    if path.is_dir():
        return folder_frames(path)
    if path.is_file():
        return capture_frames(str(path), quality)
    raise ValueError(f"--source {source!r}: not 'synthetic', a camera number, a folder or "
                     "a video file")


# -- send ---------------------------------------------------------------------------------------

def tls_verify(args: argparse.Namespace) -> bool | str:
    """requests' ``verify``: a CA file (``--cafile``), False (``--insecure``), else True."""
    if getattr(args, "insecure", False):
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # asked for
        return False
    return getattr(args, "cafile", None) or True


class Tally:
    def __init__(self) -> None:
        self.sent = self.accepted = self.refused = self.timeouts = 0
        self.results = None       # --results: how many came back
        self.dropped = 0          # as the server last reported it in an ack
        self.reasons: dict[str, int] = {}
        self.started = time.monotonic()

    def line(self, legacy: bool = False) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        if legacy:  # receiveImage has no ack: what happened to a frame only the daemon knows
            text = f"sent {self.sent}  {self.sent / elapsed:.1f} fps"
        else:
            text = (f"sent {self.sent}  accepted {self.accepted}  refused {self.refused}  "
                    f"dropped {self.dropped}  {self.sent / elapsed:.1f} fps")
        if self.results:
            text += f"  results {self.results}"
        if self.reasons:
            text += "  (" + ", ".join(f"{k}: {v}" for k, v in self.reasons.items()) + ")"
        return text


def send(args: argparse.Namespace, password: str) -> int:
    try:
        frames = open_source(args.source, args.size, args.quality)
    except ValueError as e:
        print(f"camstream send: error: {e}", file=sys.stderr)
        return 2
    tally = Tally()
    reader_gone = threading.Event()  # --results piped into a reader that stopped (| head)
    sio, session, login = make_client(args, password, tally, reader_gone)
    refused = connect(sio, args, password, session, login)
    if refused:
        print(refused, file=sys.stderr)
        return 1
    if args.legacy:
        before = client_counts(args.url, args.username, session.verify, password)
    live = not args.quiet and sys.stderr.isatty()
    try:
        no_results_said = stream(sio, args, frames, tally, reader_gone, live)
    finally:
        if args.legacy:
            time.sleep(0.2)  # frames without acks: let the last ones leave the socket
        if args.results:
            wait_for_results(tally, tally.sent if args.legacy else tally.accepted)
        sio.disconnect()
    print(("\r" if live else "") + tally.line(args.legacy), file=sys.stderr)
    if args.results and not tally.results and not no_results_said and \
            (tally.accepted or args.legacy and tally.sent):
        print(NO_RESULTS, file=sys.stderr)
    if args.legacy and tally.sent:
        print(counts_line(args, before, tally.sent, session.verify, password),
              file=sys.stderr)
    return 0


def make_client(args: argparse.Namespace, password: str, tally: Tally,
                reader_gone: threading.Event) -> tuple[socketio.Client, requests.Session, dict]:
    """A socket.io client with send's handlers: the Android app's login (``--legacy``), the
    refusal's reason and wait, ``--results`` printed as JSON lines. ``login`` (the dict
    returned) is what the handlers learnt."""
    session = requests.Session()  # polling, and the websocket's certificate check
    session.verify = tls_verify(args)
    if session.verify is not True:  # else REQUESTS_CA_BUNDLE would override what was asked
        session.trust_env = False
    sio = socketio.Client(reconnection=True, reconnection_delay=1, reconnection_delay_max=5,
                          http_session=session, ssl_verify=session.verify is not False)
    login = {"event": threading.Event(), "ok": None, "error": None}

    @sio.on("connect")
    def on_connect():
        if args.legacy:
            sio.emit("authenticate", (args.username, password, "onAuthentication"))

    @sio.on("onAuthentication")
    def on_authentication(ok):
        login["ok"] = bool(ok)
        login["event"].set()

    @sio.on("connect_error")
    def on_connect_error(data):
        login["error"] = data.get("message") if isinstance(data, dict) else str(data)
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            login["retry_in_s"] = data["data"].get("retry_in_s")

    if args.results:
        tally.results = 0

        @sio.on("result")
        def on_result(result):
            tally.results += 1
            if reader_gone.is_set():
                return
            try:
                print(json.dumps(result, separators=(",", ":")), flush=True)
            except BrokenPipeError:  # that is how a pipeline ends: stop sending, quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                reader_gone.set()

    return sio, session, login


def connect(sio: socketio.Client, args: argparse.Namespace, password: str,
            session: requests.Session, login: dict) -> str | None:
    """Connect and log in; the line to print if that failed (then nothing is left open)."""
    transports = {"websocket": ["websocket"], "polling": ["polling"],
                  "default": ["polling", "websocket"]}[args.transport]
    auth = None if args.legacy else {"username": args.username, "password": password}
    try:
        sio.connect(args.url, auth=auth, transports=transports, wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        if login["error"] == "authentication failed":
            return refused_login(args, login.get("retry_in_s"))
        hint = " (a certificate of your own? --cafile PEM, or --insecure)" \
            if args.url.startswith("https:") and session.verify is True else ""
        return f"camstream send: cannot connect to {args.url}: {login['error'] or e}{hint}"
    if args.legacy and (not login["event"].wait(10) or not login["ok"]):
        sio.disconnect()
        return refused_login(args)
    return None


def stream(sio: socketio.Client, args: argparse.Namespace, frames, tally: Tally,
           reader_gone: threading.Event, live: bool) -> bool:
    """Send ``frames`` at ``--fps`` until ``--count``, the source's end, Ctrl-C or a results
    reader gone; the tally on the terminal once a second. Whether NO_RESULTS was said."""
    tally.started = time.monotonic()
    no_results_said = False
    interval = 1.0 / args.fps if args.fps > 0 else 0.0
    next_at = time.monotonic()
    last_print = 0.0
    try:
        for n, jpeg in enumerate(frames, 1):
            if interval:
                now = time.monotonic()
                if next_at > now:
                    time.sleep(next_at - now)
                next_at = max(next_at + interval, time.monotonic() - 1.0)
            send_one(sio, args.legacy, n, jpeg, tally)
            if args.results and not no_results_said and not tally.results and \
                    (tally.accepted or args.legacy) and time.monotonic() - tally.started > 3:
                print(("\n" if live else "") + NO_RESULTS, file=sys.stderr, flush=True)
                no_results_said = True
            if live and time.monotonic() - last_print > 1.0:
                last_print = time.monotonic()
                print("\r" + tally.line(args.legacy), end="", file=sys.stderr, flush=True)
            if (args.count and n >= args.count) or reader_gone.is_set():
                break
    except KeyboardInterrupt:
        pass
    return no_results_said


NO_RESULTS = ("camstream send: no results come back: the daemon sends them only when it "
              "runs with --emit-results")


def refused_login(args: argparse.Namespace, retry_in_s: float | None = None) -> str:
    """The line for a refused login; with the wait the daemon told (connect-time auth), when
    the next try will be checked at all."""
    if isinstance(retry_in_s, (int, float)) and retry_in_s > 0:
        return (f"camstream send: login refused for {args.username!r} at {args.url}: a wrong "
                f"user name or password, or a try too soon after one; next try in "
                f"{retry_in_s:g} s (the wait doubles with each failure, up to a minute)")
    return (f"camstream send: login refused for {args.username!r} at {args.url}: a wrong "
            "user name or password, or a try too soon after one (after failed logins the "
            "daemon refuses that name from this address for 0.5 s, doubling up to a minute)")


COUNTED = ("received", "refused", "dropped", "processed", "errors", "lost")


def client_counts(url: str, name: str, verify: bool | str,
                  password: str | None = None) -> dict | None:
    """The daemon's counters for client ``name`` (/healthz, asked as that user: under -a only
    a user sees client rows), None if it does not answer."""
    auth = (name, password) if password is not None else None
    try:
        row = fetch_health(url, timeout=2, verify=verify, auth=auth)["clients"].get(name, {})
        return {k: int(row.get(k, 0)) for k in COUNTED}
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return None


def counts_line(args: argparse.Namespace, before: dict | None, sent: int,
                verify: bool | str, password: str, timeout: float = 5.0) -> str:
    """--legacy: what the daemon did with this run's frames, from its /healthz counters for
    the client (the difference since the login: other connections under the same name would
    count too). Waits until every frame received is accounted for, ``timeout`` at most."""
    deadline = time.monotonic() + timeout
    while True:
        after = client_counts(args.url, args.username, verify, password)
        if after is None or before is None:
            return (f"camstream send: the daemon's counters for {args.username!r} are not "
                    f"available ({args.url}/healthz did not answer)")
        d = {k: after[k] - before[k] for k in COUNTED}
        settled = d["received"] >= sent and sum(d[k] for k in COUNTED[1:]) >= d["received"]
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return (f"the daemon's counters for {args.username!r} during this run: "
            + ", ".join(f"{k} {d[k]}" for k in COUNTED)
            + ("" if settled else " (some frames still on their way)"))


def wait_for_results(tally: Tally, expected: int, quiet: float = 1.0,
                     timeout: float = 5.0) -> None:
    """--results: the last frames' results come a worker's round trip after them. Wait for
    ``expected``, or until none came for ``quiet`` seconds (frames dropped on the way have
    none), ``timeout`` at most."""
    deadline = time.monotonic() + timeout
    seen, last_change = tally.results, time.monotonic()
    while tally.results < expected and time.monotonic() < deadline:
        if tally.results != seen:
            seen, last_change = tally.results, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return
        time.sleep(0.05)


def send_one(sio: socketio.Client, legacy: bool, n: int, jpeg: bytes, tally: Tally) -> None:
    if legacy:
        try:
            sio.emit("receiveImage", jpeg)
            tally.sent += 1
        except socketio.exceptions.SocketIOError:
            time.sleep(0.5)  # reconnecting
        return
    try:
        ack = sio.call("frame", ({"n": n}, jpeg), timeout=10)
    except socketio.exceptions.TimeoutError:
        tally.sent += 1
        tally.timeouts += 1
        return
    except socketio.exceptions.SocketIOError:
        time.sleep(0.5)  # reconnecting
        return
    tally.sent += 1
    if ack.get("accepted"):
        tally.accepted += 1
        tally.dropped = ack.get("dropped", tally.dropped)
    else:
        tally.refused += 1
        reason = ack.get("reason", "?")
        tally.reasons[reason] = tally.reasons.get(reason, 0) + 1


# -- status -------------------------------------------------------------------------------------

def fetch_health(url: str, timeout: float = 5.0, verify: bool | str = True,
                 auth: tuple[str, str] | None = None) -> dict:
    """/healthz; ``auth`` (a user's name and password) lets a caller of a daemon under -a see
    client rows."""
    resp = requests.get(url.rstrip("/") + "/healthz", timeout=timeout, verify=verify, auth=auth)
    resp.raise_for_status()
    return resp.json()


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                     ("min", 60, "s", 1)):
        if s >= size:
            return f"{s // size} {unit} {s % size // subsize} {sub}"
    return f"{s} s"


def workers_line(w: dict) -> str:
    """Local and remote workers apart: /healthz's ``alive`` counts both, ``expected`` only the
    local ones (the supervisor's, or the pool's on an ingest-only node)."""
    remote = w.get("remote", [])
    remote_alive = sum(1 for r in remote if r["alive"])
    local_alive = w["alive"] - remote_alive
    if w.get("expected") is None:
        text = (f"workers: the pool at {w['pool']} is missing" if w.get("pool")
                else "workers: no pool has reported yet")
    else:
        text = (f"workers: {local_alive} of {w['expected']} alive here "
                f"({w['restarts']} restarts)")
    if remote:
        hosts = ", ".join(f"{r['host']} pid {r['pid']}" + ("" if r["alive"] else " (gone)")
                          for r in remote)
        text += f", {remote_alive} remote alive ({hosts})"
    return text


def format_health(health: dict) -> str:
    lines = [f"up {duration(health['uptime_s'])}; {workers_line(health['workers'])}; "
             f"ingest restarts {health['ingest']['restarts']}"]
    if health.get("reasons"):  # /healthz status "degraded"
        lines.append(f"degraded: {'; '.join(health['reasons'])}")
    cols = ("received", "dispatched", "dropped", "processed", "errors", "refused")
    routed = any("worker" in row for row in health["clients"].values())  # --route client
    lines.append(f"{'client':<20}{'conn':>5}" + "".join(f"{c:>11}" for c in cols)
                 + (f"{'worker':>7}" if routed else ""))
    rows = list(health["clients"].items()) + [("(total)", dict(health["totals"], connected=""))]
    for name, row in rows:
        lines.append(f"{name[:20]:<20}{row['connected']:>5}" +
                     "".join(f"{row[c]:>11}" for c in cols) +
                     (f"{row.get('worker', ''):>7}" if routed else ""))
    if health.get("clients_hidden"):  # -a, and the caller did not log in
        lines.append(f"({health['clients_hidden']} clients not shown: under -a client rows are "
                     "for users of the users file: camstream status -u NAME, with --password "
                     "or CAMSTREAM_PASSWORD)")
    return "\n".join(lines)


def why_unanswered(error: Exception, url: str, verify: bool | str) -> str:
    """requests' exceptions say everything twice, with object reprs: a short reason instead,
    and the hint a user needs for a certificate of their own."""
    if isinstance(error, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in str(error) and verify is True:
            return ("its certificate is not one this machine trusts (a certificate of your "
                    "own? --cafile PEM, or --insecure)")
        return "the TLS handshake failed (is it serving https? try http://)"
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer within 5 s"
    if isinstance(error, requests.exceptions.ConnectionError):
        text = str(error)
        if "refused" in text:
            return "connection refused (is camstream serve running, on this port?)"
        if "NameResolution" in text or "not known" in text:
            return f"unknown host {requests.utils.urlparse(url).hostname!r}"
        if "RemoteDisconnected" in text or "reset" in text:
            return "it closed the connection (an https port? try https://)"
        return "cannot connect"
    if isinstance(error, requests.exceptions.HTTPError):
        return f"HTTP {error.response.status_code} at /healthz (is it a camstream daemon?)"
    if isinstance(error, ValueError):
        return "no JSON at /healthz (is it a camstream daemon?)"
    return str(error)


def print_status(url: str, as_json: bool = False, verify: bool | str = True,
                 auth: tuple[str, str] | None = None) -> int:
    try:
        health = fetch_health(url, verify=verify, auth=auth)
    except (requests.RequestException, ValueError) as e:
        print(f"camstream status: no daemon answers at {url}: {why_unanswered(e, url, verify)}",
              file=sys.stderr)
        return 1
    if as_json:
        import json
        print(json.dumps(health, indent=2))
    else:
        print(format_health(health))
    return 0
