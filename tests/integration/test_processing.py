"""Processors, recording and results: built-ins on real images, user processors, the
recorder's promises (byte-identical, atomic, survives a full disk), results to the sender
and to ``camstream tap``. Real daemons on 127.0.0.1, bounded waits."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from camstream import bus, wire
from camstream.client import folder_frames
from camstream.wire import Header
from tests.helpers import ROOT, make_jpeg, wait_for
from tests.helpers.streaming import Streamer, send_frames
from workers import builtin, processors

HEADER = Header("alice", "sid", 1, time.time_ns(), 0)
HAAR = hasattr(cv2, "CascadeClassifier")
if HAAR:
    try:
        builtin.find_cascade()
    except ValueError:
        HAAR = False
needs_haar = pytest.mark.skipif(not HAAR, reason=f"OpenCV {cv2.__version__} has no Haar "
                                "cascades (OpenCV 5 wheels dropped them)")


# -- images ---------------------------------------------------------------------------------------

def face_image(size: int = 100) -> np.ndarray:
    """A drawn face that OpenCV's frontal-face Haar cascade detects (checked on OpenCV 4.14):
    skin oval, brows, eyes with pupils, nose ridge, mouth, hair; blurred like a camera."""
    img = np.full((size * 2, size * 2, 3), 200, np.uint8)
    c, s = size, size / 100

    def p(x, y):
        return int(c + x * s), int(c + y * s)

    def r(a, b):
        return int(a * s), int(b * s)
    cv2.ellipse(img, p(0, 0), r(60, 80), 0, 0, 360, (140, 160, 200), -1)
    for dx in (-25, 25):
        cv2.ellipse(img, p(dx, -30), r(16, 5), 0, 0, 360, (40, 40, 60), -1)
        cv2.ellipse(img, p(dx, -15), r(12, 7), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, p(dx, -15), int(5 * s), (30, 30, 30), -1)
    cv2.line(img, p(0, -10), p(0, 15), (110, 125, 160), int(4 * s))
    cv2.ellipse(img, p(0, 40), r(22, 7), 0, 0, 360, (60, 60, 150), -1)
    cv2.ellipse(img, p(0, -75), r(62, 30), 0, 180, 360, (30, 40, 60), -1)
    return cv2.GaussianBlur(img, (0, 0), 2 * s)


def square_frames(count: int, width: int = 320, height: int = 240) -> list[bytes]:
    """A white square crossing a still, textured background: what motion should find."""
    rng = np.random.default_rng(7)
    background = cv2.GaussianBlur(rng.integers(60, 120, (height, width, 3), dtype=np.uint8),
                                  (5, 5), 0)
    frames = []
    for n in range(count):
        img = background.copy()
        x = 10 + (n * 20) % (width - 60)
        cv2.rectangle(img, (x, 100), (x + 40, 140), (255, 255, 255), -1)
        frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return frames


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# -- helpers --------------------------------------------------------------------------------------

class Tap:
    """``camstream tap`` in a subprocess; its JSON lines collected by a thread."""

    def __init__(self, runtime_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "camstream", "tap", "--runtime-dir", str(runtime_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    def of(self, client: str) -> list[dict]:
        return [x for x in self.lines if x["client"] == client]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def taps():
    made: list[Tap] = []

    def start(runtime_dir: Path, *args: str) -> Tap:
        t = Tap(runtime_dir, *args)
        made.append(t)
        return t
    yield start
    for t in made:
        if t.proc.poll() is None:
            t.stop()


def attach(tap: Tap, sio, client: str) -> int:
    """Send frames until the tap shows one (a new subscriber takes a moment to join the
    bus); return the seq of the last frame sent."""
    seq = 0

    def seen():
        nonlocal seq
        seq = sio.call("frame", ({}, make_jpeg(seed=99)), timeout=10)["seq"]
        return tap.of(client)
    wait_for(seen, 30, interval=0.2, what="camstream tap to attach")
    return seq


def send(sio, frames: list[bytes]) -> list[dict]:
    acks = send_frames(sio, frames)
    assert all(a["accepted"] for a in acks), acks
    return acks


def worker_stats(runtime_dir: Path, predicate, timeout: float) -> dict:
    """Read the workers' stats on the bus until ``predicate(per-client sums)`` holds."""
    ctx = zmq.Context()
    sub = bus.bus_sub(ctx, str(runtime_dir), wire.STATS, hwm=1000)
    reports: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sub.poll(500):
                continue
            for _, report in bus.drain(sub, wire.Stats.unpack):
                if report.get("role") == "worker":  # a partial report is merged
                    reports.setdefault(report["pid"], {}).update(report["clients"])
            sums: dict[str, dict[str, int]] = {}
            for clients in reports.values():
                for name, c in clients.items():
                    row = sums.setdefault(name, {})
                    for k, v in c.items():
                        row[k] = row.get(k, 0) + v
            if predicate(sums):
                return sums
    finally:
        sub.close(0)
        ctx.term()
    raise AssertionError(f"timed out after {timeout} s; last worker stats: {reports}")


