"""Limits that keep one client from costing the others: frame rate, connections per address,
and failed logins. Each is a setting with a sane default; what they refuse is counted."""
from __future__ import annotations

import time


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
    """Growing delays after failed logins, per address and per username: after the n-th failure
    in a row the next attempt is refused without checking for ``base * 2**(n-1)`` seconds
    (at most ``ceiling``). A success clears the record of that address and username."""

    def __init__(self, base: float = 0.5, ceiling: float = 60.0, max_keys: int = 100_000):
        self.base = base
        self.ceiling = ceiling
        self.max_keys = max_keys
        self.failures: dict[str, tuple[int, float]] = {}  # key -> (failures, refused until)

    def wait(self, address: str, username: str) -> float:
        """Seconds before this address or username may try again (0: now)."""
        now = time.monotonic()
        until = max(self.failures.get("a:" + address, (0, 0.0))[1],
                    self.failures.get("u:" + username, (0, 0.0))[1])
        return max(0.0, until - now)

    def failed(self, address: str, username: str) -> None:
        now = time.monotonic()
        if len(self.failures) >= self.max_keys:  # bound the memory an attacker can make us use
            self.failures = {k: v for k, v in self.failures.items() if v[1] > now}
        for key in ("a:" + address, "u:" + username):
            count = self.failures.get(key, (0, 0.0))[0] + 1
            self.failures[key] = (count, now + min(self.ceiling, self.base * 2 ** (count - 1)))

    def succeeded(self, address: str, username: str) -> None:
        self.failures.pop("a:" + address, None)
        self.failures.pop("u:" + username, None)


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
