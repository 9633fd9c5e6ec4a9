"""Raw socket.io clients, for the tests that send what no real client would: a websocket
(websocket-client) or long polls (requests), either protocol revision (EIO=4: Engine.IO 4 /
Socket.IO 5; EIO=3: Engine.IO 3 / Socket.IO 4), from a chosen loopback address."""
from __future__ import annotations

import json
import socket
import time

import requests
import websocket

CLOSED = "closed"     # what recv() returns once the server closed the connection
TIMEOUT = "timeout"   # what recv() returns when nothing came in time
PROBE_ID = 4242


class RawWS:
    """A websocket to ``/socket.io/``; ``source`` is the loopback address it comes from."""

    def __init__(self, port: int, eio: int = 4, source: str = "127.0.0.1",
                 timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        """``rcvbuf``: the socket's receive buffer, set before it connects (a client that
        reads nothing then fills the server's send buffer after a few kB)."""
        self.eio = eio
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO={eio}&transport=websocket", socket=sock,
            timeout=timeout, enable_multithread=False)
        self.opening = None
        first = self.recv(timeout)
        if isinstance(first, str) and first.startswith("0{"):
            self.opening = json.loads(first[1:])
        self.first = first

    def send(self, message: str | bytes) -> bool:
        """Send one message; False when the connection is already gone."""
        try:
            if isinstance(message, str):  # lone surrogates make invalid UTF-8, on purpose
                self.ws.send(message.encode("utf-8", "surrogatepass"),
                             opcode=websocket.ABNF.OPCODE_TEXT)
            else:
                self.ws.send_binary(message)
            return True
        except (websocket.WebSocketException, OSError):
            return False

    def recv(self, timeout: float = 5.0):
        """The next text (str) or binary (bytes) message, CLOSED or TIMEOUT. Engine.IO 4
        pings are answered on the way."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return TIMEOUT
            self.ws.settimeout(left)
            try:
                op, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                return TIMEOUT
            except (websocket.WebSocketException, OSError, ValueError):
                return CLOSED
            if op == websocket.ABNF.OPCODE_CLOSE:
                return CLOSED
            if op == websocket.ABNF.OPCODE_TEXT:
                text = data.decode("utf-8", "replace")
                if self.eio == 4 and text == "2":
                    self.send("3")
                    continue
                return text
            return bytes(data)

    def wait_for(self, predicate, timeout: float = 5.0):
        """The first message for which predicate(message) holds; CLOSED or TIMEOUT."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg in (CLOSED, TIMEOUT) or predicate(msg):
                return msg

    def connect(self, auth: dict | None = None):
        """Join the default namespace: Engine.IO 4 asks (``40`` + auth) and gets ``40{sid}``
        or ``44{message}``; Engine.IO 3 is joined unasked (``40``)."""
        if self.eio == 4:
            self.send("40" + (json.dumps(auth) if auth else ""))
            return self.wait_for(lambda m: isinstance(m, str) and m[:2] in ("40", "44"))
        if self.first == "40":
            return "40"
        return self.wait_for(lambda m: isinstance(m, str) and m[:2] in ("40", "44"))

    def login(self, username: str, password: str, timeout: float = 10.0):
        """The prototype's ``authenticate``: True, False, CLOSED or TIMEOUT."""
        self.send("42" + json.dumps(["authenticate", username, password, "onAuth"]))
        msg = self.wait_for(lambda m: isinstance(m, str) and m.startswith('42["onAuth"'),
                            timeout)
        return json.loads(msg[2:])[1] if msg not in (CLOSED, TIMEOUT) else msg

    def probe(self, timeout: float = 3.0):
        """``frame()`` with no arguments and an ack: its answer proves the connection is still
        served. The ack's payload, CLOSED or TIMEOUT."""
        if not self.send(f"42{PROBE_ID}" + '["frame"]'):
            return CLOSED
        msg = self.wait_for(lambda m: isinstance(m, str) and m.startswith(f"43{PROBE_ID}["),
                            timeout)
        return json.loads(msg[2 + len(str(PROBE_ID)):]) if msg not in (CLOSED, TIMEOUT) else msg

    def binary_frame(self, jpeg: bytes, ack: int | None = None, event: str = "frame") -> None:
        """A binary event: the text packet with a placeholder, then the attachment (Engine.IO
        3 prefixes a binary message with its packet type byte, 4; Engine.IO 4 does not)."""
        args = [{}, {"_placeholder": True, "num": 0}] if event == "frame" else \
            [{"_placeholder": True, "num": 0}]
        self.send("451-" + ("" if ack is None else str(ack)) + json.dumps([event, *args]))
        self.send((b"\x04" if self.eio == 3 else b"") + jpeg)

    def close(self) -> None:
        try:
            self.ws.close(timeout=0.5)
        except (websocket.WebSocketException, OSError):
            pass
        try:
            self.ws.shutdown()
        except (websocket.WebSocketException, OSError, AttributeError):
            pass


class RawPoll:
    """A long-polling session: ``GET`` and ``POST`` on ``/socket.io/`` with the session id."""

    def __init__(self, url: str, eio: int = 4, timeout: float = 5.0) -> None:
        self.url = url
        self.eio = eio
        self.http = requests.Session()
        self.timeout = timeout
        r = self.http.get(f"{url}/socket.io/", params={"EIO": eio, "transport": "polling"},
                          timeout=timeout)
        r.raise_for_status()
        text = r.content.decode("utf-8", "replace")
        start = text.index("0{")
        self.opening = json.JSONDecoder().raw_decode(text[start + 1:])[0]
        self.sid = self.opening["sid"]
        self.backlog = text[start:]

    def _params(self) -> dict:
        return {"EIO": self.eio, "transport": "polling", "sid": self.sid}

    def post(self, body: str | bytes, binary: bool = False) -> int:
        """POST a body as it is; the HTTP status (0 when the connection was reset)."""
        ctype = "application/octet-stream" if binary else "text/plain;charset=UTF-8"
        data = body.encode("utf-8") if isinstance(body, str) else body
        try:
            return self.http.post(f"{self.url}/socket.io/", params=self._params(), data=data,
                                  headers={"Content-Type": ctype}, timeout=self.timeout
                                  ).status_code
        except requests.RequestException:
            return 0

    def packets(self, *packets: str) -> str:
        """Text packets as one payload of this revision (``\\x1e``-joined, or ``len:packet``)."""
        if self.eio == 4:
            return "\x1e".join(packets)
        return "".join(f"{len(p)}:{p}" for p in packets)

    def get(self, timeout: float | None = None) -> tuple[int, bytes]:
        try:
            r = self.http.get(f"{self.url}/socket.io/", params=self._params(),
                              timeout=timeout or self.timeout)
            return r.status_code, r.content
        except requests.Timeout:
            return -1, b""
        except requests.RequestException:
            return 0, b""

    def wait_for(self, needle: bytes, timeout: float = 5.0) -> str:
        """Poll until a response contains ``needle`` ("found"), the session is gone
        (CLOSED: an error status, or a close packet) or ``timeout`` passes (TIMEOUT)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get(timeout=max(1.0, deadline - time.monotonic() + 1))
            if needle in body:
                return "found"
            if status == -1:
                continue
            if status != 200 or body in (b"1", b"1:1") or body.endswith(b"\x1e1") or \
                    body.endswith(b":1"):
                return CLOSED
        return TIMEOUT

    def close(self) -> None:
        self.http.close()
