"""Which worker gets a client's frames, when the processor needs them in order.

The pipeline's shared PUSH deals frames to whichever worker is free: right for processors that
look at one frame at a time, wrong for those that keep a model per client across frames
(``motion``: a background model fed every third frame, by three workers, learns three
backgrounds). With ``--route client`` (the default for processors marked ``ordered``) ingest
binds one PUSH per worker instead, and the :class:`Router` binds each client to one worker:

- a client is bound on its first frame to the live worker with the fewest active clients
  (ties: the lightest recent frame rate, then the lowest index), and stays there; while the
  pool starts (until every expected worker has reported, ``SETTLE_S`` at most) its frames
  wait instead, so that the first clients do not all land on the first worker to report;
- a worker that stops reporting for ``stale_s`` (or says it is stopping) loses its clients to
  the others (a crashed worker that the supervisor replaces in time keeps them: the new
  process has the same index);
- when the busiest worker has two clients more than the idlest (a worker was added, clients
  left), one client moves over at each check: its model starts again on the new worker;
- a client silent for ``idle_s`` is forgotten (as the worker forgets its model).

Balance is by clients, not frames: one client's frames cannot be split without losing their
order, so with fewer clients than workers some workers idle.
"""
from __future__ import annotations

import logging

from camstream.ingest.ledger import WORKER_STALE_S

log = logging.getLogger("camstream.ingest")

ACTIVE_S = 5.0    # a client that sent a frame this recently counts towards its worker's load
SETTLE_S = 3.0    # at start, how long clients wait for the workers that have not reported yet
IDLE_S = 60.0     # a client silent this long is forgotten (motion forgets its model too)
RATE_WEIGHT = 0.3  # weight of the newest interval in each client's frame-rate average


class Router:
    def __init__(self, stale_s: float = WORKER_STALE_S, idle_s: float = IDLE_S,
                 expected: int = 0) -> None:
        """``expected``: the workers the pool starts with (``serve -w``)."""
        self.stale_s = stale_s
        self.idle_s = idle_s
        self.expected = expected
        self.first_report: float | None = None
        self.seen: dict[int, float] = {}      # worker index -> when it last reported
        self.last_read = 0.0                  # when ingest last read the reports
        self.stopping: set[int] = set()       # workers that said they are stopping
        self.owner: dict[str, int] = {}       # client -> the worker it is bound to
        self.last_frame: dict[str, float] = {}
        self.frames: dict[str, int] = {}      # since the last check
        self.rate: dict[str, float] = {}      # frames per second, a moving average
        self.last_check = 0.0
        self.moves = 0                        # clients moved to another worker

    # -- workers ---------------------------------------------------------------------------------

    def alive(self, index: int) -> bool:
        """Judged at the last time ingest read the reports, not now: an ingest that was
        itself stopped (SIGSTOP, a suspended machine) must not find every worker dead."""
        return self.last_read - self.seen.get(index, -1e9) < self.stale_s

    def live(self) -> list[int]:
        return sorted(i for i in self.seen if self.alive(i))

    def worker_seen(self, index: int, now: float, stopping: bool = False) -> None:
        """A worker reported. One that is stopping (SIGTTOU, drain) takes no more clients:
        it would never go idle enough to finish."""
        self.last_read = max(self.last_read, now)
        if self.first_report is None:
            self.first_report = now
        if stopping:
            self.seen.pop(index, None)
            self.stopping.add(index)
        else:
            self.seen[index] = now
            self.stopping.discard(index)

    # -- clients ---------------------------------------------------------------------------------

    def frame(self, client: str, now: float) -> None:
        self.frames[client] = self.frames.get(client, 0) + 1
        self.last_frame[client] = now

    def worker_for(self, client: str, now: float) -> int | None:
        """The worker ``client``'s frames go to, binding it if need be; None while no worker
        is alive."""
        owner = self.owner.get(client)
        if owner is not None and self.alive(owner):
            return owner
        live = self.live()
        if not live or (owner is None and self.starting(live, now)):
            return None
        clients, load = self.loads(now)
        best = min(live, key=lambda i: (clients[i], load[i], i))
        self.owner[client] = best
        if owner is None:
            log.info("client %r -> worker %d", client, best)
        else:
            self.moves += 1
            log.warning("client %r -> worker %d (worker %d %s)", client, best, owner,
                        "is stopping" if owner in self.stopping else "stopped reporting")
        return best

    def starting(self, live: list[int], now: float) -> bool:
        """Whether the pool is still starting: some expected worker has not reported yet."""
        return len(live) < self.expected and now - self.first_report < SETTLE_S

    def loads(self, now: float) -> tuple[dict[int, int], dict[int, float]]:
        """Per live worker: its active clients, and their summed frame rates."""
        clients = dict.fromkeys(self.live(), 0)
        load = dict.fromkeys(clients, 0.0)
        for client, index in self.owner.items():
            if index in clients and now - self.last_frame.get(client, -1e9) < ACTIVE_S:
                clients[index] += 1
                load[index] += self.rate.get(client, 0.0)
        return clients, load

    def check(self, now: float) -> None:
        """Twice a second, after reading the reports: update the rates, forget idle clients,
        move one client from the busiest worker to the idlest when they differ by two clients
        or more."""
        self.last_read = max(self.last_read, now)
        elapsed = now - self.last_check
        if self.last_check and elapsed > 0:
            for client in self.owner:
                fps = self.frames.get(client, 0) / elapsed
                self.rate[client] = (1 - RATE_WEIGHT) * self.rate.get(client, fps) \
                    + RATE_WEIGHT * fps
        self.frames.clear()
        self.last_check = now
        for client in [c for c, t in self.last_frame.items() if now - t >= self.idle_s]:
            for table in (self.owner, self.last_frame, self.rate):
                table.pop(client, None)
        clients, load = self.loads(now)
        if len(clients) < 2:
            return
        busiest = max(clients, key=lambda i: (clients[i], load[i], -i))
        idlest = min(clients, key=lambda i: (clients[i], load[i], i))
        if clients[busiest] - clients[idlest] < 2:
            return
        movable = [c for c, i in self.owner.items() if i == busiest
                   and now - self.last_frame.get(c, -1e9) < ACTIVE_S]
        client = min(movable, key=lambda c: (self.rate.get(c, 0.0), c))
        self.owner[client] = idlest
        self.moves += 1
        log.info("client %r -> worker %d (from worker %d, to balance the pool: %d and %d "
                 "clients)", client, idlest, busiest, clients[busiest], clients[idlest])
