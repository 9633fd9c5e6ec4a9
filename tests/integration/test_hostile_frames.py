"""Frames built to be costly (a progressive JPEG whose scan repeats thousands of times, a tiny
file declaring 8192x8192), a frame that gets a worker stuck, and /healthz saying the truth
about it all: what they cost the sender, and what they cost everyone else."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import requests
from tests.helpers import ROOT, free_port, make_jpeg, wait_for
from tests.helpers.hostile_jpeg import declaring, repeated_scans
from tests.helpers.streaming import Streamer

from camstream.cli.args import pixels_arg
from workers import jpeg


# -- the header check, as a pure function --------------------------------------------------------

def patched(data: bytes, marker: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(data)
    at = out.find(marker)
    out[at + offset:at + offset + len(value)] = value
    return bytes(out)


GOOD = make_jpeg(640, 480)
PROGRESSIVE = cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8),
                           [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()


@pytest.mark.parametrize("data, reason", [
    (GOOD, ""),
    (PROGRESSIVE, ""),
    (repeated_scans(640, 480, 20), ""),                 # 30 scans: still what an optimiser makes
    (repeated_scans(640, 480, 40), "too many scans"),
    (declaring(8192, 8192), "over --max-pixels"),
    (declaring(4000, 4000), ""),                        # 16 MP: allowed by default
    (GOOD[:len(GOOD) // 2], "truncated"),
    (b"\x89PNG\r\n\x1a\n" + GOOD, "not a JPEG"),
    (GOOD[:2] + b"\xff\xd9", "truncated"),
    (patched(GOOD, b"\xff\xc0", 1, b"\xc3"), "unsupported kind"),     # lossless
    (patched(GOOD, b"\xff\xc0", 1, b"\xc9"), "unsupported kind"),     # arithmetic
    (patched(GOOD, b"\xff\xc0", 4, b"\x0c"), "unsupported kind"),     # 12-bit
    (patched(GOOD, b"\xff\xc0", 5, b"\x00\x00"), "malformed"),        # height 0 (DNL)
    (patched(GOOD, b"\xff\xdb", 2, b"\xff\xf0"), "malformed"),        # a segment past the end
])
def test_the_header_check(data, reason):
    assert jpeg.problem(data)[0] == reason, jpeg.problem(data)
    assert jpeg.problem(memoryview(data))[0] == reason  # as workers hand it: a buffer


def test_max_pixels_is_a_flag_with_units():
    assert pixels_arg("16M") == 16_000_000 and pixels_arg("4096x4096") == 4096 * 4096
    assert pixels_arg("1200000") == 1_200_000 and pixels_arg("2.5m") == 2_500_000
    assert jpeg.problem(declaring(4096, 4096), max_pixels=pixels_arg("4096x4096")) == ("", "")
    r = subprocess.run([sys.executable, "-m", "camstream", "serve", "-p", str(free_port()),
                        "--max-pixels", "lots"], capture_output=True, text=True, timeout=30,
                       cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a pixel count" in r.stderr


# -- what a hostile sender costs others ----------------------------------------------------------

@pytest.mark.serial
def test_costly_frames_at_the_allowed_rate_cost_another_client_under_ten_percent(daemons):
    """mallory sends, at --max-fps, the two attacks of the issue (a progressive JPEG whose
    last scan is repeated 16,680 times: 26 s and more in imdecode; a 631-byte file declaring
    8192x8192: 475 MB) and a 4000x4000 one (under --max-pixels, refused for its scans). Each
    is refused from its header, counted as an error with its reason; alice, streaming beside
    it, loses under 10 % of her frames; no worker is replaced or grows."""
    attacks = [repeated_scans(4096, 4096, 16680), repeated_scans(4000, 4000, 16680),
               declaring(8192, 8192)]
    d = daemons("--max-fps", "10", workers=2)
    workers = [d.child("worker 1"), d.child("worker 2")]
    alice = Streamer(d.url, "alice", fps=10).start()
    mallory = Streamer(d.url, "mallory", fps=10, frames=attacks).start()
    try:
        time.sleep(12)
    finally:
        mallory.stop()
        alice.stop()
    h = wait_for(lambda: (h := d.health())["clients"]["alice"]["in_flight"] == 0 and
                 h["clients"]["mallory"]["in_flight"] == 0 and h, 15, what="all reported")
    a, m = h["clients"]["alice"], h["clients"]["mallory"]
    assert alice.accepted >= 80 and mallory.accepted >= 80, (alice.accepted, mallory.accepted)
    assert a["processed"] >= 0.9 * alice.accepted, (a, alice.accepted)
    assert m["processed"] == 0 and m["errors"] == m["dispatched"] - m["lost"] > 0, m
    assert set(m["errors_by"]) == {"too many scans", "over --max-pixels"}, m
    assert h["workers"]["restarts"] == 0 and h["status"] == "ok", h
    for w in workers:
        assert w.is_running() and w.memory_info().rss < 300 * 1024 * 1024
    out = d.output()
    assert "pixels, over --max-pixels 16000000 (further errors of this kind" in out
    scans = jpeg.read(attacks[1]).scans
    assert scans > 16680 and f"is a progressive JPEG of {scans} scans (at most 32" in out


STUCK = '''
import time

def stuck(image, header):
    if header.client == "stuck":
        time.sleep(60)
    return {"ok": True}
'''


@pytest.mark.serial
def test_a_worker_stuck_on_a_frame_is_replaced_and_the_frame_counted(daemons, tmp_path):
    """A frame that gets through the checks and still holds its worker (here a processor
    that sleeps) costs that frame: past --frame-timeout the worker says so, exits and is
    replaced; the frame is counted as an error; the other client goes on."""
    (tmp_path / "stuckproc.py").write_text(STUCK)
    d = daemons("--processor", "stuckproc:stuck", "--frame-timeout", "1", workers=2,
                env={"PYTHONPATH": str(tmp_path)})
    before = {d.child("worker 1").pid, d.child("worker 2").pid}
    alice = Streamer(d.url, "alice", fps=10).start()
    stuck = Streamer(d.url, "stuck", fps=0.5).start()
    try:
        h = wait_for(lambda: (h := d.health())["clients"].get("stuck", {}).get("errors", 0)
                     >= 2 and h, 20, what="two stuck frames counted")
        stuck.stop()
        row = h["clients"]["stuck"]
        assert row["errors_by"].get("over --frame-timeout", 0) >= 2 and not row["processed"]
        wait_for(lambda: d.health()["workers"]["restarts"] >= 2, 10, what="two replacements")
        after = {p.pid for p in d.children() if "worker" in " ".join(p.cmdline())}
        assert after - before, "the stuck workers were replaced"
        wait_for(lambda: d.health()["workers"]["alive"] == 2, 15, what="both workers back")
        processed = d.health()["clients"]["alice"]["processed"]
        time.sleep(3)
    finally:
        stuck.stop()
        alice.stop()
    a = wait_for(lambda: (h := d.health())["clients"]["alice"]["in_flight"] == 0 and h,
                 15, what="alice settled")["clients"]["alice"]
    # alice loses what a stuck worker held of hers, as with any worker that dies (its pipe: a
    # few frames each time), and nothing else: her frames go on being processed
    assert a["errors"] == 0 and a["lost"] <= 2 * 10 and \
        a["processed"] + a["lost"] == a["dispatched"], a
    assert a["processed"] - processed >= 20, "alice's frames processed after the replacements"
    out = d.output()
    assert "took over 1 s (--frame-timeout): counted as an error; this worker exits" in out
    assert "Traceback" not in out


# -- /healthz tells the truth --------------------------------------------------------------------

def metric(d, name: str, reason: str) -> float:
    text = requests.get(d.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} {reason} not in /metrics")


def test_healthz_says_degraded_with_reasons(daemons):
    d = daemons("--worker-timeout", "8", workers=2)
    h = d.health()
    assert h["status"] == "ok" and h["reasons"] == [] and metric(
        d, "camstream_degraded", "workers") == 0
    worker = d.child("worker 2")
    worker.send_signal(signal.SIGSTOP)  # hung: alive < expected until it is replaced
    try:
        h = wait_for(lambda: (h := d.health())["status"] == "degraded" and h, 10,
                     what="degraded")
        assert "1 of 2 workers alive" in h["reasons"], h
        assert metric(d, "camstream_degraded", "workers") == 1
        out = subprocess.run([sys.executable, "-m", "camstream", "status", d.url],
                             capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
        assert out.splitlines()[1] == "degraded: 1 of 2 workers alive", out
    finally:
        if worker.is_running():
            worker.kill()
    wait_for(lambda: d.health()["status"] == "ok", 20, what="ok once it was replaced")

    d.child("ingest").kill()
    h = wait_for(lambda: (h := d.health())["ingest"]["restarts"] == 1 and h, 20,
                 what="ingest back")
    h = wait_for(lambda: (h := d.health())["workers"]["alive"] == 2 and h, 10,
                 what="workers seen by the new ingest")
    assert h["status"] == "degraded" and any(
        r.startswith("ingest restarted") for r in h["reasons"]), h
    assert metric(d, "camstream_degraded", "ingest") == 1
