"""gevent's WSGI server, guarded against slow and half-open connections (slowloris).

gevent's pywsgi waits for a request's line and headers, and for a TLS handshake, without any
bound: 3,000 half-open requests stayed open for good, and with a 1,024-file limit 1,100 of them
made ``/healthz`` and new clients time out, with a traceback per refused accept. Here:

- a connection has ``header_timeout`` seconds to send a request's line and headers (each
  request of a kept-alive connection too), and ``handshake_timeout`` to finish a TLS
  handshake; then it is closed;
- at most ``max_pending`` connections (and half the open-file limit) may be at that stage at
  once (not yet a request, so not yet a socket.io session): beyond it the oldest of them is
  closed, so a new client is always let in;
- out of file descriptors all the same (EMFILE), the oldest waiting connections are closed,
  accepting pauses a tenth of a second, and one line is logged (at most every 10 s), not a
  traceback per try.

What each of these stopped is counted in ``hits`` (``/healthz`` ``limits``).
"""
from __future__ import annotations

import collections
import errno
import logging
import resource
import time

import gevent
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger("camstream.http")
ACCEPT_PAUSE = 0.1   # seconds without accepting after EMFILE
EVICT_ON_EMFILE = 16  # waiting connections closed then


class SlowClient(OSError):
    """Raised in a connection's greenlet that took too long (or was the oldest waiting when
    room was needed): an OSError, which pywsgi takes as a dead connection and closes."""


class GuardedHandler(WebSocketHandler):
    """A request's line and headers within the server's ``header_timeout``."""

    def handle_one_request(self):
        server = self.server
        self._timer = gevent.Timeout.start_new(server.header_timeout, SlowClient("header"))
        server.waiting_starts(self._timer)
        try:
            return super().handle_one_request()
        finally:
            self._headers_read()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._headers_read()

    def _headers_read(self) -> None:
        timer = self.__dict__.pop("_timer", None)
        if timer is not None:
            timer.close()
            self.server.waiting_ends()

    def _handle_client_error(self, ex):
        if isinstance(ex, SlowClient):  # timed out in the headers: close, say nothing
            self.server.count_slow(ex)
            return None
        return super()._handle_client_error(ex)

    def read_requestline(self):
        try:
            return super().read_requestline()
        except SlowClient as e:
            self.server.count_slow(e)
            raise


class GuardedServer(WSGIServer):
    """See the module's docstring.

    :param header_timeout: seconds for a request's line and headers.
    :param handshake_timeout: seconds for a TLS handshake.
    :param max_pending: connections at most in either stage at once (the oldest closed).
    :param hits: a ``collections.Counter`` of what the limits stopped.
    """

    def __init__(self, *args, header_timeout: float = 10.0, handshake_timeout: float = 10.0,
                 max_pending: int = 512, hits: collections.Counter | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.hits = hits if hits is not None else collections.Counter()
        # greenlet -> its timer, oldest first: the connections not yet through their headers
        self.waiting: collections.OrderedDict = collections.OrderedDict()
        self.emfile_quiet_until = 0.0

    # -- the waiting stage -------------------------------------------------------------------

    def pending_cap(self) -> int:
        """``max_pending``, but never more than half the open-file limit (it may be lowered
        while we run: prlimit), so waiting connections cannot take every descriptor."""
        return max(1, min(self.max_pending, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2))

    def waiting_starts(self, timer: gevent.Timeout) -> None:
        while len(self.waiting) >= self.pending_cap():
            self.evict_oldest("pending_evicted")
        self.waiting[gevent.getcurrent()] = timer

    def waiting_ends(self) -> None:
        self.waiting.pop(gevent.getcurrent(), None)

    def evict_oldest(self, why: str) -> bool:
        if not self.waiting:
            return False
        greenlet, timer = self.waiting.popitem(last=False)
        timer.close()
        self.hits[why] += 1
        greenlet.kill(SlowClient(why), block=False)  # raised where it waits: it closes
        return True

    def count_slow(self, e: SlowClient) -> None:
        if e.args and e.args[0] in ("header", "handshake"):
            self.hits[f"{e.args[0]}_timeout"] += 1

    # -- TLS ---------------------------------------------------------------------------------

    def wrap_socket_and_handle(self, client_socket, address):
        timer = gevent.Timeout.start_new(self.handshake_timeout, SlowClient("handshake"))
        self.waiting_starts(timer)
        try:
            ssl_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except SlowClient as e:
            self.count_slow(e)
            raise
        finally:
            timer.close()
            self.waiting_ends()
        with ssl_socket:
            return self.handle(ssl_socket, address)

    # -- accepting ---------------------------------------------------------------------------

    def do_read(self):
        try:
            return super().do_read()
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        self.hits["file_limit"] += 1
        for _ in range(EVICT_ON_EMFILE):
            self.evict_oldest("file_limit_evicted")
        if time.monotonic() >= self.emfile_quiet_until:
            self.emfile_quiet_until = time.monotonic() + 10
            log.warning("out of file descriptors (%s): closed the oldest connection still "
                        "sending its request; raise LimitNOFILE or lower "
                        "--max-pending-connections (logged at most every 10 s)",
                        "too many open files")
        # gevent's own backoff after a failed accept, without its traceback
        self.stop_accepting()
        self._timer = self.loop.timer(ACCEPT_PAUSE)
        self._timer.start(self._start_accepting_if_started)
        return None
