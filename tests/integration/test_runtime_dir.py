"""The runtime directory and its sockets, attacked by other local users for real: a directory
made first by someone else (a symlinked lock, a 0777 directory with a planted socket), a
member of the daemon's group forging worker reports, socket files deleted under a running
daemon; and the default directory per port, so a second daemon needs no flag."""
from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from camstream.cli import VERBS
from tests.helpers import ROOT, Daemon, free_port, make_jpeg, wait_for
from tests.helpers.localusers import GROUP, local_users  # noqa: F401 (a fixture)

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY")}


def serve_once(port: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``camstream serve`` that is expected to stop at once (with one line)."""
    return subprocess.run([sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
                           "-p", str(port), "-w", "1", *args],
                          cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True,
                          timeout=timeout)


SERVE = """
import sys
from camstream.cli import main
sys.exit(main(["serve", "-i", "127.0.0.1", "-p", sys.argv[1], "-w", "1"]))
"""


def serve_as(users, user: str, port: int) -> subprocess.CompletedProcess:
    """``camstream serve`` with its default runtime directory, run by ``user`` (without
    XDG_RUNTIME_DIR, as from cron or ssh), expected to stop at once."""
    return users.run_as(user, SERVE, str(port), env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                        preload=SERVE_MODULES)


SERVE_MODULES = ("camstream.cli", "camstream.cli.serve", "camstream.supervisor.runtime",
                 "camstream.bus", "camstream.rundir", "camstream.users",
                 "camstream.supervisor.notify", "camstream.proc", "camstream.supervisor.arbiter",
                 "camstream.supervisor.pool", "camstream.supervisor.children",
                 "camstream.attach.display", "camstream.attach.tap", "camstream.client", "ctypes.util",
                 "workers.processors", "workers.builtin", "setproctitle", "ssl",
                 # the verbs, which the parser imports as it is built
                 *(f"camstream.cli.{verb.partition(':')[0]}" for verb in VERBS))


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def open_tmp():
    """A directory under /tmp that other users may enter (pytest's tmp_path is root's
    alone), removed afterwards."""
    made = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="cs-test-", dir="/tmp"))
        path.chmod(0o755)
        made.append(path)
        return path
    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


# -- item 1: a directory someone else made first ------------------------------------------------

PLANT_LOCK = """
import os, sys
os.mkdir(sys.argv[1], 0o755)
os.symlink(sys.argv[2], os.path.join(sys.argv[1], "serve.lock"))
"""

PLANT_SOCKET = """
import json, os, socket, sys, time
os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)
listeners = []
for name in ("bus-in", "frames", "bus-out"):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(sys.argv[1], name)); s.listen(8); s.settimeout(0.1)
    listeners.append(s)
print("ready", flush=True)
got = 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for s in listeners:
        try:
            conn, _ = s.accept()
            got += len(conn.recv(65536) or b"") + 1
        except OSError:
            pass
print(json.dumps({"connections_and_bytes": got}), flush=True)
"""


def test_a_runtime_dir_another_user_made_first_is_refused(local_users, open_tmp):
    """Without XDG_RUNTIME_DIR the default is /tmp/camstream-UID-PORT, which anyone can
    create first. The daemon (a second user, csvictim) refuses it in one line: the lock's
    symlink does not truncate the victim's file, and the planted sockets get nothing."""
    victim = local_users.uid["csvictim"]
    port = free_port()
    run_dir = f"/tmp/camstream-{victim}-{port}"
    home = open_tmp()
    precious = home / "precious"
    precious.write_text("the victim's data\n")
    os.chown(precious, victim, local_users.gid["csvictim"])
    try:
        # attack 1: serve.lock -> the victim's file
        r = local_users.run_as("csattacker", PLANT_LOCK, run_dir, str(precious))
        assert r.returncode == 0, r.stderr
        line = one_line(serve_as(local_users, "csvictim", port))
        assert run_dir in line and "belongs to csattacker" in line, line
        assert precious.read_text() == "the victim's data\n"
        assert os.path.islink(f"{run_dir}/serve.lock")
        shutil.rmtree(run_dir)

        # attack 2: a 0777 directory whose sockets are the attacker's, listening for frames
        attacker = local_users.spawn_as("csattacker", PLANT_SOCKET, run_dir, "8")
        try:
            assert attacker.stdout.readline().strip() == "ready"
            line = one_line(serve_as(local_users, "csvictim", port))
            assert run_dir in line and "belongs to csattacker" in line, line
            got = json.loads(attacker.stdout.readline())
        finally:
            attacker.kill()
        assert got == {"connections_and_bytes": 0}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_group_or_world_writable_dir_and_a_symlinked_lock_are_refused(tmp_path):
    port = free_port()
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    line = one_line(serve_once(port, "--runtime-dir", str(loose)))
    assert str(loose) in line and "writable by group and others (mode 777)" in line, line
    assert not (loose / "serve.lock").exists()

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o750)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (mine / "serve.lock").symlink_to(target)
    line = one_line(serve_once(port, "--runtime-dir", str(mine)))
    assert "serve.lock is a symbolic link" in line, line
    assert target.read_text() == "keep me\n"

    (mine / "serve.lock").unlink()
    link = tmp_path / "link"
    link.symlink_to(mine)
    line = one_line(serve_once(port, "--runtime-dir", str(link)))
    assert "is a symbolic link" in line, line


