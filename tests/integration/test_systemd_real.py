"""The service under a real systemd: a minimal Debian 12 booted with ``systemd-nspawn -b``,
camstream installed from wheels built from this tree, and the recipe that ``camstream systemd``
prints followed line by line, as a desktop admin would (so recipe and test cannot drift).

The container shares the host's network (no --private-network), so the clients here talk to
the service on 127.0.0.1 at a free port. Its root is the cached debootstrap, mounted read-only
under a tmpfs overlay (--volatile=overlay): every run starts from the same clean system.

The tests run in file order on one booted machine: each phase leaves the service as the next
one expects it (running, one client streaming), and the last checks that every line of the
recipe was run.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio

from tests.helpers import ROOT, free_port, make_jpeg, wait_for

pytestmark = pytest.mark.timeout(600)

CACHE = Path("/var/cache/camstream-tests")
SUITE = "bookworm"
# what the recipe assumes of a minimal server, and no more: no procps (/bin/kill), no X
PACKAGES = ("systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
            "python3", "python3-venv", "sudo")
DESK = "desk"            # the desktop admin who follows the recipe (sudo, adm: as Debian's first user)
DESK_UID = 1000
OUTSIDER = "outsider"    # a user outside the camstream group
PASSWORDS = {"alice": "alice-pw-Qx7", "bob": "bob-pw-Zr4", "carol": "carol-pw-Mv9"}
UNIT = "camstream"
EXPOSURE_BOUND = 1.2     # systemd-analyze security, measured live: the README says this figure
BOOT_TIMEOUT = 90


def why_no_containers() -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter")
               if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (tests/setup.sh installs debootstrap and " \
               "systemd-container as root)"
    if not os.path.exists("/proc/self/ns/pid") or not os.path.isdir("/sys/fs/cgroup"):
        return "no namespaces or cgroups here"
    return None


if (reason := why_no_containers()) is not None:
    pytest.skip(f"cannot run containers: {reason}", allow_module_level=True)


# -- the cached Debian ----------------------------------------------------------------------

def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (no other network is assumed)."""
    uris: list[str] = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split():
                    uris += fields.get("URIs", "").split()
        else:
            uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    pytest.fail(f"no Debian archive in this machine's apt sources (found {uris})")


