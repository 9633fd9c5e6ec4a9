"""What "alive" means for a process that reports on the bus: one policy for the supervisor
(its watchdog, status line and murders), ingest's /healthz and its router.

Every child reports on the bus several times a second (a worker every 0.25 s, ingest every
0.5 s), so a report younger than ``ALIVE_S`` proves that its sender answers; a process silent
for the hung limit (``--worker-timeout``) is hung and is killed; a new process has
``START_GRACE_S`` to send its first report. Pure: the clock is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

ALIVE_S = 3.0         # a report this recent proves its sender answers
START_GRACE_S = 30.0  # a new process's time to send its first report (imports, models)


@dataclass(frozen=True)
class Liveness:
    hung_s: float                      # --worker-timeout: silent this long after a report
    alive_s: float = ALIVE_S
    start_grace_s: float = START_GRACE_S

    def alive(self, last_report: float | None, now: float) -> bool:
        """Counted alive: /healthz's workers, the watchdog, ``workers 2/2``."""
        return last_report is not None and now - last_report < self.alive_s

    def overdue(self, started: float, last_report: float | None, now: float) -> float | None:
        """How long a process has been silent, once that is past what it is allowed (the
        hung limit after a report, the start grace before its first): then it is hung."""
        silent = now - (started if last_report is None else last_report)
        limit = self.start_grace_s if last_report is None else self.hung_s
        return silent if silent > limit else None