def stream_in_rounds(conns: dict, tap: Tap, frames: list[bytes]) -> dict[str, set[int]]:
    """Each frame from every client, interleaved as cameras would send them; a round goes once
    the last one's results are on the tap, so that a loaded machine drops none (the newest
    frame would win) and every frame reaches a model. The seqs sent, per client."""
    want: dict[str, set[int]] = {n: set() for n in conns}
    for f in frames:
        last = {n: sio.call("frame", ({}, f), timeout=10)["seq"] for n, sio in conns.items()}
        for n, seq in last.items():
            want[n].add(seq)
        wait_for(lambda: all(seq in {x["seq"] for x in tap.of(n)} for n, seq in last.items()),
                 20, interval=0.01, what="the round's results on the tap")
    return want


def four_moving_cameras(d, clients, taps) -> tuple[list[str], dict[str, set[int]], list]:
    """Four clients stream a moving square into ``d`` in rounds; their names, the seqs each
    sent, and the tap's lines for them."""
    names = ["cam1", "cam2", "cam3", "cam4"]
    conns = {n: clients(d.url, n) for n in names}
    tap = taps(d.runtime_dir)
    attach(tap, conns["cam1"], "cam1")
    start = len(tap.lines)
    want = stream_in_rounds(conns, tap, square_frames(30))
    return names, want, tap.lines[start:]