def debian_root() -> Path:
    """debootstrap once per package list and mirror; built aside and renamed into place, so an
    interrupted build is never taken for a finished one."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{SUITE} minbase {','.join(PACKAGES)} {mirror}".encode()).hexdigest()
    root = CACHE / f"debian12-{key[:12]}"
    if (root / "usr/bin/python3").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits for the first one's build
        if (root / "usr/bin/python3").exists():
            return root
        for stale in CACHE.glob(f"{root.name}.tmp-*"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        building = CACHE / f"{root.name}.tmp-{os.getpid()}"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(building), mirror], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.fail(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        os.rename(building, root)
    return root


def build_wheels(dest: Path, scratch: Path) -> Path:
    """``pip wheel`` of a clean copy of this tree (a stale build/ cannot leak in), with the
    headless extra: camstream's wheel and every dependency's, for an install without an index."""
    tree = scratch / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", "*.egg-info", "node_modules", "__pycache__", ".git",
        ".pytest_cache", "results"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", f"{tree}[headless]",
                             "-w", str(dest)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = dest.glob("camstream-*.whl")
    return wheel


# -- the machine ----------------------------------------------------------------------------

class Machine:
    """A booted container and ways to run commands in it (nsenter into its init's namespaces:
    the host has no systemd of its own to ask)."""

    def __init__(self, root: Path, wheels: Path, log: Path) -> None:
        self.name = f"camstream-test-{os.getpid()}"
        self.log = open(log, "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", f"--directory={root}",
             "--volatile=overlay", "--register=no", "--keep-unit", f"--machine={self.name}",
             f"--bind-ro={wheels}:/wheels"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise

    def _boot(self) -> None:
        self.leader = wait_for(self._find_leader, 30, what="the container's init")
        # Until systemd listens on its bus, systemctl fails to connect and prints "offline"
        # (or nothing, by version); --wait then returns at once, so those count as not yet.
        def settled() -> str | None:
            state = self.sh("timeout 60 systemctl is-system-running --wait",
                            check=False, timeout=BOOT_TIMEOUT).stdout.strip()
            return None if state in ("", "offline", "initializing", "starting") else state
        state = wait_for(settled, BOOT_TIMEOUT, interval=0.2, what="the container to boot")
        assert state in ("running", "degraded"), f"booted to {state!r}: " + \
            self.sh("systemctl --failed --no-legend", check=False).stdout

    def _find_leader(self) -> int | None:
        if self.nspawn.poll() is not None:
            self.log.flush()
            raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}: "
                                 f"{Path(self.log.name).read_text()[-2000:]}")
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s*(.*)$", status, re.M).group(1).split()
            if pid != self.nspawn.pid and nspid[-1] == "1" and len(nspid) > 1:
                # once it is systemd (before, it is nspawn's child setting the container up)
                return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd" \
                    else None
            todo += [int(k) for k in kids]
        return None

    def argv(self, script: str, user: str = "root") -> list[str]:
        enter = ["nsenter", f"--target={self.leader}", "--all", "--", "/usr/bin/env", "-i",
                 "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]
        if user == "root":
            return [*enter, "HOME=/root", "/bin/bash", "-c", script]
        uid = DESK_UID if user == DESK else DESK_UID + 1
        # a login of that user: its HOME, its groups read afresh, its session's runtime dir
        return [*enter, "/usr/sbin/runuser", "-u", user, "--", "/usr/bin/env",
                f"HOME=/home/{user}", f"USER={user}", f"LOGNAME={user}", "SHELL=/bin/bash",
                f"XDG_RUNTIME_DIR=/run/user/{uid}", "/bin/bash", "-c", f"cd ~ && {script}"]

    def sh(self, script: str, user: str = "root", check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(script, user), capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check:
            assert result.returncode == 0, \
                f"{script!r} as {user} exited {result.returncode}:\n{result.stdout[-3000:]}" \
                f"\n{result.stderr[-3000:]}"
        return result

    def start(self, script: str, user: str = "root") -> subprocess.Popen:
        """A command that runs until stopped (in a process group of its own, stopped by it)."""
        return subprocess.Popen(self.argv(script, user), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def on_terminal(self, script: str, user: str, answers: list[str],
                    timeout: float = 60) -> tuple[int, str]:
        """Run with a terminal, typing each answer at the next prompt (getpass reads /dev/tty)."""
        master, slave = os.openpty()

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(self.argv(script, user), stdin=slave, stdout=slave,
                                stderr=slave, preexec_fn=controlling_terminal)
        os.close(slave)
        out, typed, deadline = b"", 0, time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # EIO: the terminal's other side is closed
                        break
                    if not data:
                        break
                    out += data
                    prompts = len(re.findall(rb"(password for \S+|again): ", out))
                    if typed < len(answers) and prompts > typed:
                        os.write(master, answers[typed].encode() + b"\n")
                        typed += 1
                elif proc.poll() is not None:
                    break
            else:
                raise AssertionError(f"{script!r} did not finish in {timeout} s: {out!r}")
            return proc.wait(timeout=10), out.decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)

    def processes(self, text: str) -> list[str]:
        """Command lines of the container's processes that contain text (no ps: no procps)."""
        out = self.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; "
                      "done").stdout
        return [line.strip() for line in out.splitlines() if text in line]

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since_cursor: str | None = None) -> list[dict]:
        after = f" --after-cursor={shlex.quote(since_cursor)}" if since_cursor else ""
        out = self.sh(f"journalctl -u {UNIT} -o json --no-pager{after}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def cursor(self) -> str:
        out = self.sh(f"journalctl -u {UNIT} -n 1 -o json --no-pager").stdout.strip()
        return json.loads(out.splitlines()[-1])["__CURSOR"] if out else ""

    def stop(self) -> None:
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # the container's init powers off
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.log.close()


def messages(entries: list[dict]) -> list[str]:
    """What camstream itself logged (not systemd's lines about the unit)."""
    return [e["MESSAGE"] for e in entries
            if e.get("_COMM") != "systemd" and e.get("SYSLOG_IDENTIFIER") != "systemd"
            and isinstance(e.get("MESSAGE"), str)]


# -- the recipe -----------------------------------------------------------------------------

class Recipe:
    """The commands of the printed recipe, in order; each is run once, as printed, with the
    one change a reader makes too: the port (8080 in the recipe) is the one set in
    camstream.conf, here a free one."""

    def __init__(self, text: str, port: int) -> None:
        self.text = text
        self.port = port
        self.lines = [line for line in text.splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        self.done: list[str] = []

    def line(self, pattern: str) -> str:
        """The next line not yet run that matches (a regex), in the recipe's order."""
        for i, line in enumerate(self.lines):
            if line not in self.done and re.search(pattern, line):
                skipped = [before for before in self.lines[:i] if before not in self.done]
                assert not skipped, f"{line!r} would run before {skipped}"
                self.done.append(line)
                return line.replace("8080", str(self.port))
        raise AssertionError(f"no line matching {pattern!r} left in the recipe:\n{self.text}")


class Streamer:
    """One client streaming as a phone would (python-socketio 5, frames with acks, 5 Hz),
    reconnecting by itself; counts what happened to it."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.5,
                                   reconnection_delay_max=1)
        self.connects = 0
        self.disconnects: list[str] = []
        self.accepted: list[float] = []
        self._stop = threading.Event()
        self.sio.on("connect", self._connected)
        self.sio.on("disconnect", lambda *reason: self.disconnects.append(
            str(reason[0]) if reason else ""))
        self.sio.connect(url, auth={"username": name, "password": PASSWORDS[name]},
                         transports=["websocket"], wait_timeout=10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connected(self) -> None:
        self.connects += 1

    def _run(self) -> None:
        seed = 0
        while not self._stop.wait(0.2):
            if not self.sio.connected:
                continue
            seed += 1
            try:
                ack = self.sio.call("frame", ({}, make_jpeg(seed=seed)), timeout=5)
            except Exception:  # disconnected mid-call: the client reconnects by itself
                continue
            if ack and ack.get("accepted"):
                self.accepted.append(time.monotonic())

    def accepted_since(self, t: float) -> int:
        return sum(1 for a in self.accepted if a >= t)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        self.sio.disconnect()


def health(url: str) -> dict:
    """/healthz as a user of the users file sees it (under -a, client names need a login)."""
    return requests.get(url + "/healthz", auth=("alice", PASSWORDS["alice"]), timeout=3).json()


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("systemd-real")
    root = debian_root()
    wheels = scratch / "wheels"
    wheel = build_wheels(wheels, scratch)
    m = Machine(root, wheels, scratch / "console.log")
    m.wheel = wheel
    try:
        # this machine's pip has no index: the wheels are its package source
        m.sh("printf '[global]\\nno-index = true\\nfind-links = /wheels\\n' > /etc/pip.conf")
        m.sh(f"useradd -m -u {DESK_UID} -s /bin/bash -G sudo,adm {DESK} && "
             f"useradd -m -u {DESK_UID + 1} -s /bin/bash {OUTSIDER} && chmod 0755 /home/* && "
             f"echo '{DESK} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{DESK}")
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def recipe(machine):
    """The recipe as ``camstream systemd`` prints it from a wheel install (the desktop admin
    tried the wheel in a virtualenv of their own first)."""
    whl = f"/wheels/{machine.wheel.name}"
    machine.sh(f"python3 -m venv ~/try && ~/try/bin/pip install -q '{whl}[headless]'",
               user=DESK, timeout=300)
    text = machine.sh("~/try/bin/camstream systemd", user=DESK).stdout
    # camstream is on no package index: the recipe installs the wheel this copy came from
    assert "pip install camstream" not in text
    assert f"sudo /opt/camstream/bin/pip install '{whl}[headless]'" in text, text
    return Recipe(text, free_port())


@pytest.fixture(scope="module")
def service(machine, recipe):
    """Steps 1 to 5 of the recipe: the service installed, enabled and started."""
    url = f"http://127.0.0.1:{recipe.port}"
    machine.sh(recipe.line(r"useradd --system"), user=DESK)
    machine.sh(recipe.line(r"usermod -aG camstream"), user=DESK)
    # "then log out and in again": desk's session (and user manager) starts with the group
    machine.sh(f"loginctl enable-linger {DESK}")
    machine.sh(recipe.line(r"python3 -m venv /opt/camstream"), user=DESK)
    machine.sh(recipe.line(r"/opt/camstream/bin/pip install"), user=DESK, timeout=300)
    machine.sh(recipe.line(r"install .*camstream.service /etc/systemd/system"), user=DESK)
    machine.sh(recipe.line(r"install -d -m 0755 /etc/camstream"), user=DESK)
    machine.sh(recipe.line(r"install .*camstream.conf /etc/camstream"), user=DESK)
    # "edit to taste": loopback and a free port (the container shares this machine's network)
    machine.sh(f"sed -i -e 's/^ip = .*/ip = 127.0.0.1/' -e 's/^port = .*/port = {recipe.port}/'"
               " /etc/camstream/camstream.conf")
    machine.sh(recipe.line(r"install -d -m 0750 -o camstream"), user=DESK)
    rc, out = machine.on_terminal(recipe.line(r"users add alice"), DESK,
                                  [PASSWORDS["alice"]] * 2)
    assert rc == 0 and "saved alice" in out, out
    machine.sh(recipe.line(r"systemctl daemon-reload"), user=DESK)
    started = machine.sh(recipe.line(r"systemctl enable --now camstream"), user=DESK)
    # Type=notify: enable --now returned once READY=1 came, so the port answers now and every
    # worker has reported
    h = health(url)
    assert h["workers"]["alive"] == h["workers"]["expected"] == 2, h
    machine.start_output = started.stdout + started.stderr
    machine.url = url
    return url


@pytest.fixture(scope="module")
def alice(service):
    streamer = Streamer(service, "alice")
    yield streamer
    streamer.close()


# -- the phases, in order -------------------------------------------------------------------

def test_started_with_a_status_line(machine, recipe, service):
    assert machine.show("ActiveState")["ActiveState"] == "active"
    status = machine.sh(recipe.line(r"^systemctl status camstream"), user=DESK).stdout
    assert re.search(r'Status: "\d+ clients, [\d.]+ fps in, [\d.]+ fps processed, \d+ dropped, '
                     r'workers 2/2', status), status
    out = machine.sh(recipe.line(r"camstream status http"), user=DESK).stdout
    assert re.search(r"workers:? 2 (of 2 )?alive", out), out
    journal = machine.journal()
    text = "\n".join(e["MESSAGE"] for e in journal if isinstance(e.get("MESSAGE"), str))
    ready = [m for m in messages(journal) if "ready:" in m]
    assert ready, text
    # no warning about the configuration directory, no failed step, no restarts
    assert "ConfigurationDirectory" not in text and "Failed at step" not in text, text
    assert machine.show("NRestarts")["NRestarts"] == "0"


def test_headless_opencv_without_x_libraries(machine, service):
    libs = machine.sh("ldconfig -p").stdout
    assert "libxcb" not in libs and "libX11" not in libs
    dists = machine.sh("/opt/camstream/bin/pip list --format=freeze").stdout.lower()
    assert "opencv-python-headless==" in dists and "\nopencv-python==" not in "\n" + dists
    gui = machine.sh("/opt/camstream/bin/python -c 'import cv2; from camstream.opencv import "
                     "has_gui; print(has_gui(cv2))'").stdout.strip()
    assert gui == "False"
    # the reload needs no /bin/kill: a minimal system has none
    assert machine.sh("test -e /bin/kill || test -e /usr/bin/kill", check=False).returncode == 1
    # the unit's Documentation= is a file that exists
    doc = machine.show("Documentation")["Documentation"]
    assert doc.startswith("file://")
    machine.sh(f"test -s {doc.split()[0].removeprefix('file://')}")


def test_a_client_streams_into_serve_a(machine, service, alice):
    try:
        wait_for(lambda: health(service)["clients"]["alice"]["processed"] >= 10, 30,
                 what="alice's frames processed")
    except AssertionError as e:
        raise AssertionError(f"{e}; /healthz: {health(service)}; the journal:\n" +
                             "\n".join(messages(machine.journal())[-30:])) from None
    with pytest.raises(socketio.exceptions.ConnectionError):  # -a: a wrong password is refused
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(service, auth={"username": "alice", "password": "wrong"},
                        transports=["websocket"], wait_timeout=10)
        finally:
            sio.disconnect()


def test_display_attaches_for_group_members_only(machine, recipe, service, alice):
    line = recipe.line(r"camstream display --runtime-dir /run/camstream --snapshot")
    display = machine.start(line, user=DESK)
    try:
        wait_for(lambda: machine.sh(f"test -s /home/{DESK}/camstream-view/alice.jpg",
                                    check=False).returncode == 0, 30,
                 what="the snapshot of alice's stream")
    finally:
        os.killpg(display.pid, signal.SIGINT)  # Ctrl-C detaches
        out, _ = display.communicate(timeout=20)
    assert "Traceback" not in out, out
    wait_for(lambda: machine.processes("camstream: display") == [], 10,
             what="the display to detach on Ctrl-C")
    refused = machine.sh(line.replace("~/", "/tmp/"), user=OUTSIDER, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr
    assert "permission denied" in refused.stderr and "camstream" in refused.stderr
    assert alice.disconnects == []


def test_user_unit_runs_under_the_user_manager(machine, recipe, service):
    """The user manager runs camstream-display.service as the desktop user; here it can go as
    far as the screen: the container has no graphical session and the service's OpenCV is the
    headless build, so the display stops with its one line (and Restart= tries again)."""
    wait_for(lambda: machine.sh(f"systemctl is-active user@{DESK_UID}.service",
                                check=False).stdout.strip() == "active", 30,
             what="desk's user manager")
    machine.sh(recipe.line(r"mkdir -p ~/.config/systemd/user"), user=DESK)
    machine.sh(recipe.line(r"cp .*camstream-display.service"), user=DESK)
    cursor = machine.sh("journalctl -n 1 -o json --no-pager").stdout.strip()
    cursor = json.loads(cursor)["__CURSOR"]
    machine.sh(recipe.line(r"systemctl --user daemon-reload"), user=DESK)
    try:
        assert machine.sh("systemctl --user is-enabled camstream-display",
                          user=DESK).stdout.strip() == "enabled"

        def said_why() -> list[str]:
            out = machine.sh(f"journalctl --after-cursor={shlex.quote(cursor)} -o json "
                             f"--no-pager _UID={DESK_UID} _SYSTEMD_USER_UNIT="
                             "camstream-display.service").stdout
            return [e["MESSAGE"] for e in map(json.loads, out.splitlines())
                    if "camstream: error:" in str(e.get("MESSAGE"))]
        lines = wait_for(said_why, 30, what="the user unit's display to run")
        assert "headless build" in lines[0], lines
        out = machine.sh(f"journalctl --after-cursor={shlex.quote(cursor)} --no-pager "
                         f"_SYSTEMD_USER_UNIT=camstream-display.service").stdout
        assert "Traceback" not in out, out
    finally:
        machine.sh("systemctl --user disable --now camstream-display", user=DESK)


def test_reload_rereads_the_users_file(machine, recipe, service, alice):
    def add(name: str) -> None:
        machine.sh(f"sudo -u camstream /opt/camstream/bin/camstream users add {name} "
                   "--users /var/lib/camstream/users --password-stdin", user=DESK,
                   input=PASSWORDS[name] + "\n")

    def login(name: str) -> socketio.Client:
        sio = socketio.Client(reconnection=False)
        try:
            sio.connect(service, auth={"username": name, "password": PASSWORDS[name]},
                        transports=["websocket"], wait_timeout=10)
        except Exception:
            sio.disconnect()
            raise
        return sio

    reload = recipe.line(r"systemctl reload camstream")
    sid = alice.sio.get_sid()
    add("bob")
    machine.sh(reload, user=DESK)
    bob = wait_for(lambda: login("bob"), 15, interval=0.7, what="bob let in after the reload")
    gone = threading.Event()
    bob.on("disconnect", lambda *a: gone.set())
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            login("carol")
        machine.sh("sudo -u camstream /opt/camstream/bin/camstream users remove bob "
                   "--users /var/lib/camstream/users", user=DESK)
        add("carol")
        machine.sh(reload, user=DESK)
        assert gone.wait(15), "a removed user is disconnected"
        time.sleep(0.6)  # carol's refused login costs her a short penalty (0.5 s)
        carol = wait_for(lambda: login("carol"), 15, interval=0.7, what="carol let in")
        assert carol.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
        carol.disconnect()
    finally:
        bob.disconnect()
    since = time.monotonic()
    wait_for(lambda: alice.accepted_since(since) >= 3, 15, what="alice streaming on")
    assert alice.disconnects == [] and alice.sio.get_sid() == sid
    assert machine.show("ActiveState")["ActiveState"] == "active"


def test_journal_one_line_per_event_no_password(machine, recipe, service):
    follow = machine.start(recipe.line(r"journalctl -u camstream -f"), user=DESK)
    try:
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        wait_for(lambda: any("users reloaded" in line for line in seen), 15,
                 what="journalctl -f to show the log")
    finally:
        os.killpg(follow.pid, signal.SIGINT)
        follow.wait(timeout=10)
    logged = messages(machine.journal())
    assert logged
    for message in logged:
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", message), message
        for password in PASSWORDS.values():
            assert password not in message, message
    text = "\n".join(logged)
    assert "users reloaded" in text and "SIGHUP" in text, text


def test_exposure_measured_live(machine, service):
    out = machine.sh(f"systemd-analyze security {UNIT} --no-pager", check=False).stdout
    level = float(re.search(r"Overall exposure level for camstream.service: ([\d.]+)",
                            out).group(1))
    print(f"systemd-analyze security camstream (live): {level}")
    assert level <= EXPOSURE_BOUND, out


def test_restart_the_client_reconnects_by_itself(machine, service, alice):
    connects = alice.connects
    machine.sh(f"systemctl restart {UNIT}")
    restarted = time.monotonic()
    wait_for(lambda: alice.connects > connects and alice.accepted_since(restarted) >= 3, 30,
             what="alice to reconnect by herself and stream again")


def test_watchdog_restarts_a_stopped_supervisor(machine, service, alice):
    before = machine.show("MainPID", "NRestarts")
    cursor = machine.cursor()
    machine.sh(f"kill -STOP {before['MainPID']}")  # bash's kill: there is no /bin/kill
    stopped = time.monotonic()

    def restarted() -> bool:
        now = machine.show("MainPID", "NRestarts", "ActiveState")
        return now["ActiveState"] == "active" and int(now["NRestarts"]) > \
            int(before["NRestarts"]) and now["MainPID"] != before["MainPID"]
    wait_for(restarted, 75, interval=0.5, what="systemd's watchdog to restart the service")
    took = time.monotonic() - stopped
    text = "\n".join(str(e.get("MESSAGE")) for e in machine.journal(cursor))
    assert "Watchdog timeout" in text, text
    # pings come every WatchdogSec/2 (15 s): the timeout falls 15 to 30 s after the stop
    assert 14 <= took, f"restarted after {took:.0f} s, before the watchdog could expire"
    since = time.monotonic()
    wait_for(lambda: alice.accepted_since(since) >= 3, 30, what="alice streaming again")


def test_stop_drains_and_leaves_nothing(machine, service, alice):
    cursor = machine.cursor()
    group = machine.show("ControlGroup")["ControlGroup"]
    t0 = time.monotonic()
    machine.sh(f"systemctl stop {UNIT}", timeout=60)
    took = time.monotonic() - t0
    stop_timeout = float(machine.show("TimeoutStopUSec")["TimeoutStopUSec"].rstrip("s"))
    assert took < stop_timeout, f"stop took {took:.1f} s"
    state = machine.show("ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, state
    entries = machine.journal(cursor)
    text = "\n".join(str(e.get("MESSAGE")) for e in entries)
    assert "stopped" in "\n".join(messages(entries)), text
    assert "SIGKILL" not in text and "Killing" not in text and "timed out" not in text, text
    assert machine.processes("camstream") == []
    procs = machine.sh(f"grep -H . /sys/fs/cgroup/unified{group}/cgroup.procs "
                       f"/sys/fs/cgroup/systemd{group}/cgroup.procs 2>/dev/null || true").stdout
    assert procs.strip() == "", procs + "\n" + "\n".join(machine.processes(""))


def test_every_line_of_the_recipe_was_run(recipe):
    assert [line for line in recipe.lines if line not in recipe.done] == []
