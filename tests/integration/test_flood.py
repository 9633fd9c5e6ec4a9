"""What made ingest fast and bounded, guarded (not timed): a flood without acks leaves ingest's
memory bounded and the other clients served, and what could not be processed is dropped at
ingest and counted."""
from __future__ import annotations

import json
import threading
import time

import pytest
import websocket

from tests.helpers import make_jpeg, wait_for
from tests.helpers.streaming import Streamer

PLACEHOLDER = '451-["receiveImage",{"_placeholder":true,"num":0}]'


def flood(url: str, name: str, jpeg: bytes, seconds: float, sent: list[int]) -> None:
    """A raw Engine.IO 4 websocket that sends receiveImage as fast as TCP takes it, never
    reading: a flooder that never reads what the server sends."""
    ws = websocket.create_connection(
        url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", timeout=10)
    try:
        assert ws.recv().startswith("0{")
        ws.send("40" + json.dumps({"username": name, "password": ""}))
        assert ws.recv().startswith("40{")
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            ws.send(PLACEHOLDER)
            ws.send_binary(jpeg)
            n += 1
        sent.append(n)
    finally:
        ws.close()


@pytest.mark.serial
def test_a_flood_without_acks_is_bounded_and_counted(daemons):
    d = daemons("--max-fps", "100000", workers=1)
    ingest = d.child("ingest")
    rss_before = ingest.memory_info().rss
    steady = Streamer(d.url, "steady", fps=10).start()
    jpeg = make_jpeg(640, 480, seed=3)
    sent: list[int] = []
    floods = [threading.Thread(target=flood, args=(d.url, f"flood{i}", jpeg, 6.0, sent))
              for i in range(3)]
    peak = rss_before
    for t in floods:
        t.start()
    while any(t.is_alive() for t in floods):
        peak = max(peak, ingest.memory_info().rss)
        time.sleep(0.2)
    for t in floods:
        t.join(timeout=15)
    steady.stop()
    assert len(sent) == 3 and sum(sent) > 300, sent

    # memory stayed bounded: frames were dropped at ingest, not queued in greenlets or buffers
    assert peak - rss_before < 100 * 1024 * 1024, (rss_before, peak)
    # the steady client was served throughout and never disconnected
    assert steady.disconnects == 0 and steady.errors == 0, d.output()[-3000:]
    assert len(steady.acks) >= 40 and all(a["accepted"] for a in steady.acks)

    def counted():
        h = d.health()["clients"]
        rows = [h.get(f"flood{i}") for i in range(3)]
        return all(r and r["received"] == r["refused"] + r["dropped"] + r["dispatched"]
                   for r in rows) and rows
    rows = wait_for(counted, 20, what="every flooded frame accounted for")
    assert sum(r["received"] for r in rows) == sum(sent)
    assert sum(r["dropped"] for r in rows) > 0, "the one worker could not keep up: drops"
    steady_row = d.health()["clients"]["steady"]
    assert steady_row["processed"] >= 0.9 * steady_row["received"], steady_row
