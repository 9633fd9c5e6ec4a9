"""The reference client (``camstream send``), ``camstream status`` and ``camstream demo``.

``send`` behaves like a phone: it logs in (connect-time ``auth``, or with ``--legacy`` the
prototype's ``authenticate`` event), then streams JPEG frames, either as ``frame`` with an
acknowledgement (so it paces itself on the server's answers) or as the prototype's
``receiveImage`` without one.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
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
    """Replay a folder of JPEG files as they are, in name order (no re-encoding)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"no .jpg files in {folder}")
    for path in files:
        yield path.read_bytes()


def capture_frames(source, quality: int) -> Iterator[bytes]:
    import cv2

    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise ValueError(f"cannot open video source {source!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield cv2.imencode(".jpg", img, params)[1].tobytes()
    finally:
        cap.release()


def open_source(source: str, size: str, quality: int) -> Iterator[bytes]:
    if source == "synthetic":
        return synthetic_frames(*parse_size(size), quality)
    if source.isdigit():
        return capture_frames(int(source), quality)
    path = Path(source)
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

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        text = (f"sent {self.sent}  accepted {self.accepted}  refused {self.refused}  "
                f"dropped {self.dropped}  {self.sent / elapsed:.1f} fps")
        if self.results is not None:
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
    transports = {"websocket": ["websocket"], "polling": ["polling"],
                  "default": ["polling", "websocket"]}[args.transport]
    session = requests.Session()  # polling, and the websocket's certificate check
    session.verify = tls_verify(args)
    if session.verify is not True:  # else REQUESTS_CA_BUNDLE would override what was asked
        session.trust_env = False
    sio = socketio.Client(reconnection=True, reconnection_delay=1, reconnection_delay_max=5,
                          http_session=session, ssl_verify=session.verify is not False)
    login = {"event": threading.Event(), "ok": None, "error": None}

    @sio.event
    def connect():
        if args.legacy:
            sio.emit("authenticate", (args.username, password, "onAuthentication"))

    @sio.on("onAuthentication")
    def on_authentication(ok):
        login["ok"] = bool(ok)
        login["event"].set()

    @sio.event
    def connect_error(data):
        login["error"] = data.get("message") if isinstance(data, dict) else str(data)

    tally = Tally()
    reader_gone = threading.Event()  # --results piped into a reader that stopped (| head)
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

    auth = None if args.legacy else {"username": args.username, "password": password}
    try:
        sio.connect(args.url, auth=auth, transports=transports, wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        hint = " (a certificate of your own? --cafile PEM, or --insecure)" \
            if args.url.startswith("https:") and session.verify is True else ""
        print(f"camstream send: cannot connect to {args.url}: {login['error'] or e}{hint}",
              file=sys.stderr)
        return 1
    if args.legacy:
        if not login["event"].wait(10) or not login["ok"]:
            print(f"camstream send: login refused for {args.username!r}", file=sys.stderr)
            sio.disconnect()
            return 1
    tally.started = time.monotonic()
    live = not args.quiet and sys.stderr.isatty()
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
            if live and time.monotonic() - last_print > 1.0:
                last_print = time.monotonic()
                print("\r" + tally.line(), end="", file=sys.stderr, flush=True)
            if (args.count and n >= args.count) or reader_gone.is_set():
                break
    except KeyboardInterrupt:
        pass
    finally:
        if args.legacy:
            time.sleep(0.2)  # frames without acks: let the last ones leave the socket
        if args.results:
            wait_for_results(tally, tally.sent if args.legacy else tally.accepted)
        sio.disconnect()
    print(("\r" if live else "") + tally.line(), file=sys.stderr)
    return 0


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

def fetch_health(url: str, timeout: float = 5.0, verify: bool | str = True) -> dict:
    resp = requests.get(url.rstrip("/") + "/healthz", timeout=timeout, verify=verify)
    resp.raise_for_status()
    return resp.json()


def format_health(health: dict) -> str:
    w = health["workers"]
    lines = [f"up {health['uptime_s']:.0f} s, workers {w['alive']} alive of "
             f"{w['expected']} ({w['restarts']} restarts), ingest restarts "
             f"{health['ingest']['restarts']}"]
    cols = ("received", "dispatched", "dropped", "processed", "errors", "refused")
    routed = any("worker" in row for row in health["clients"].values())  # --route client
    lines.append(f"{'client':<20}{'conn':>5}" + "".join(f"{c:>11}" for c in cols)
                 + (f"{'worker':>7}" if routed else ""))
    rows = list(health["clients"].items()) + [("(total)", dict(health["totals"], connected=""))]
    for name, row in rows:
        lines.append(f"{name[:20]:<20}{row['connected']:>5}" +
                     "".join(f"{row[c]:>11}" for c in cols) +
                     (f"{row.get('worker', ''):>7}" if routed else ""))
    return "\n".join(lines)


def print_status(url: str, as_json: bool = False, verify: bool | str = True) -> int:
    try:
        health = fetch_health(url, verify=verify)
    except (requests.RequestException, ValueError) as e:
        print(f"camstream status: no daemon answers at {url}: {e}", file=sys.stderr)
        return 1
    if as_json:
        import json
        print(json.dumps(health, indent=2))
    else:
        print(format_health(health))
    return 0


# -- demo ---------------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    """serve on 127.0.0.1 + send synthetic frames + status: a first look without a phone."""
    from camstream.cli import build_parser
    from camstream.proc import python_module

    url = f"http://127.0.0.1:{args.port}"
    # send's options come from send's own parser, so they cannot drift from it
    send_args = build_parser().parse_args(
        ["send", url, "-u", "demo", "--fps", repr(args.fps),
         "--count", str(int(args.seconds * args.fps))])
    sent = 1
    with tempfile.TemporaryDirectory(prefix="camstream-demo-") as rundir:
        serve = subprocess.Popen(python_module(
            "camstream", "serve", "-i", "127.0.0.1", "-p", str(args.port),
            "-w", str(args.workers), "--runtime-dir", rundir))
        try:
            if not wait_ready(url, serve, args.workers, timeout=60):
                print("camstream demo: the daemon did not start (see the lines above)",
                      file=sys.stderr)
                return 1
            print(f"camstream demo: daemon ready on {url}; streaming synthetic 640x480 frames "
                  f"at {args.fps:g} fps" + (f" for {args.seconds:g} s" if args.seconds else
                                            " until Ctrl-C"), file=sys.stderr)
            sent = send(send_args, "")
            time.sleep(1.5)  # processed counts arrive twice a second
            print_status(url)
        except KeyboardInterrupt:
            pass
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    return 1 if sent or serve.returncode else 0


def wait_ready(url: str, serve: subprocess.Popen, workers: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and serve.poll() is None:
        try:
            if fetch_health(url, timeout=1)["workers"]["alive"] >= workers:
                return True
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False

