"""One benchmark client, a process of its own: a python-socketio 5 client on websocket.

``python -m benchmarks.loadclient '<json>'`` with keys: url, name, frame (a JPEG file, read once),
mode (``ack``: ``frame`` + ack, one in flight; ``emit``: no ack), event (``frame`` or
``receiveImage``), fps (0 = as fast as possible), duration, out, go (a file that will hold the
start time: the client writes ``out.ready`` once connected, then waits for it).
Writes a JSON report to ``out``: sent, accepted, refused, timeouts, ack latencies (ms),
disconnects, send times (ns) when asked.
"""
from __future__ import annotations

import json
import os
import sys
import time

import socketio

ACK_TIMEOUT = 10.0
QUEUE_LIMIT = 32  # frames queued in the client's writer thread before it waits (flood mode)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    jpeg = open(cfg["frame"], "rb").read()
    mode, event = cfg.get("mode", "ack"), cfg.get("event", "frame")
    fps = float(cfg.get("fps", 0))
    report = {"name": cfg["name"], "mode": mode, "event": event, "fps": fps, "sent": 0,
              "accepted": 0, "refused": 0, "timeouts": 0, "errors": 0, "ack_ms": [],
              "disconnects": 0, "disconnect_at": [], "send_ns": [], "bytes": len(jpeg)}
    sio = socketio.Client(reconnection=False)
    closing = []

    @sio.event
    def disconnect(reason=None):
        if closing:  # our own disconnect is not a drop
            return
        report["disconnects"] += 1
        report["disconnect_at"].append(round(time.time() - cfg["start_at"], 2))

    try:
        sio.connect(cfg["url"], transports=["websocket"], wait_timeout=15,
                    auth={"username": cfg["name"], "password": ""})
    except socketio.exceptions.ConnectionError as e:
        report["error"] = f"connect: {e}"
        return finish(cfg, report)
    keep_send_times = cfg.get("send_times", False)
    # connected: say so, then wait for the common start time (the "go" file holds it)
    open(cfg["out"] + ".ready", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(cfg["go"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        cfg["start_at"] = float(open(cfg["go"]).read())
    except (OSError, ValueError):
        report["error"] = "no start signal"
        return finish(cfg, report)
    time.sleep(max(0.0, cfg["start_at"] - time.time()))
    end = cfg["start_at"] + cfg["duration"]
    interval = 1.0 / fps if fps > 0 else 0.0
    next_at = time.monotonic()
    n = 0
    queue = sio.eio.queue
    while time.time() < end and sio.connected:
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
        n += 1
        args = ({"n": n, "t": time.time_ns()}, jpeg) if event == "frame" else (jpeg,)
        if keep_send_times:
            report["send_ns"].append(time.time_ns())
        try:
            if mode == "ack":
                t0 = time.perf_counter()
                ack = sio.call(event, args, timeout=ACK_TIMEOUT)
                report["ack_ms"].append(round((time.perf_counter() - t0) * 1000, 3))
                report["sent"] += 1
                ok = ack.get("accepted") if isinstance(ack, dict) else bool(ack)
                report["accepted" if ok else "refused"] += 1
            else:
                while queue.qsize() > QUEUE_LIMIT and time.time() < end:
                    time.sleep(0.001)
                sio.emit(event, args)
                report["sent"] += 1
        except socketio.exceptions.TimeoutError:
            report["sent"] += 1
            report["timeouts"] += 1
        except socketio.exceptions.SocketIOError:
            report["errors"] += 1
            break
    report["elapsed"] = round(time.time() - cfg["start_at"], 3)
    report["connected_at_end"] = sio.connected
    if sio.connected:
        if mode != "ack":  # let the queued frames leave before closing
            deadline = time.monotonic() + 3
            while queue.qsize() and time.monotonic() < deadline:
                time.sleep(0.01)
        closing.append(True)
        sio.disconnect()
    return finish(cfg, report)


def finish(cfg: dict, report: dict) -> int:
    with open(cfg["out"], "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
