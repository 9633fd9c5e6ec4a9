"""The display end to end: a real daemon, real socket.io clients, `camstream display` on a
virtual screen (Xvfb), windows found by name and looked at through screenshots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests
import pytest
from tests.helpers import ROOT, Daemon, make_jpeg, wait_for
from tests.helpers.streaming import Streamer
from tests.helpers.xvfb import screen  # noqa: F401  (the fixture)

FPS = 10


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon for the module (each test streams under client names of its own)."""
    d = Daemon(tmp_path_factory.mktemp("display"), workers=2)
    try:
        d.wait_ready()
        yield d
    finally:
        d.shutdown()


@pytest.fixture
def streamers():
    """Clients streaming ``frame(n)`` at ``fps`` on a fixed schedule (a test counts frames
    over a window), failed calls among their acks; each stopped after the test."""
    made: list[Streamer] = []

    def start(url: str, name: str, frame, fps: float = FPS) -> Streamer:
        s = Streamer(url, name, fps=fps, frame=frame, timeout=10, reconnection=False,
                     catch_up=True, failures_as_acks=True)
        made.append(s)
        return s.start()
    yield start
    for s in made:
        s.stop()


@pytest.fixture
def displays(daemon, tmp_path):
    """Start ``camstream display`` processes; each is stopped (by pid) after the test."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"display-{len(started)}.log", "w+")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "camstream", "display", "--runtime-dir",
                              str(daemon.runtime_dir), *args], env=env, cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT)
        p.log = log
        started.append(p)
        return p
    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.log.close()


def decoded(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def match(shot: np.ndarray | None, source: np.ndarray) -> float:
    """How well ``source`` appears in the screenshot (normalised correlation, 1 = exact),
    leaving out its top quarter, where the overlay is."""
    if shot is None:
        return -1.0
    part = source[source.shape[0] // 4:]
    if shot.shape[0] < part.shape[0] or shot.shape[1] < part.shape[1]:
        return -1.0
    return float(cv2.minMaxLoc(cv2.matchTemplate(shot, part, cv2.TM_CCOEFF_NORMED))[1])


def window(screen, name: str, timeout: float = 20) -> str:  # noqa: F811
    return wait_for(lambda: screen.windows(name), timeout, what=f"a window named {name}")[0]


def test_two_clients_two_windows_showing_their_pictures(daemon, streamers, displays,
                                                         screen):  # noqa: F811
    pictures = {"ann": make_jpeg(320, 240, seed=11), "ben": make_jpeg(320, 240, seed=22)}
    for name, jpeg in pictures.items():
        streamers(daemon.url, name, lambda n, jpeg=jpeg: jpeg)
    displays(env=screen.env)
    sources = {name: decoded(jpeg) for name, jpeg in pictures.items()}
    for name, other in (("ann", "ben"), ("ben", "ann")):
        wid = window(screen, name)

        def shows_it(wid=wid, name=name):
            shot = screen.screenshot(wid)
            return match(shot, sources[name]) > 0.95 and [shot]
        [shot] = wait_for(shows_it, 15, what=f"window {name} to show {name}'s picture")
        assert match(shot, sources[other]) < 0.5, f"window {name} shows {other}'s picture"


@pytest.mark.serial
def test_attach_detach_three_times_costs_ingest_nothing(daemon, streamers, displays,
                                                        screen):  # noqa: F811
    streamer = streamers(daemon.url, "cyd", lambda n: make_jpeg(320, 240, seed=n % 7))
    detaches = [("q", 0), ("SIGINT", 0), ("SIGKILL", -signal.SIGKILL)]
    for how, code in detaches:
        p = displays(env=screen.env)
        wid = window(screen, "cyd")
        if how == "q":
            screen.run("xdotool", "windowfocus", "--sync", wid)
            screen.run("xdotool", "key", "--clearmodifiers", "q")
        else:
            p.send_signal(getattr(signal, how))
        assert p.wait(timeout=10) == code, how
        wait_for(lambda: not screen.windows("cyd"), 10, what=f"the window to go ({how})")
    wait_for(lambda: len(streamer.acks) > 2 * FPS, 10, what="two seconds' worth of frames")
    streamer.stop()
    assert all(a["accepted"] for a in streamer.acks)

    def settled():
        c = daemon.health()["clients"]["cyd"]
        return c["received"] == len(streamer.acks) and c
    counts = wait_for(settled, 10, what="ingest to count every frame")
    assert counts["refused"] == 0 and counts["dropped"] == 0, counts
    assert counts["dispatched"] == counts["received"], counts


@pytest.mark.serial
def test_a_frozen_display_stalls_nothing_and_resumes_fresh(daemon, streamers, displays,
                                                           screen):  # noqa: F811
    fps = 20
    frames = {}

    def frame(n: int) -> bytes:
        frames[n] = make_jpeg(320, 240, seed=1000 + n)
        return frames[n]
    streamer = streamers(daemon.url, "dee", frame, fps=fps)
    p = displays(env=screen.env)
    wid = window(screen, "dee")

    def fresh():
        shot = screen.screenshot(wid)
        now = time.monotonic()
        if shot is None or shot.min() == shot.max():  # matches nothing: say so, not "frame 1"
            print("the window is", "gone" if shot is None else f"blank ({shot.max()})")
            return False
        recent = [n for n, t in list(streamer.sent.items()) if now - t < 6]
        scores = {n: match(shot, decoded(frames[n])) for n in recent if n in frames}
        shown = max(scores, key=scores.get)
        print(f"shown {shown} score {scores[shown]:.2f} sent {now - streamer.sent[shown]:.2f}"
              f" s ago, newest {max(streamer.sent)}")
        return scores[shown] > 0.9 and now - streamer.sent[shown] < 1.0 and shown
    # the live picture first: what follows the stop must be told from a window never painted
    wait_for(fresh, 15, interval=0.3, what="the window to show the stream before the stop")
    ingest = daemon.child("ingest")
    hub = psutil.Process(daemon.proc.pid)  # the supervisor hosts the bus proxy
    procs = {"ingest": ingest, "supervisor": hub}

    def sample(seconds: float) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {who: [] for who in procs}
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for who, proc in procs.items():
                got[who].append(proc.memory_info().rss)
            time.sleep(0.5)
        return got
    live = sample(3)
    before = len(streamer.acks)
    os.kill(p.pid, signal.SIGSTOP)
    frozen = sample(10)
    acks = streamer.acks[before:]
    os.kill(p.pid, signal.SIGCONT)
    assert all(a["accepted"] for a in acks)
    assert len(acks) >= 0.8 * fps * 10, f"only {len(acks)} frames in 10 s at {fps} fps"
    for who in procs:
        # medians: ingest's RSS swings by tens of MB for a moment on its own, display or not
        growth = (np.median(frozen[who]) - np.median(live[who])) / 2 ** 20
        assert growth < 20, f"{who} grew {growth:.1f} MB while the display was frozen"

    try:
        wait_for(fresh, 5, interval=0.3, what="the display to show a frame under a second old")
    except AssertionError:
        p.log.seek(0)
        print(p.log.read())
        raise
    assert p.poll() is None
    assert screen.windows("dee") == [wid]  # its own stop was not taken for the client's silence


def test_a_leaving_client_closes_only_its_window(daemon, streamers, displays,
                                                 screen):  # noqa: F811
    streamers(daemon.url, "eli", lambda n: make_jpeg(320, 240, seed=3))
    going = streamers(daemon.url, "fay", lambda n: make_jpeg(320, 240, seed=4))
    displays("--idle", "60", env=screen.env)  # only the leave event may close it
    window(screen, "eli")
    window(screen, "fay")
    going.stop()  # and disconnects
    wait_for(lambda: not screen.windows("fay"), 10, what="fay's window to close")
    time.sleep(1)
    assert screen.windows("eli"), "eli's window closed too"


def headless_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def test_snapshot_mode_writes_the_newest_frame_per_client(daemon, streamers, displays,
                                                          tmp_path):
    picture = make_jpeg(320, 240, seed=55)
    streamer = streamers(daemon.url, "gus", lambda n: picture)
    folder = tmp_path / "snap"
    p = displays("--snapshot", str(folder), env=headless_env())
    jpg = folder / "gus.jpg"
    wait_for(jpg.exists, 15, what=f"{jpg}")
    image = decoded(jpg.read_bytes())
    assert image is not None and image.shape == (240, 320, 3)
    assert float(np.mean(cv2.absdiff(image, decoded(picture)))) < 2
    streamer.stop()  # and disconnects
    info = folder / "gus.json"
    wait_for(lambda: json.loads(info.read_text()).get("left"), 10,
             what="gus.json to say gus left")
    assert jpg.exists() and decoded(jpg.read_bytes()) is not None, "the last picture is kept"
    assert p.poll() is None


def run_display(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camstream", "display", *args], env=env,
                          check=False, capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_processed_view_lives_from_its_first_frame(daemon, streamers, displays, tmp_path):
    """--processed: a stream's view appears with its first result and is not closed as idle
    at once (its age once started from zero: "closing its view (no frames for 5 s)" came right
    after "showing its stream")."""
    streamers(daemon.url, "hal", lambda n: make_jpeg(320, 240, seed=n % 5))
    folder = tmp_path / "processed"
    p = displays("--processed", "--snapshot", str(folder), env=headless_env())
    wait_for(lambda: (folder / "hal.json").exists() and
             "result" in json.loads((folder / "hal.json").read_text()), 20,
             what="hal's processed snapshot")
    time.sleep(2)
    p.log.flush()
    log = Path(p.log.name).read_text()
    assert "hal: showing its stream" in log and "closing its view" not in log, log


def test_no_screen_is_one_clear_line(daemon):
    out = run_display("--runtime-dir", str(daemon.runtime_dir), env=headless_env())
    assert out.returncode == 2
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no screen" in out.stderr and "--snapshot" in out.stderr


def test_no_daemon_is_one_clear_line(tmp_path):
    out = run_display("--runtime-dir", str(tmp_path), "--snapshot", str(tmp_path / "s"),
                      env=headless_env())
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no camstream daemon is running" in out.stderr


def test_serve_d_starts_a_display_and_survives_its_death(daemons, screen, clients):  # noqa: F811
    d = daemons("-d", workers=1, env=screen.env)
    display = wait_for(lambda: d.child("display"), 15, what="the display child")
    sio = clients(d.url, "dee")
    sio.call("frame", ({}, make_jpeg()), timeout=10)
    wait_for(lambda: screen.windows("dee"), 20, what="the display's window for dee")
    display.kill()
    wait_for(lambda: "display (pid %d) was killed by SIGKILL" % display.pid in d.output(), 10,
             what="the display's death to be logged")
    time.sleep(1.5)
    assert d.child("display") is None, "a dead display is not restarted"
    assert sio.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
    assert d.health()["workers"]["restarts"] == 0 and d.health()["ingest"]["restarts"] == 0


def test_serve_d_beside_a_decoy_package(tmp_path, screen, clients):  # noqa: F811
    """``serve -d`` run from a folder holding camstream/ and workers/ (the folder above a
    clone): the children, display included, import the installed package, not the decoys."""
    from tests.helpers import free_port
    cwd = tmp_path / "above-a-clone"
    for package in ("camstream", "workers"):
        (cwd / package).mkdir(parents=True)
        (cwd / package / "__init__.py").write_text("raise ImportError('decoy imported')\n")
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "camstream"), "serve", "-d", "-i", "127.0.0.1",
         "-p", str(port), "-w", "1", "--runtime-dir", str(tmp_path / "run")],
        cwd=cwd, env=screen.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(url + "/healthz", timeout=2).json()["workers"]["alive"],
                 30, what="the daemon ready")
        sio = clients(url, "decoy")
        sio.call("frame", ({}, make_jpeg()), timeout=10)
        wait_for(lambda: screen.windows("decoy"), 20, what="the display's window")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
    assert "decoy imported" not in output and "Traceback" not in output, output


def test_serve_d_without_a_screen_warns_and_serves(daemons, clients):
    env = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    d = daemons("-d", workers=1, env=env)
    assert "--display: no screen" in d.output()
    assert d.child("display") is None
    sio = clients(d.url, "headless")
    assert sio.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
