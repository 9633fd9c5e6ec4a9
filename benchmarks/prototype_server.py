"""The baseline of benchmark 5: the prototype's design, one gevent process.

python-socketio 5 on gevent + gevent-websocket (with camstream's numpy unmask, so that the
transport is not what limits it: what is compared is the design), ``async_handlers`` at its
default (a greenlet per event), and each handler decodes the frame and does the slow work
itself (``benchmarks.slow.work``: a blocking sleep standing for CPU-bound processing).
Each processed frame is appended to ``--log`` as ``client n done_ns``.

    python -m benchmarks.prototype_server --port PORT --log FILE
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import socketio
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from benchmarks import slow
from camstream.ingest import wsfast


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    wsfast.install()
    log = open(args.log, "w", buffering=1)
    names: dict[str, str] = {}
    sio = socketio.Server(async_mode="gevent")

    @sio.event
    def connect(sid, environ, auth=None):
        names[sid] = (auth or {}).get("username", sid)

    def handle(sid, n, jpeg):
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        slow.work(image, None)
        log.write(f"{names.get(sid, sid)} {n} {time.time_ns()}\n")

    @sio.on("frame")
    def frame(sid, meta, jpeg):
        handle(sid, meta.get("n", 0), jpeg)
        return {"accepted": True}

    @sio.on("receiveImage")
    def receive_image(sid, jpeg):
        handle(sid, 0, jpeg)

    def http_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pong"]

    server = WSGIServer(("127.0.0.1", args.port), socketio.WSGIApp(sio, http_app),
                        handler_class=WebSocketHandler, log=None)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
