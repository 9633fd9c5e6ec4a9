"""The peers benchmark's own parts, on real processes: the Node peer servers answer the same
JS clients the benchmark drives them with, on both protocol revisions, and count what they
ack; the tables and the plot come out of a result. (The benchmark itself: python -m
benchmarks --only peers.)"""
from __future__ import annotations

import json

import pytest

from benchmarks import peers, report
from benchmarks.common import make_jpeg

needs_npm = pytest.mark.skipif(
    not (peers.NODE_PEERS / "node_modules" / "bufferutil").exists()
    or not (peers.JS_CLIENTS / "node_modules" / "sio4").exists(),
    reason="npm ci in benchmarks/node_peers and tests/js first")


@needs_npm
@pytest.mark.parametrize("revision,bufferutil", [("4", True), ("4", False), ("2", True)])
def test_node_peer_acks_and_counts_what_jsload_sends(tmp_path, revision, bufferutil):
    frame = tmp_path / "f.jpg"
    frame.write_bytes(make_jpeg(256, 192))
    server = peers.NodePeer(revision, bufferutil, tmp_path)
    try:
        server.wait_ready()  # also checks bufferutil is in use, or not, as asked
        target = peers.Target("peer", "peer", server, (revision,))
        drivers = peers.start_drivers(revision, [target], 1, {"10KB": frame}, tmp_path, "t")
        try:
            acked = peers.window(drivers, target, peers.MODES["ack w4"], "10KB", 1.0, 0.2, 0.1)
            paced = peers.window(drivers, target, peers.MODES["paced"], "10KB", 1.0, 0.2, 0.1)
        finally:
            for drv in drivers:
                drv.stop()
        assert acked["sent"] > 0 and acked["unacked"] == 0 and acked["disconnects"] == 0
        assert acked["frames"] > 0 and acked["ack_ms"]["n"] > 0
        assert paced["sent"] > 0 and paced["frames"] > 0 and paced["disconnects"] == 0
        assert target.count() == sum(r["sent"] for r in (acked, paced))
    finally:
        server.stop()


def w(fpcs: int, valid: bool = True) -> dict:
    """One measured window, as peers.window returns it (the fields the tables read)."""
    return {"frames_per_cpu_s": fpcs, "fps": 100.0, "valid": valid,
            "frames_per_daemon_cpu_s": fpcs // 2}


def test_tables_ratios_and_late_windows(tmp_path):
    res = {"config": {"connections": 4, "drivers_per_revision": 2, "rounds": 1, "window_s": 1.1,
                      "measured_s": 0.75, "paced_hz": 50, "phone_hz": 2.0, "phone_window_s": 3},
           "versions": {k: "x" for k in ("socket.io-client 4", "socket.io-client 2", "node",
                                         "socket.io", "socket.io 2", "bufferutil",
                                         "python-socketio", "python-engineio", "uvicorn",
                                         "websockets")},
           "frame_bytes": {"10KB": 10000, "60KB": 60000},
           "cells": {"EIO4 10KB ack w1": {"camstream": [w(3000)], "node4bu": [w(6000)],
                                          "node4": [w(3000)], "uvicorn": [w(1500)],
                                          "stock": [w(99, valid=False)]},
                     "EIO4 60KB ack w1": {"camstream": [w(2000)], "node4bu": [w(8000)]},
                     "EIO3 10KB ack w1": {"camstream": [w(3000), w(2000)], "node2bu": [w(4000)]}},
           "many_phones": {}}
    text = report.peers_markdown(res, "0123456789abcdef", "quick")
    row = next(line for line in text.splitlines() if line.startswith("| 10KB ack w1 | 3,000"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["3,000", "6,000", "3,000", "1,500", "late"]
    assert cells[6:10] == ["0.5", "1", "2", ""]        # camstream / each peer
    assert "| 10KB ack w1 | 2,000-3,000 | 4,000 |" in text   # EIO3: a range over rounds
    assert "commit `0123456789ab`" in text and "Engine.IO 3" in text
    png = tmp_path / "peers.png"
    report.plot_peers(res, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(res)
