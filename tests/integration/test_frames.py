"""``camstream.frames()``, the public API on the bus, against a real daemon: two clients'
frames raw and processed, the filters, the lazy image, a clean detach; and the README's
example run as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
from tests.helpers import ROOT, Daemon, make_jpeg, wait_for
from tests.helpers.streaming import Streamer

import camstream


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon whose runtime directory is the default one under XDG_RUNTIME_DIR=xdg."""
    tmp = tmp_path_factory.mktemp("frames")
    d = Daemon(tmp, "--runtime-dir", str(tmp / "xdg" / "camstream-8080"), workers=1)
    d.runtime_dir = tmp / "xdg" / "camstream-8080"  # the default, for port 8080
    d.xdg = tmp / "xdg"
    try:
        d.wait_ready()
        yield d
    finally:
        d.shutdown()


@pytest.fixture
def two_clients(daemon):
    pictures = [make_jpeg(320, 240, seed=i) for i in range(4)]
    made = [Streamer(daemon.url, name, fps=10, frames=pictures).start()
            for name in ("fern", "gus")]
    yield made
    for s in made:
        s.stop()


def collect(until, **filters) -> list[camstream.Frame]:
    got: list[camstream.Frame] = []
    deadline = time.monotonic() + 20
    for frame in camstream.frames(**filters, timeout=5):
        got.append(frame)
        if until(got) or time.monotonic() > deadline:
            break
    return got


def test_frames_of_two_clients_raw_and_processed(daemon, two_clients):
    kinds = lambda got: {(f.client, f.processed) for f in got}  # noqa: E731
    want = {("fern", False), ("fern", True), ("gus", False), ("gus", True)}
    got = collect(lambda got: kinds(got) >= want, runtime_dir=str(daemon.runtime_dir))
    assert kinds(got) >= want, kinds(got)
    for frame in got:
        assert frame.image.shape == (240, 320, 3)   # decoded from the JPEG, on first use
        assert frame.latency_ms >= 0
        if frame.processed:
            assert frame.result["width"] == 320 and not frame.annotated
        else:
            assert frame.result is None
    raw = [f for f in got if not f.processed]
    assert all(f._image is not None for f in got)  # decoded because we asked
    assert len({f.seq for f in raw if f.client == "fern"}) == len(
        [f for f in raw if f.client == "fern"]), "a frame twice"


def test_filters_by_client_and_kind(daemon, two_clients):
    only_gus = collect(lambda got: len(got) >= 10, client="gus",
                       runtime_dir=str(daemon.runtime_dir))
    assert len(only_gus) >= 10 and {f.client for f in only_gus} == {"gus"}
    processed = collect(lambda got: len(got) >= 10, raw=False,
                        runtime_dir=str(daemon.runtime_dir))
    assert len(processed) >= 10 and all(f.processed and f.result for f in processed)
    raw = collect(lambda got: len(got) >= 10, processed=False,
                  runtime_dir=str(daemon.runtime_dir))
    assert len(raw) >= 10 and not any(f.processed for f in raw)
    assert raw[0]._image is None  # never decoded unless asked for


def test_leaving_the_loop_detaches(daemon, two_clients):
    stream = camstream.frames(runtime_dir=str(daemon.runtime_dir))
    next(stream)
    sub = stream.gi_frame.f_locals["sub"]
    stream.close()  # what `break` does once the loop's generator is dropped
    assert sub.ctx.closed
    with camstream.Subscription(str(daemon.runtime_dir)) as sub:
        assert sub.next(timeout=10) is not None
    assert sub.ctx.closed


def test_no_daemon_is_one_clear_error(tmp_path):
    with pytest.raises(camstream.NoDaemon, match="no camstream daemon is running in"):
        next(camstream.frames(runtime_dir=str(tmp_path)))


def test_the_readme_example_runs_as_written(daemon, two_clients):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "camstream.frames()" in b)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(daemon.xdg), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-c", example], cwd=ROOT, text=True, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: p.poll() is not None or {line.split()[0] for line in list(lines)
                                                  if line.strip()} >= {"fern", "gus"},
                 30, what="the example to print both clients")
    finally:
        p.kill()
        p.wait()
        reader.join(timeout=5)
        p.stdout.close()
        errors = p.stderr.read()
        p.stderr.close()
    assert {line.split()[0] for line in lines if line.strip()} >= {"fern", "gus"}, (
        lines[-3:], errors[-2000:])
    line = next(line for line in lines if line.startswith("fern"))
    assert "(240, 320, 3)" in line, line
