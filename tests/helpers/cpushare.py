"""The test run's CPU lock, shared by the xdist workers (tests/conftest.py takes it around
each test): POSIX record locks on bytes 1..SERIAL_LANES of one file. A serial test holds one
byte (a lane) exclusively, an ordinary test holds every byte shared: serial tests run beside
each other, up to SERIAL_LANES at once, and never beside an ordinary test."""
from __future__ import annotations

import fcntl
import time
from pathlib import Path

SERIAL_LANES = 2


class CpuShare:
    """This worker's hold on the run's CPU lock: none, every lane shared (an ordinary test)
    or one lane exclusive (a serial test)."""

    def __init__(self) -> None:
        self.files = None
        self.held: tuple[int, int, int] | None = None  # (mode, length, first byte)

    def take(self, run_dir: Path, serial: bool) -> None:
        if self.held is not None and (self.held[0] == fcntl.LOCK_EX) == serial:
            return
        if self.files is None:
            self.files = (open(run_dir / "cpu-share.turnstile", "a"),
                          open(run_dir / "cpu-share.lock", "a+"))  # a+: a shared lock needs read access
        turnstile, lock = self.files
        self.give_up()
        # the turnstile keeps a waiting serial test from being starved by the other
        # workers' stream of tests: once it waits, no other test starts
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            self.held = self.free_lane(lock) if serial else self.every_lane(lock)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    @staticmethod
    def every_lane(lock) -> tuple[int, int, int]:
        fcntl.lockf(lock, fcntl.LOCK_SH, SERIAL_LANES, 1)
        return fcntl.LOCK_SH, SERIAL_LANES, 1

    @staticmethod
    def free_lane(lock) -> tuple[int, int, int]:
        while True:  # the lanes free up as tests end; a serial test is seconds long
            for lane in range(1, SERIAL_LANES + 1):
                try:
                    fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, lane)
                    return fcntl.LOCK_EX, 1, lane
                except OSError:
                    pass
            time.sleep(0.05)

    def give_up(self) -> None:
        if self.held is not None:
            _, length, start = self.held
            fcntl.lockf(self.files[1], fcntl.LOCK_UN, length, start)
            self.held = None
