"""The CPU lock the test run's workers share (tests/helpers/cpushare.py), with real processes
and real record locks: serial tests beside each other up to the lane count, never beside an
ordinary test."""
from __future__ import annotations

import multiprocessing
import time

from tests.helpers.cpushare import SERIAL_LANES, CpuShare


def hold(run_dir, serial: bool, took, release) -> None:
    share = CpuShare()
    share.take(run_dir, serial)
    took.set()
    release.wait(10)
    share.give_up()


class Holder:
    """One worker, in a process of its own (record locks are per process)."""

    def __init__(self, ctx, run_dir, serial: bool) -> None:
        self.took, self.release = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=hold, args=(run_dir, serial, self.took, self.release))
        self.proc.start()

    def stop(self) -> None:
        self.release.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        assert self.proc.exitcode == 0


def test_serial_tests_share_the_lanes_and_keep_ordinary_tests_out(tmp_path):
    ctx = multiprocessing.get_context("fork")
    holders = []
    try:
        serial = [Holder(ctx, tmp_path, True) for _ in range(SERIAL_LANES)]
        holders += serial
        assert all(h.took.wait(5) for h in serial), "the lanes are not shared"
        one_more = Holder(ctx, tmp_path, True)
        time.sleep(0.3)  # it waits at the turnstile first: the ordinary test waits behind it
        ordinary = Holder(ctx, tmp_path, False)
        holders += [one_more, ordinary]
        time.sleep(0.5)
        assert not ordinary.took.is_set(), "an ordinary test beside serial ones"
        assert not one_more.took.is_set(), f"more than {SERIAL_LANES} serial tests at once"
        serial[0].stop()
        # the serial test takes the lane that freed; the ordinary one waits for every lane
        assert one_more.took.wait(5) and not ordinary.took.is_set()
        serial[1].stop()
        one_more.stop()
        assert ordinary.took.wait(5)
        other = Holder(ctx, tmp_path, False)
        holders.append(other)
        assert other.took.wait(5), "ordinary tests do not share"
        late = Holder(ctx, tmp_path, True)
        holders.append(late)
        time.sleep(0.5)
        assert not late.took.is_set(), "a serial test beside ordinary ones"
        ordinary.stop()
        other.stop()
        assert late.took.wait(5)
    finally:
        for h in holders:
            h.stop()
