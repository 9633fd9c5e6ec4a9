"""A peer of camstream's ingest in the peers benchmark: python-socketio's asyncio server on
uvicorn (ASGI), what a Python user would pick today instead of the gevent stack. It counts
``frame`` (acked) and ``receiveImage`` as ``stock_server.py`` does; ``/ping`` answers when it is
up, ``/count`` gives the counts. uvicorn runs as installed by ``uvicorn[standard]`` (its
``auto`` choices: uvloop, httptools, websockets when present), one process, no access log.

    python -m benchmarks.asgi_server --port PORT
"""
from __future__ import annotations

import argparse
import json

import socketio
import uvicorn

counts = {"frame": 0, "receiveImage": 0}


async def http_app(scope, receive, send) -> None:
    """``/count`` and ``/ping``: everything that is not socket.io."""
    if scope["type"] != "http":
        return
    body = json.dumps(counts).encode() if scope["path"] == "/count" else b"\"pong\""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.on("authenticate")
    async def authenticate(sid, user, password, reply="onAuthentication"):
        await sio.emit(reply, True, to=sid)

    @sio.on("frame")
    async def frame(sid, meta, jpeg):
        counts["frame"] += 1
        return {"accepted": True, "seq": counts["frame"]}

    @sio.on("receiveImage")
    async def receive_image(sid, jpeg):
        counts["receiveImage"] += 1

    uvicorn.run(socketio.ASGIApp(sio, http_app), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
