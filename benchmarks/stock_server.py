"""The baseline of benchmark 1: the stock stack, with a handler that only counts.

python-socketio 5 + gevent + gevent-websocket exactly as installed: no ``camstream.ingest.wsfast``
unmask, ``async_handlers`` left at its default. ``/ping`` answers when it is up; ``/count``
gives the frames counted so far.

    python -m benchmarks.stock_server --port PORT
"""
from __future__ import annotations

import argparse
import json

import socketio
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

counts = {"frame": 0, "receiveImage": 0}


def http_app(environ, start_response):
    body = json.dumps(counts).encode() if environ.get("PATH_INFO") == "/count" else b"pong"
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sio = socketio.Server(async_mode="gevent")

    @sio.on("frame")
    def frame(sid, meta, jpeg):
        counts["frame"] += 1
        return True

    @sio.on("receiveImage")
    def receive_image(sid, jpeg):
        counts["receiveImage"] += 1

    server = WSGIServer(("127.0.0.1", args.port), socketio.WSGIApp(sio, http_app),
                        handler_class=WebSocketHandler, log=None)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