def write_module(tmp_path: Path, name: str, code: str) -> dict:
    (tmp_path / "mods").mkdir(exist_ok=True)
    (tmp_path / "mods" / f"{name}.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "mods"), str(ROOT)])}


def serve_fails(*args: str, env: dict | None = None) -> str:
    """Run ``camstream serve`` expecting a one-line refusal; return the line."""
    r = subprocess.run([sys.executable, "-m", "camstream", "serve", "-p", "1", *args],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- built-ins on real images, in process ---------------------------------------------------------

def test_stats_measures_size_brightness_and_sharpness():
    stats = processors.load("stats")
    sharp = decode(make_jpeg(320, 240, quality=95, seed=3))
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    a, b = stats(sharp.copy(), HEADER), stats(blurred, HEADER)
    assert (a["width"], a["height"]) == (320, 240)
    assert 0 < a["brightness"] < 255
    assert a["sharpness"] > 4 * b["sharpness"] > 0
    dark = stats(np.zeros((10, 20, 3), np.uint8), HEADER)
    assert dark == {"width": 20, "height": 10, "brightness": 0.0, "sharpness": 0.0}
    assert processors.load("measure")(sharp, HEADER) == a  # the old name still works


def test_edges_counts_and_draws_canny_edges():
    result, edges = processors.load("edges")(decode(make_jpeg(seed=1)), HEADER)
    assert edges.shape == (240, 320) and 0 < result["edges"] < 1
    flat, = [processors.load("edges", {"annotate": "no"})(np.full((50, 50, 3), 9, np.uint8),
                                                          HEADER)]
    assert flat == {"edges": 0.0}


def test_motion_finds_the_moving_square_and_reports_gaps():
    motion = processors.load("motion")
    frames = [decode(f) for f in square_frames(12)]
    results = []
    for n, img in enumerate(frames, 1):
        out = motion(img, Header("alice", "s", n, 0, 0))
        results.append(out[0] if isinstance(out, tuple) else out)
    assert results[0]["warming_up"] and not results[0]["motion"]
    for n, r in enumerate(results[3:], 4):
        assert r["motion"] and r["gap"] == 0
        x = 10 + ((n - 1) * 20) % 260  # where the square is now: a box covers it
        assert any(bx <= x + 4 and bx + bw >= x + 36 and abs(by - 100) <= 4
                   for bx, by, bw, _ in r["boxes"]), (n, x, r)
    # every third frame only (three workers): gaps are reported, motion still found
    spaced = processors.load("motion")
    for n in range(1, 13, 3):
        out = spaced(frames[n - 1], Header("bob", "s", n, 0, 0))
    assert out[0]["gap"] == 2 and out[0]["motion"]
    # a sequence going back (ingest restarted) resets the model and says so
    out = spaced(frames[0], Header("bob", "s", 1, 0, 0))
    assert out["reset"] and out["warming_up"]


@needs_haar
def test_faces_finds_a_face_and_draws_it():
    faces = processors.load("faces", {"neighbors": "3"})
    result, annotated = faces(decode(jpeg(face_image(100))), HEADER)
    assert result["faces"] == 1
    x, y, w, h = result["boxes"][0]
    assert w > 100 and abs(x + w / 2 - 100) < 30  # around the drawn face
    assert tuple(annotated[y, x + w // 2]) == (0, 255, 0)
    assert faces(decode(make_jpeg(seed=5)), HEADER) == {"faces": 0, "boxes": []}


@pytest.mark.skipif(HAAR, reason="this OpenCV has Haar cascades")
def test_faces_without_haar_cascades_says_why():
    with pytest.raises(ValueError, match="opencv-python<5"):
        processors.load("faces")
    line = serve_fails("--processor", "faces")
    assert "--processor faces" in line and "Haar" in line or "CascadeClassifier" in line


def test_options_are_checked_and_entry_points_found(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown option 'nieghbors'"):
        processors.load("edges", {"nieghbors": "3"})
    with pytest.raises(ValueError, match="expected float"):
        processors.load("edges", {"low": "lots"})
    with pytest.raises(ValueError, match="option scale must be over 1"):
        processors.load("faces", {"scale": "0.5"})  # OpenCV would fail on every frame
    with pytest.raises(ValueError, match="option min_area must be from 0 to under 1"):
        processors.load("motion", {"min_area": "5"})
    with pytest.raises(ValueError, match=r"option high must be at least low \(300.0\)"):
        processors.load("edges", {"low": "300"})
    with pytest.raises(ValueError, match="takes no options"):
        processors.load("os.path:basename", {"a": "1"})
    # an installed package declaring an entry point in the camstream.processors group
    (tmp_path / "blue_proc.py").write_text(
        "def blue(image, header):\n    return {'blue': float(image[..., 0].mean())}\n")
    info = tmp_path / "blue_proc-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: blue-proc\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[camstream.processors]\nblue = blue_proc:blue\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert processors.load("blue")(np.full((4, 4, 3), 7, np.uint8), HEADER) == {"blue": 7.0}


# -- processors chosen on the command line ---------------------------------------------------------

def test_processors_that_fail_to_load_stop_serve_with_one_line(tmp_path):
    env = write_module(tmp_path, "broken", "import no_such_module_here\n")
    assert "No module named 'no_such_module_here'" in serve_fails(
        "--processor", "broken:run", env=env)
    assert "No module named 'nowhere'" in serve_fails("--processor", "nowhere:run")
    assert "unknown processor 'nope'" in serve_fails("--processor", "nope")
    assert "unknown option 'x'" in serve_fails("--processor-opt", "x=1")
    assert "expected key=value" in serve_fails("--processor-opt", "novalue")
    assert "--record-max-gb needs --record" in serve_fails("--record-max-gb", "1")


def test_readme_example_runs_from_module_attr(tmp_path, daemons, clients):
    text = (ROOT / "README.md").read_text()
    section = text.split("### Write your own processor", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module, attr = re.search(r"--processor (\w+):(\w+)", section).groups()
    assert len([x for x in code.splitlines() if x.strip()]) <= 10
    env = write_module(tmp_path, module, code)
    d = daemons("--processor", f"{module}:{attr}", "--emit-results", env=env)
    sio = clients(d.url, "alice")
    got: list[dict] = []
    sio.on("result", got.append)
    red = np.zeros((120, 160, 3), np.uint8)
    red[..., 2] = 200
    red[30:40, 100:110] = (0, 0, 255)
    send(sio, [jpeg(red)])
    result = wait_for(lambda: got, 30, what="the README processor's result")[0]
    assert result["redness"] > 150 and abs(result["spot"][0] - 104) <= 6


def test_the_header_reads_by_name_and_by_attribute(tmp_path, daemons, clients):
    """The README says the header "has client, session, seq, ...": both header["seq"] and
    header.seq work in a processor (it is a NamedTuple, and was not subscriptable by name)."""
    env = write_module(tmp_path, "headed", (
        "def both(image, header):\n"
        "    assert header['seq'] == header.seq and header['client'] == header.client\n"
        "    return {'as_dict': dict(header), 'size': header['size']}\n"))
    d = daemons("--processor", "headed:both", "--emit-results", workers=1, env=env)
    sio = clients(d.url, "named")
    got: list[dict] = []
    sio.on("result", got.append)
    send(sio, [make_jpeg(), make_jpeg(seed=1)])
    results = wait_for(lambda: len(got) == 2 and got, 30, what="both results")
    for r in results:
        assert r["as_dict"]["client"] == "named" and r["as_dict"]["seq"] == r["seq"]
        assert r["size"] == r["as_dict"]["size"] > 0
    assert d.health()["clients"]["named"]["errors"] == 0


def test_a_processor_marked_ordered_is_routed_by_client(tmp_path, daemons, clients):
    env = write_module(tmp_path, "tracker", (
        "def track(image, header):\n"
        "    return {'rows': int(image.shape[0])}\n"
        "track.ordered = True\n"))
    assert processors.is_ordered("motion") and not processors.is_ordered("stats")
    d = daemons("--processor", "tracker:track", workers=2, env=env)
    sio = clients(d.url, "alice")
    send(sio, [make_jpeg(seed=i) for i in range(3)])
    row = wait_for(lambda: (r := d.health()["clients"]["alice"])["processed"] >= 1
                   and r["processed"] + r["dropped"] == 3 and r, 30, what="3 frames done")
    assert row["worker"] in (1, 2)
    assert "--route client: tracker:track needs them in order" in d.output()
    status = subprocess.run([sys.executable, "-m", "camstream", "status", d.url],
                            capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
    header, alice = status.splitlines()[1:3]
    assert header.split()[-1] == "worker" and alice.split()[-1] == str(row["worker"])


def test_a_processor_that_raises_costs_its_frame_only(tmp_path, daemons, clients):
    env = write_module(tmp_path, "flaky", (
        "def odd_fails(image, header):\n"
        "    if header.seq % 2:\n"
        "        raise ZeroDivisionError('odd frame')\n"
        "    return {'ok': True}\n"
        "def wrong_type(image, header):\n"
        "    return [1, 2]\n"))
    d = daemons("--processor", "flaky:odd_fails", "--emit-results", workers=1, env=env)
    sio = clients(d.url, "alice")
    got: list[dict] = []
    sio.on("result", got.append)
    worker = d.child("worker 1")
    acks = send(sio, [make_jpeg(seed=i) for i in range(10)])
    sums = worker_stats(d.runtime_dir, lambda s: s.get("alice", {}).get("processed") == 5
                        and s["alice"]["errors"] == 5, 30)
    assert sums["alice"]["processor_errors"] == 5
    wait_for(lambda: len(got) == 5, 20, what="5 results")
    assert sorted(r["seq"] for r in got) == [a["seq"] for a in acks if a["seq"] % 2 == 0]
    assert d.child("worker 1").pid == worker.pid  # the worker went on
    assert d.output().count("ZeroDivisionError") == 1  # logged once per kind


def test_a_processor_returning_the_wrong_type_is_counted(tmp_path, daemons, clients):
    env = write_module(tmp_path, "wrong", "def run(image, header):\n    return [1, 2]\n")
    d = daemons("--processor", "wrong:run", workers=1, env=env)
    sio = clients(d.url, "alice")
    for i in range(3):  # one at a time: back to back, a loaded worker's frame can be replaced
        send(sio, [make_jpeg(seed=i)])
        sums = worker_stats(d.runtime_dir,
                            lambda s, n=i + 1: s.get("alice", {}).get("errors") == n, 30)
    assert sums["alice"]["processor_errors"] == 3 and sums["alice"]["processed"] == 0
    assert "returned list, expected a dict" in d.output()


# -- results back to the client and to taps --------------------------------------------------------

def test_results_reach_the_sending_client_only_and_the_tap(daemons, clients, taps):
    d = daemons("--emit-results", workers=2)
    alice, bob = clients(d.url, "alice"), clients(d.url, "bob")
    got: dict[str, list] = {"alice": [], "bob": []}
    alice.on("result", got["alice"].append)
    bob.on("result", got["bob"].append)
    tap_alice = taps(d.runtime_dir, "--client", "alice")
    tap_all = taps(d.runtime_dir)
    attach(tap_alice, alice, "alice")
    attach(tap_all, bob, "bob")
    acks_a = send(alice, [make_jpeg(seed=i) for i in range(6)])
    acks_b = send(bob, [make_jpeg(seed=10 + i) for i in range(4)])
    seqs_a = {a["seq"] for a in acks_a}
    seqs_b = {a["seq"] for a in acks_b}

    wait_for(lambda: seqs_a <= {r["seq"] for r in got["alice"]}
             and seqs_b <= {r["seq"] for r in got["bob"]}, 30, what="results at the clients")
    wait_for(lambda: seqs_a <= {x["seq"] for x in tap_alice.lines}
             and seqs_b <= {x["seq"] for x in tap_all.of("bob")}, 30, what="results at taps")
    # each got exactly one result per frame it sent (seqs count per client from 1), and none
    # of the other's: those would show as extra results
    time.sleep(0.5)
    for name, seqs in (("alice", seqs_a), ("bob", seqs_b)):
        assert sorted(r["seq"] for r in got[name]) == list(range(1, max(seqs) + 1)), name
    assert all(set(r) >= {"width", "height", "brightness", "sharpness", "seq", "worker"}
               for r in got["alice"] + got["bob"])
    assert {x["client"] for x in tap_alice.lines} == {"alice"}
    line = next(x for x in tap_alice.lines if x["seq"] in seqs_a)
    assert line["session"] and line["recv_ns"] and line["width"] == 320
    assert {x["seq"] for x in tap_all.of("alice")} >= seqs_a


@pytest.mark.parametrize("protocol", [[], ["--legacy", "--transport", "default"]],
                         ids=["frame-acks", "legacy"])
def test_send_prints_the_results_that_come_back(daemons, protocol):
    """``camstream send --results``: each result as a JSON line on stdout, the tally on
    stderr; over the legacy events (the app's) too."""
    d = daemons("--emit-results", "--processor", "edges", workers=1)
    r = subprocess.run([sys.executable, "-m", "camstream", "send", d.url, "-u", "viewer",
                        "--results", "--count", "6", "--fps", "10", "--size", "320x240",
                        *protocol], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(x["seq"] for x in results) == list(range(1, 7)), r.stdout
    assert all(0 <= x["edges"] < 1 and x["worker"] == 1 for x in results)
    assert "results 6" in r.stderr


@needs_haar
def test_faces_in_the_daemon(daemons, clients, taps):
    d = daemons("--processor", "faces", "--processor-opt", "neighbors=3", "--emit-results")
    sio = clients(d.url, "alice")
    got: list[dict] = []
    sio.on("result", got.append)
    tap = taps(d.runtime_dir, "--client", "alice")
    attach(tap, sio, "alice")
    ack, = send(sio, [jpeg(face_image(100))])
    wait_for(lambda: any(r["seq"] == ack["seq"] for r in got), 30, what="the result")
    assert next(r for r in got if r["seq"] == ack["seq"])["faces"] == 1
    line = wait_for(lambda: [x for x in tap.lines if x["seq"] == ack["seq"]], 10,
                    what="the tap line")[0]
    assert line["annotated"] > 0


def test_motion_routes_each_client_to_one_worker_in_order(daemons, clients, taps):
    """3 workers, 4 clients: each client's frames all reach one worker, complete, in order
    and without gaps, and every worker has clients (2/1/1)."""
    d = daemons("--processor", "motion", workers=3)
    wait_for(lambda: "routing each client's frames to one worker" in d.output(), 30,
             what="the routing line in the log")
    names, want, lines = four_moving_cameras(d, clients, taps)
    owner = {}
    for n in names:
        mine = [x for x in lines if x["client"] == n and x["seq"] in want[n]]
        workers = {x["worker"] for x in mine}
        assert len(workers) == 1, f"{n}: frames went to workers {workers}"
        owner[n] = workers.pop()
        seqs = [x["seq"] for x in mine]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (n, seqs)
        assert not any(x.get("reset") for x in mine)
        assert seqs == sorted(want[n]), f"{n}: frames missing"
        assert all(x["gap"] == 0 for x in mine[1:]), f"{n}: its model missed frames"
        warm = [x for x in mine if not x["warming_up"]]
        assert len(warm) > 15 and sum(x["motion"] for x in warm) >= 0.9 * len(warm)
    assert sorted(list(owner.values()).count(w) for w in set(owner.values())) == [1, 1, 2], \
        f"the pool is not balanced: {owner}"


def test_motion_without_routing_keeps_order_per_worker_and_counts_gaps(daemons, clients, taps):
    """--route any (what remote workers and pools get): frames dealt round-robin; each
    worker's model still sees its share in order, and the gaps add up."""
    d = daemons("--processor", "motion", "--route", "any", workers=3)
    names, want, lines = four_moving_cameras(d, clients, taps)
    for n in names:
        mine = [x for x in lines if x["client"] == n and x["seq"] in want[n]]
        by_worker: dict[int, list] = {}
        for x in mine:
            by_worker.setdefault(x["worker"], []).append(x)
        assert len(by_worker) >= 2, f"{n}: the pool should share the work"
        for worker, xs in by_worker.items():
            seqs = [x["seq"] for x in xs]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (n, worker, seqs)
            assert not any(x.get("reset") for x in xs)
            for prev, x in zip(xs, xs[1:]):
                assert x["gap"] == x["seq"] - prev["seq"] - 1  # gaps add up
        warm = [x for x in mine if not x["warming_up"]]
        assert len(warm) > 15 and sum(x["motion"] for x in warm) >= 0.9 * len(warm)


# -- recording ------------------------------------------------------------------------------------

def recorded(root: Path, client: str) -> list[Path]:
    return sorted(root.glob(f"{client}/*/*.jpg"), key=lambda p: (p.parent.name, p.name))


def test_recording_is_byte_identical_indexed_and_replays(tmp_path, daemons, clients):
    root = tmp_path / "rec"
    d = daemons("--record", str(root))
    sio = clients(d.url, "alice")
    frames = [make_jpeg(seed=i, quality=70 + i) for i in range(20)]
    acks = send(sio, frames)
    worker_stats(d.runtime_dir, lambda s: s.get("alice", {}).get("recorded") == 20, 30)
    files = wait_for(lambda: len(recorded(root, "alice")) == 20 and recorded(root, "alice"),
                     30, what="20 recorded files")
    assert [f.read_bytes() for f in files] == frames  # same bytes, in the order sent
    for f, a in zip(files, acks):
        assert re.fullmatch(r"\d{6}\.\d{3}-\d{8}\.jpg", f.name)
        assert int(f.stem.split("-")[1]) == a["seq"]
    day = files[0].parent
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day.name)
    index = [json.loads(x) for x in next(day.glob("*.jsonl")).read_text().splitlines()]
    assert sorted(x["seq"] for x in index) == [a["seq"] for a in acks]
    assert {x["file"] for x in index} == {f.name for f in files}
    assert all(x["client"] == "alice" and x["result"]["width"] == 320 for x in index)
    assert not list(root.rglob("*.tmp"))

    # the recorded day replays as it was
    assert list(folder_frames(day)) == frames
    r = subprocess.run([sys.executable, "-m", "camstream", "send", d.url, "-u", "replay",
                        "--source", str(day), "--fps", "0", "--quiet"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(recorded(root, "replay")) == 20, 30, what="the replay recorded")
    assert [f.read_bytes() for f in recorded(root, "replay")] == frames


def test_recording_prunes_the_oldest_days(tmp_path, daemons):
    root = tmp_path / "rec"
    for day, size in (("2001-01-01", 300_000), ("2001-01-02", 300_000), ("2001-01-03", 1000)):
        (root / "old" / day).mkdir(parents=True)
        (root / "old" / day / "000000.000-00000001.jpg").write_bytes(b"x" * size)
    daemons("--record", str(root), "--record-max-gb", "0.0005")  # 500 kB
    wait_for(lambda: not (root / "old" / "2001-01-01").exists(), 30, what="the oldest day pruned")
    assert (root / "old" / "2001-01-02").exists() and (root / "old" / "2001-01-03").exists()


def test_a_worker_killed_mid_write_leaves_no_partial_file(tmp_path, daemons):
    root = tmp_path / "rec"
    d = daemons("--record", str(root), workers=2)
    frames = [make_jpeg(640, 480, quality=95, seed=i) for i in range(40)]
    sent = set(frames)
    # as fast as acks come back (fps=0): many writes for the kills to land in
    sender = Streamer(d.url, "alice", fps=0, frames=frames, timeout=10,
                      reconnection=False).start()
    try:
        for _ in range(3):
            wait_for(lambda: recorded(root, "alice"), 20, what="recordings")
            time.sleep(0.3)
            victim = wait_for(lambda: d.child("worker 1"), 30, what="worker 1")
            victim.kill()
            wait_for(lambda: (c := d.child("worker 1")) and c.pid != victim.pid, 30,
                     what="worker 1 to be replaced")
    finally:
        sender.stop()
    files = recorded(root, "alice")
    assert len(files) > 20
    assert all(f.read_bytes() in sent for f in files)  # every .jpg whole, as sent
    # the replaced worker removed what its predecessor was writing
    wait_for(lambda: not list(root.rglob("*.w1.tmp")), 20, what="no leftover temporary files")


def test_a_full_disk_is_counted_and_ingest_goes_on(tmp_path, daemons, clients):
    root = tmp_path / "small"
    root.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)],
        capture_output=True).returncode == 0
    if not mounted and os.geteuid() == 0:
        pytest.skip("cannot mount a small tmpfs here, and root ignores permissions")
    try:
        d = daemons("--record", str(root), workers=2)
        sio = clients(d.url, "alice")
        if not mounted:  # not root: an unwritable directory stands in for a full disk
            send(sio, [make_jpeg(seed=0)])
            wait_for(lambda: recorded(root, "alice"), 20, what="a first recording")
            for p in root.glob("alice/*"):
                p.chmod(0o500)
        frames = [make_jpeg(640, 480, quality=95, seed=i) for i in range(30)]  # ~100 kB each
        send(sio, frames)
        # (ingest may drop a frame or two when both workers are busy: accepted, not sent on)
        # (the recorder writes on a thread of its own: a stats line may fall between a frame
        # processed and its file written, so the books must balance within the wait)
        def settled(s):
            row = s.get("alice", {})
            return (row.get("processed", 0) >= 25 and row["record_errors"] > 0
                    and row["recorded"] + row["record_errors"] + row["record_dropped"]
                    == row["processed"])
        sums = worker_stats(d.runtime_dir, settled, 30)
        assert sums["alice"]["errors"] == 0  # processing went on, and ingest:
        assert d.health()["clients"]["alice"]["refused"] == 0
        last = make_jpeg(seed=100)
        more = send(sio, [last])
        assert more[0]["accepted"]
        out = d.output()
        assert out.count("cannot record to") <= 2  # once per worker (and kind)
        assert ("disk full" in out) if mounted else ("Permission denied" in out)
        # every file under a final name is whole: one of the frames sent, byte for byte
        sent = set(frames) | {make_jpeg(seed=0), last}
        assert not [f for f in recorded(root, "alice") if f.read_bytes() not in sent]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
