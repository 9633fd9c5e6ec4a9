"""Limits that keep one client from costing the others: frame rate, connections per address,
and failed logins. Each is a setting with a sane default; what they refuse is counted."""
from __future__ import annotations

import time

# Binary attachments one Socket.IO packet may announce, in either revision (an event of ours
# carries one: the JPEG). The reference servers' parser (npm socket.io-parser 3.x and 4.x)
# refuses more than 10; tests/integration/test_hostile_net.py announces 4 and
# tests/integration/test_legacy.py expects 9 refused: 8 sits between.
MAX_ATTACHMENTS = 8


def transport_cap(max_frame_bytes: int) -> int:
    """The largest message a transport takes (a websocket message, a polling body): a frame
    just over ``--max-frame-size`` is still read and refused politely, with a reason, up to
    1.5 times it (base64 over polling adds a third); beyond it the connection is closed."""
    return int(max_frame_bytes * 1.5) + 65536


class FrameRate:
    """A token bucket: ``rate`` frames a second on average, bursts of up to one second's worth."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LoginThrottle:
    """Failed logins, throttled the usual way, so that failures from one address cannot lock
    a user out from another:

    - per (address, name): after the n-th failure in a row the pair is refused for
      ``base * 2**(n-1)`` seconds (at most ``ceiling``);
    - per address, whatever the names: the same, once it has more than ``address_free``
      failures in a row (an address guessing many names);
    - per name, from every address: never refused, only slowed: each check of the name
      waits ``name_step`` seconds per recent failure, ``name_slow`` at most.

    An attempt counts as a failure from the moment it is let through (:meth:`begin`, before
    the password is hashed), so simultaneous guesses meet the delay the first one set; a
    success takes its failure back (:meth:`end`). A record is forgotten ``ceiling`` seconds
    after its delay ended.
    """

    def __init__(self, base: float = 0.5, ceiling: float = 60.0, address_free: int = 4,
                 name_step: float = 0.1, name_slow: float = 2.0,
                 max_keys: int = 100_000) -> None:
        self.base = base
        self.ceiling = ceiling
        self.address_free = address_free
        self.name_step = name_step
        self.name_slow = name_slow
        self.max_keys = max_keys
        self.records: dict[tuple, list] = {}  # key -> [failures, refused until, last seen]

    def _get(self, key: tuple, now: float) -> list:
        rec = self.records.get(key)
        if rec is not None and now > rec[1] + self.ceiling and now > rec[2] + self.ceiling:
            rec = None  # long quiet: forgotten
        if rec is None:
            if len(self.records) >= self.max_keys:  # bound what an attacker can make us hold
                self.records = {k: v for k, v in self.records.items()
                                if now <= max(v[1], v[2]) + self.ceiling}
            rec = self.records[key] = [0, 0.0, now]
        return rec

    def _fail(self, rec: list, now: float, free: int = 0) -> None:
        rec[0] += 1
        rec[2] = now
        if rec[0] > free:
            rec[1] = now + min(self.ceiling, self.base * 2 ** (rec[0] - free - 1))

    def wait(self, address: str, name: str) -> float:
        """Seconds before this address may try this name again (0: now), without trying."""
        now = time.monotonic()
        until = max(rec[1] for rec in (self.records.get(("pair", address, name)),
                                        self.records.get(("addr", address)), [0, 0.0, 0])
                    if rec is not None)
        return max(0.0, until - now)

    def begin(self, address: str, name: str) -> tuple[float, float]:
        """``(refused, slow)``: refused > 0 is the seconds before this address may try this
        name again (the attempt is not made); else the attempt is in flight, to be checked
        after ``slow`` seconds and then reported with :meth:`end`."""
        now = time.monotonic()
        pair, addr = self._get(("pair", address, name), now), self._get(("addr", address), now)
        refused = max(pair[1], addr[1]) - now
        if refused > 0:
            return refused, 0.0
        self._fail(pair, now)
        self._fail(addr, now, self.address_free)
        name_rec = self.records.get(("name", name))
        failures = name_rec[0] if name_rec and now <= name_rec[2] + self.ceiling else 0
        return 0.0, min(self.name_slow, self.name_step * failures)

    def end(self, address: str, name: str, ok: bool) -> None:
        now = time.monotonic()
        if ok:
            self.records.pop(("pair", address, name), None)
            addr = self.records.get(("addr", address))
            if addr is not None:
                addr[0] = max(0, addr[0] - 1)
                if addr[0] <= self.address_free:
                    addr[1] = 0.0
        else:
            self._fail(self._get(("name", name), now), now, free=1 << 30)  # counts, no delay


class ConnectionCount:
    """Open connections per address. ``refused`` counts every refusal; ``first_refusal()``
    says whether the last one was the first from that address since it last held none (log
    that one, not each of a thousand)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.refused = 0
        self.refused_from: dict[str, int] = {}  # only addresses holding connections: bounded

    def acquire(self, address: str) -> bool:
        n = self.open.get(address, 0)
        if n >= self.limit:
            self.refused += 1
            self.refused_from[address] = self.refused_from.get(address, 0) + 1
            return False
        self.open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self.open.get(address, 0) - 1
        if n > 0:
            self.open[address] = n
        else:
            self.open.pop(address, None)
            self.refused_from.pop(address, None)

    def first_refusal(self, address: str) -> bool:
        return self.refused_from.get(address) == 1


class IncompleteEvents:
    """Bytes held for events whose binary attachments have not all arrived (both protocol
    revisions): one connection at most ``per_connection`` (one message's worth), all of
    them together at most ``total``, each event for ``timeout`` seconds at most. A client
    announcing attachments it never sends held 42 MB per Engine.IO 3 session before."""

    def __init__(self, per_connection: int, total: int, timeout: float) -> None:
        self.per_connection = per_connection
        self.total = total
        self.timeout = timeout
        self.held: dict = {}  # (kind, id) -> [bytes held, monotonic start]
        self.bytes = 0

    def start(self, key) -> None:
        """An event announced attachments: its clock starts."""
        if key not in self.held:
            self.held[key] = [0, time.monotonic()]

    def add(self, key, nbytes: int) -> str:
        """An attachment arrived; a reason to close the connection, or ""."""
        entry = self.held.setdefault(key, [0, time.monotonic()])
        if entry[0] + nbytes > self.per_connection:
            return (f"an event's attachments over {self.per_connection} bytes "
                    "(--max-frame-size)")
        if self.bytes + nbytes > self.total:
            return f"incomplete events hold {self.bytes} bytes (--max-incomplete-bytes)"
        entry[0] += nbytes
        self.bytes += nbytes
        return ""

    def done(self, key) -> None:
        """The event completed, or its connection went."""
        entry = self.held.pop(key, None)
        if entry is not None:
            self.bytes -= entry[0]

    def expired(self, kind: str) -> list:
        """Keys ``(kind, id)`` of the events of that kind (the protocol revision) older than
        ``timeout``, still held: the caller closes their connections."""
        before = time.monotonic() - self.timeout
        return [key for key, (_, start) in self.held.items()
                if key[0] == kind and start < before]

