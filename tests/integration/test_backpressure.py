"""Backpressure that reaches the client: a client pacing itself on acks is paced to what the
pipeline processes (the ack of a ``frame`` leaves when the frame leaves its mailbox for a
worker), so at saturation its frames are not dropped; ``receiveImage`` (no ack, the Android
app) keeps newest-wins. Counted from /healthz, not timed."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import socketio

from tests.helpers import ROOT, make_jpeg, terminate, wait_for

pytestmark = pytest.mark.serial  # a share of frames at saturation: alone on the machine
ACK_CLIENT = ROOT / "benchmarks" / "ackclient.js"
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"

# one worker that takes 20 ms a frame: about 50 frames a second, far below what the clients
# offer
SLOW = '''
import time

def work(image, header):
    time.sleep(0.02)
    return {"ok": True}
'''


def ack_paced(url: str, name: str, frames: int, window: int, jpeg: bytes) -> dict:
    """Send ``frames`` frames with acks, ``window`` in flight; what the acks said."""
    sio = socketio.Client(reconnection=False)
    sio.connect(url, transports=["websocket"], wait_timeout=10, auth={"username": name})
    slots = threading.Semaphore(window)
    acks: list[dict] = []
    done = threading.Event()

    def acked(result):
        acks.append(result)
        slots.release()
        if len(acks) == frames:
            done.set()
    try:
        for n in range(frames):
            assert slots.acquire(timeout=20), "no ack within 20 s"
            sio.emit("frame", ({"n": n}, jpeg), callback=acked)
        assert done.wait(30), f"{len(acks)} of {frames} acks"
    finally:
        sio.disconnect()
    return {"acks": acks}


def settled(d, names: list[str]) -> dict:
    """/healthz once every frame of these clients is processed, dropped or failed."""
    def check():
        rows = d.health()["clients"]
        if all(name in rows and rows[name]["received"] and rows[name]["received"] ==
               rows[name]["processed"] + rows[name]["dropped"] + rows[name]["errors"] +
               rows[name]["refused"] for name in names):
            return rows
        return None
    return wait_for(check, 30, what="every frame accounted for")


@pytest.fixture
def saturated(daemons, tmp_path):
    (tmp_path / "slowproc.py").write_text(SLOW)
    return daemons("--processor", "slowproc:work", "--max-fps", "100000", workers=1,
                   env={"PYTHONPATH": str(tmp_path)})


def test_ack_paced_clients_at_saturation_lose_at_most_5_percent(saturated):
    """Three ack-paced python-socketio clients (window 1, 4, 8) against a pipeline of about
    50 frames/s: the mailbox holds their frames in flight, the acks pace them, ≤ 5 % drop."""
    jpeg = make_jpeg(320, 240)
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda n=name, w=window: results.__setitem__(
        n, ack_paced(saturated.url, n, 60, w, jpeg))) for name, window in
        (("w1", 1), ("w4", 4), ("w8", 8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {"w1", "w4", "w8"}
    rows = settled(saturated, ["w1", "w4", "w8"])
    for name in ("w1", "w4", "w8"):
        row = rows[name]
        assert row["received"] == 60 and row["refused"] == 0
        assert row["dropped"] <= 0.05 * row["received"], (name, row)
        assert all(a["accepted"] for a in results[name]["acks"])


@pytest.mark.skipif(shutil.which("node") is None or not NODE_MODULES.is_dir(),
                    reason="needs node and tests/js/node_modules")
@pytest.mark.parametrize("client", ["4", "2"])
def test_js_ack_paced_client_at_saturation(saturated, tmp_path, client):
    """The same with the JS client (4.x: Engine.IO 4, the lean websocket path; 2.x: the
    Engine.IO 3 revision), window 4, for 3 s."""
    out, go = tmp_path / f"js{client}.json", tmp_path / f"go{client}"
    cfg = {"url": saturated.url, "client": client, "name": f"js{client}",
           "frame": str(tmp_path / "f.jpg"), "window": 4, "duration": 3, "out": str(out),
           "go": str(go)}
    Path(cfg["frame"]).write_bytes(make_jpeg(320, 240))
    proc = subprocess.Popen(["node", str(ACK_CLIENT), json.dumps(cfg)], cwd=ROOT)
    try:
        wait_for(lambda: Path(f"{out}.ready").exists() or proc.poll() is not None, 20,
                 what="the JS client to log in")
        go.write_text(repr(time.time()))
        proc.wait(timeout=40)
    finally:
        terminate(proc)
    report = json.loads(out.read_text())
    assert report["sent"] > 20 and report["acked"] == report["sent"], report
    row = settled(saturated, [f"js{client}"])[f"js{client}"]
    assert row["received"] == report["sent"]
    assert row["dropped"] <= 0.05 * row["received"], row


def test_receive_image_keeps_newest_wins(saturated, clients):
    """Frames without an ack are not held back: at saturation the mailbox keeps the newest
    and drops the rest, as before."""
    jpeg = make_jpeg(320, 240)
    sio = clients(saturated.url, username="phone")
    for _ in range(200):
        sio.emit("receiveImage", jpeg)
    row = settled(saturated, ["phone"])["phone"]
    assert row["received"] == 200 and row["dropped"] > 100, row
