"""Running as a systemd service: the units, the notify protocol, the configuration file,
reload, and the worker count signals."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio

from camstream import opencv
from camstream.liveness import ALIVE_S
from camstream.supervisor import systemd as service
from camstream.cli.args import CliError
from camstream.cli.serve import parse_serve, serve_parser
from tests.helpers import ROOT, make_jpeg, make_users, wait_for

UNITS = ("camstream.service", "camstream-display.service")
analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                             reason="systemd-analyze is not installed")


def unit_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this install (verify checks the binary exists)."""
    text = (ROOT / "systemd" / name).read_text()
    camstream = Path(sys.executable).with_name("camstream")
    path = tmp_path / name
    path.write_text(text.replace("/opt/camstream/bin/camstream", str(camstream)))
    return path


@analyze
@pytest.mark.parametrize("name", UNITS)
def test_units_verify_cleanly(tmp_path, name):
    result = subprocess.run(["systemd-analyze", "verify", str(unit_copy(tmp_path, name))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@analyze
def test_service_exposure_is_at_most_3_5(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=35",
         str(unit_copy(tmp_path, "camstream.service"))],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    level = float(result.stdout.split("Overall exposure level for camstream.service:")[1]
                  .split()[0])
    assert level <= 3.5


class NotifySocket:
    """A datagram socket bound where the daemon's NOTIFY_SOCKET points, recording messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self.on_ready = None
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            if "READY" in fields and self.on_ready:
                self.on_ready()
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [t for t, f in list(self.messages) if key in f and t >= since]

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.mark.serial
def test_notify_protocol(daemons, tmp_path, clients):
    notify = NotifySocket(tmp_path / "notify")
    answered: list[bool] = []
    try:
        d = daemons(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"},
                    ready=False, workers=2)
        # READY arrives only once the port answers
        notify.on_ready = lambda: answered.append(
            requests.get(d.url + "/healthz", timeout=2).status_code == 200)
        wait_for(lambda: notify.times("READY"), 30, what="READY=1")
        assert answered and answered[0] is True
        sio = clients(d.url, "kim")
        for i in range(5):
            sio.call("frame", ({}, make_jpeg(seed=i)), timeout=10)
        # WATCHDOG comes regularly, at half the interval
        start = time.monotonic()
        time.sleep(3.2)
        beats = notify.times("WATCHDOG", since=start)
        assert 2 <= len(beats) <= 5, beats
        status = wait_for(lambda: [f["STATUS"] for _, f in notify.messages
                                   if "clients" in f.get("STATUS", "")], 10, what="STATUS")
        assert "1 clients" in status[-1] and "workers 2/2" in status[-1], status[-1]

        # a hung ingest stops the watchdog (systemd would restart the service)
        ingest = d.child("ingest")
        ingest.suspend()
        try:
            time.sleep(ALIVE_S + 0.5)  # the last heartbeat goes stale
            hung = time.monotonic()
            time.sleep(3)
            assert notify.times("WATCHDOG", since=hung) == []
        finally:
            ingest.resume()
        wait_for(lambda: notify.times("WATCHDOG", since=hung), 10,
                 what="the watchdog to resume")

        # reload: RELOADING=1 then READY=1
        reload_at = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify.times("READY", since=reload_at), 10, what="READY after reload")
        assert notify.times("RELOADING", since=reload_at)[0] <= \
            notify.times("READY", since=reload_at)[0]

        stop_at = time.monotonic()
        assert d.stop() == 0
        assert notify.times("STOPPING", since=stop_at)
    finally:
        notify.close()


def test_without_notify_socket_nothing_is_sent(daemons):
    d = daemons(workers=1)  # the fixture's environment has no NOTIFY_SOCKET
    assert "notify failed" not in d.output()
    assert d.health()["status"] == "ok"


# -- the configuration file ---------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "camstream.conf"
    path.write_text(text)
    return str(path)


def test_every_key_of_the_example_file(tmp_path):
    users = make_users(tmp_path, alice="pw")
    text = (ROOT / "systemd" / "camstream.conf").read_text()
    text = text.replace("/var/lib/camstream/users", str(users))
    text = text.replace("/run/camstream", str(tmp_path / "run"))
    config = parse_serve(["serve", "--config", write(tmp_path, text)])
    assert (config.ip, config.port, config.auth, config.workers) == ("0.0.0.0", 8080, True, 2)
    assert config.max_frame_bytes == 4 * 1024 * 1024 and config.stop_timeout == 10.0
    assert config.runtime_dir == str(tmp_path / "run") and config.users_file == str(users)


def test_the_example_file_names_every_serve_option():
    text = (ROOT / "systemd" / "camstream.conf").read_text()
    for name, flag in serve_parser().flags.items():
        if flag.dest not in ("help", "config"):
            assert f"\n{name} = " in text or f"\n# {name} = " in text, \
                f"--{name} is missing from camstream.conf"


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "port = 9000\nworkers = 3\nlog-level = debug\n")
    config = parse_serve(["serve", "--config", path, "-p", "9100"])
    assert (config.port, config.workers, config.log_level) == (9100, 3, "debug")


@pytest.mark.parametrize("text, message", [
    ("wrokers = 2\n", ":1: unknown key 'wrokers'"),
    ("# c\nport = eighty\n", ":2: port: not a port number: 'eighty'"),
    ("workers = 0\n", ":1: workers: must be 1 or more"),
    ("auth = maybe\n", ":1: auth: expected yes or no"),
    ("log-level = loud\n", ":1: log-level: expected one of debug, info, warning, error"),
    ("just words\n", ":1: expected 'key = value'"),
])
def test_bad_files_name_file_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(CliError) as err:
        parse_serve(["serve", "--config", path])
    assert str(err.value).startswith(path) and message in str(err.value), str(err.value)


def test_a_bad_file_is_one_line_from_the_command(tmp_path):
    path = write(tmp_path, "port = 8080\nnope = 1\n")
    result = subprocess.run([sys.executable, "-m", "camstream", "serve", "--config", path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"camstream: error: {path}:2: unknown key 'nope' " \
        "(keys are serve's long options: " + result.stderr.split("long options: ")[1].strip()


# -- reload and worker count --------------------------------------------------------------------

def test_sighup_reloads_users_without_dropping_others(daemons, tmp_path, clients):
    users = make_users(tmp_path, alice="a-pass", bob="b-pass")
    d = daemons("-a", "--users", str(users), workers=1)
    alice = clients(d.url, "alice", "a-pass")
    bob = clients(d.url, "bob", "b-pass")
    gone = threading.Event()
    bob.on("disconnect", lambda *a: gone.set())
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients(d.url, "carol", "c-pass")
    subprocess.run([sys.executable, "-m", "camstream", "users", "remove", "bob", "--users",
                    str(users)], check=True, capture_output=True, timeout=30)
    make_users(tmp_path, carol="c-pass")
    d.proc.send_signal(signal.SIGHUP)
    assert gone.wait(10), "a removed user is disconnected"
    wait_for(lambda: "users reloaded" in d.output(), 10, what="the reload to be logged")
    # carol's refused login above costs her address and name a short penalty (0.5 s)
    time.sleep(0.6)
    carol = clients(d.url, "carol", "c-pass")
    for sio in (alice, carol):
        assert sio.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
    assert alice.connected


def test_ttin_and_ttou_change_the_worker_count(daemons):
    d = daemons(workers=1)
    d.proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: (w := d.health()["workers"])["alive"] == 2 and w["expected"] == 2, 20,
             what="2 workers")
    assert d.child("worker 2") is not None
    d.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: (w := d.health()["workers"])["expected"] == 1 and w["alive"] == 1, 20,
             what="1 worker")
    wait_for(lambda: d.child("worker 2") is None, 10, what="worker 2 to exit")
    d.proc.send_signal(signal.SIGTTOU)  # the last worker stays
    wait_for(lambda: "keeping the last worker" in d.output(), 10, what="the refusal logged")
    time.sleep(0.5)
    assert d.health()["workers"]["alive"] == 1
    assert os.path.exists(d.runtime_dir)


# -- the recipe, the README and the unit agree -------------------------------------------------

def unit_setting(key: str) -> str:
    (value,) = re.findall(rf"^{key}=(.*)$", (ROOT / "systemd" / "camstream.service").read_text(),
                          re.M)
    return value


def test_the_readme_shows_the_recipe_exactly():
    """README.md's service block is the recipe as printed in the clone's own folder (what
    tests/integration/test_systemd_real.py runs, from a wheel's copy)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run as a service"):]
    block = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M).group(1)
    assert block == service.render(Path("systemd"), Path("."), " from this clone")


def test_the_printed_recipe_names_this_tree_never_an_index():
    text = subprocess.run([sys.executable, "-m", "camstream", "systemd"], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert "pip install camstream" not in text
    assert f"pip install '{ROOT}[headless]'" in text, text


@pytest.mark.parametrize("key, directory", [("ConfigurationDirectoryMode", "/etc/camstream"),
                                            ("StateDirectoryMode", "/var/lib/camstream")])
def test_unit_and_recipe_make_directories_alike(key, directory):
    """systemd warns on every start when a directory exists with another mode than the unit's
    (and the recipe makes them first)."""
    modes = re.findall(rf"install -d -m (\d+) .*{re.escape(directory)}$", service.RECIPE, re.M)
    assert modes == [unit_setting(key)]


def test_the_reload_needs_no_kill_binary():
    assert unit_setting("ExecReload") == "/opt/camstream/bin/camstream reload $MAINPID"


def test_reload_signals_the_daemon(daemons):
    d = daemons(workers=1)
    result = subprocess.run([sys.executable, "-m", "camstream", "reload", str(d.proc.pid)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "SIGHUP: reloading" in d.output(), 10, what="the reload")


@pytest.mark.parametrize("pid, message", [("1", "is not camstream"),
                                          ("4194304", "no process 4194304")])
def test_reload_refuses_what_is_not_a_daemon(pid, message):
    result = subprocess.run([sys.executable, "-m", "camstream", "reload", pid],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


# -- OpenCV: headless or GUI, never needed where it is not used ---------------------------------

WITHOUT_OPENCV = ("import sys; sys.modules['cv2'] = None; from camstream.cli import main; "
                  "sys.exit(main(sys.argv[1:]))")


def without_opencv(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """camstream on a machine where ``import cv2`` fails."""
    return subprocess.run([sys.executable, "-c", WITHOUT_OPENCV, *argv], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_status_users_keys_need_no_opencv(daemons, tmp_path):
    d = daemons(workers=1)
    status = without_opencv("status", d.url)
    assert status.returncode == 0 and "workers" in status.stdout, status.stderr
    users = tmp_path / "users"
    add = subprocess.run([sys.executable, "-c", WITHOUT_OPENCV, "users", "add", "kim",
                          "--users", str(users), "--password-stdin"], input="pw\n",
                         capture_output=True, text=True, timeout=60)
    assert add.returncode == 0, add.stderr
    listed = without_opencv("users", "list", "--users", str(users))
    assert listed.stdout.split() == ["kim"], listed.stderr
    keys = without_opencv("keys", "generate", str(tmp_path / "keys"))
    assert keys.returncode == 0 and (tmp_path / "keys" / "server.key").exists(), keys.stderr
    for verb in (["systemd"], ["reload", "1"]):
        assert "Traceback" not in without_opencv(*verb).stderr


def test_serve_without_opencv_says_what_to_install(tmp_path):
    result = without_opencv("serve", "-p", "1", "--runtime-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "OpenCV is not installed" in result.stderr
    assert "camstream[headless]" in result.stderr and "camstream[gui]" in result.stderr


def test_a_gui_build_without_x_libraries_is_explained():
    error = ImportError("libxcb.so.1: cannot open shared object file: No such file or directory")
    line = opencv.explain(error)
    assert "libxcb.so.1" in line and "opencv-python-headless" in line and "\n" not in line


def test_this_venv_has_the_gui_build_for_the_display_tests():
    import cv2
    assert opencv.has_gui(cv2)