# -- item 3: the group may subscribe, never publish ---------------------------------------------

GROUP_MEMBER = """
import json, os, socket, sys, time
import zmq
rd, pid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {}
for name in ("bus-in", "frames", "bus-out"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(os.path.join(rd, name))
        out[name] = "connected"
    except OSError as e:
        out[name] = e.errno
    s.close()
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"stats\\0")
sub.connect(f"ipc://{rd}/bus-out")
out["heard"] = bool(sub.poll(5000))
pub = ctx.socket(zmq.PUB)
pub.connect(f"ipc://{rd}/bus-in")
pull = ctx.socket(zmq.PULL)
pull.connect(f"ipc://{rd}/frames")
forged = {"role": "worker", "index": 1, "pid": pid, "started": 0, "host": socket.gethostname(),
          "remote": False, "stopping": False, "done": {},
          "clients": {"forged": {"processed": 1000000, "errors": 0}}}
print("forging", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    pub.send_multipart([b"stats\\0worker 1\\0", json.dumps(forged).encode()])
    time.sleep(0.05)
out["stolen_frames"] = 0
while pull.poll(10):
    pull.recv_multipart()
    out["stolen_frames"] += 1
print(json.dumps(out), flush=True)
ctx.destroy(linger=0)
"""


def test_the_group_subscribes_but_cannot_publish_or_pull(local_users, open_tmp, clients):
    """A member of the daemon's group (a desktop user with a display) forges a worker's
    reports (processed 1,000,000, and heartbeats for a stopped worker) and pulls from the
    frame pipeline: /healthz shows none of it, the stopped worker is replaced on time, no
    frame reaches the attacker; the same user's subscription works. A user outside the
    group cannot even reach the subscribing socket."""
    base = open_tmp()
    run_dir = base / "run"
    run_dir.mkdir()
    os.chown(run_dir, 0, grp.getgrnam(GROUP).gr_gid)
    run_dir.chmod(0o2750)  # as systemd's RuntimeDirectory=, with the service's group
    d = Daemon(base, "--worker-timeout", "2", "--runtime-dir", str(run_dir), workers=1)
    try:
        d.wait_ready()
        modes = {n: stat.S_IMODE(os.stat(run_dir / n).st_mode)
                 for n in ("bus-in", "frames", "bus-out")}
        assert modes == {"bus-in": 0o600, "frames": 0o600, "bus-out": 0o660}, modes
        worker = d.child("worker 1")
        sio = clients(d.url, "alice")
        worker.send_signal(signal.SIGSTOP)  # hung: only forged heartbeats would keep it
        forger = local_users.spawn_as("csviewer", GROUP_MEMBER, str(run_dir), str(worker.pid),
                                      "8")
        try:
            assert forger.stdout.readline().strip() == "forging", forger.stderr()
            start = time.monotonic()
            replaced = None
            while time.monotonic() - start < 7:
                h = d.health()
                assert "forged" not in h["clients"], h
                sio.emit("frame", ({}, make_jpeg()))
                now = d.child("worker 1")
                if now is not None and now.pid != worker.pid and replaced is None:
                    replaced = time.monotonic() - start
                time.sleep(0.2)
            out = json.loads(forger.stdout.readline())
        finally:
            forger.kill()
        assert replaced is not None and replaced < 6, \
            f"the stopped worker was not replaced on time ({replaced})"
        assert out == {"bus-in": errno.EACCES, "frames": errno.EACCES, "bus-out": "connected",
                       "heard": True, "stolen_frames": 0}, out
        wait_for(lambda: d.health()["clients"]["alice"]["processed"] > 0, 15,
                 what="alice's frames processed by the new worker")
        outsider = local_users.run_as("csattacker", (
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as e:\n    print(e.errno)"), str(run_dir / "bus-out"))
        assert outsider.stdout.strip() == str(errno.EACCES), outsider
    finally:
        d.shutdown()


# -- item 14: socket files removed under a running daemon ---------------------------------------

def test_removed_socket_files_are_bound_again(daemons, clients):
    """rm the runtime directory's sockets: each binder notices within a second and binds
    again (one log line each); a replacement worker joins, a new tap hears results."""
    d = daemons(workers=2)
    sio = clients(d.url, "alice")
    names = ("bus-in", "bus-out", "frames")
    for n in names:
        os.unlink(d.runtime_dir / n)
    wait_for(lambda: all((d.runtime_dir / n).is_socket() for n in names), 5,
             what="the socket files bound again")
    out = d.output()
    assert "bus endpoints" in out and "binding the bus again" in out
    assert "frames was removed from the runtime directory: bound it again" in out
    old = d.child("worker 1")
    old.kill()
    wait_for(lambda: (w := d.child("worker 1")) and w.pid != old.pid, 10, what="a new worker")
    wait_for(lambda: d.health()["workers"]["alive"] == 2, 15,
             what="the replacement worker joined")
    tap = subprocess.Popen([sys.executable, "-m", "camstream", "tap", "--runtime-dir",
                            str(d.runtime_dir), "--count", "1"], stdout=subprocess.PIPE,
                           cwd=ROOT, text=True)
    try:
        deadline = time.monotonic() + 20
        while tap.poll() is None and time.monotonic() < deadline:
            sio.emit("frame", ({}, make_jpeg()))
            time.sleep(0.2)
        assert tap.poll() == 0, "the tap heard no result"
        assert json.loads(tap.stdout.readline())["client"] == "alice"
    finally:
        if tap.poll() is None:
            tap.kill()
        tap.wait()
    wait_for(lambda: d.health()["status"] == "ok", 10, what="status ok again")
    shutil.rmtree(d.runtime_dir)  # the whole directory, too: made again, sockets bound again
    wait_for(lambda: all((d.runtime_dir / n).is_socket() for n in names), 5,
             what="the directory and its sockets made again")
    assert stat.S_IMODE(os.stat(d.runtime_dir).st_mode) == 0o750
    processed = d.health()["clients"]["alice"]["processed"]
    wait_for(lambda: sio.emit("frame", ({}, make_jpeg())) or
             d.health()["clients"]["alice"]["processed"] > processed, 15, interval=0.3,
             what="frames processed after the directory was made again")


# -- issue 13 item 5: a second daemon on the same machine ---------------------------------------

def test_a_second_daemon_on_another_port_needs_no_flag(tmp_path):
    """The default runtime directory follows the port, and tap, display and status find a
    daemon by its --port (or say which directory they looked in)."""
    from camstream.rundir import default
    ports = [free_port(), free_port()]
    dirs = [Path(default(p)) for p in ports]
    assert dirs[0] != dirs[1] and all(str(p) in str(d) for p, d in zip(ports, dirs))
    logs = [open(tmp_path / f"serve-{p}.log", "w") for p in ports]
    procs = [subprocess.Popen([sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
                               "-p", str(p), "-w", "1"], cwd=ROOT, env=CLEAN_ENV,
                              stdout=log, stderr=subprocess.STDOUT)
             for p, log in zip(ports, logs)]
    try:
        for p, proc in zip(ports, procs):
            def up(p=p, proc=proc):
                assert proc.poll() is None, (tmp_path / f"serve-{p}.log").read_text()
                r = subprocess.run([sys.executable, "-m", "camstream", "status", "--port",
                                    str(p), "--json"], capture_output=True, text=True,
                                   timeout=30, cwd=ROOT)
                return r.returncode == 0 and json.loads(r.stdout)["workers"]["alive"] == 1
            wait_for(up, 40, interval=0.5, what=f"the daemon on {p}")
        tap = subprocess.Popen([sys.executable, "-m", "camstream", "tap", "--port",
                                str(ports[1]), "--count", "1"], stdout=subprocess.PIPE,
                               env=CLEAN_ENV, cwd=ROOT, text=True)
        import socketio
        sio = socketio.Client(reconnection=False)
        sio.connect(f"http://127.0.0.1:{ports[1]}", transports=["websocket"], wait_timeout=10,
                    auth={"username": "second", "password": ""})
        try:
            deadline = time.monotonic() + 20
            while tap.poll() is None and time.monotonic() < deadline:
                sio.emit("frame", ({}, make_jpeg()))
                time.sleep(0.2)
            assert tap.poll() == 0 and json.loads(tap.stdout.readline())["client"] == "second"
        finally:
            sio.disconnect()
            if tap.poll() is None:
                tap.kill()
            tap.wait()
        nobody = free_port()
        r = subprocess.run([sys.executable, "-m", "camstream", "display", "--port",
                            str(nobody), "--snapshot", str(tmp_path / "s")], env=CLEAN_ENV,
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 2 and default(nobody) in r.stderr and "--port" in r.stderr, \
            r.stderr
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
