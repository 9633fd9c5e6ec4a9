"""README.md's commands, run as written against the installed package.

Every command line in README.md's command blocks (indented blocks, and fenced ``sh`` blocks)
must have an entry in COVERED: the test that runs it, SYNOPSIS (a usage line, checked against
the verb's ``--help``) or NOT_HERE(why). A README line with no entry fails
``test_every_readme_command_is_covered`` with what to do, and an entry whose line left the README
fails too: when the README changes, this file is what keeps it true.

The commands run through ``bash -c`` exactly as the README prints them, with the virtualenv that
runs these tests first on PATH (the README's install commands are not re-run: they are what
made that virtualenv, and CI runs them in .ci/run), in a temporary folder, with HOME,
XDG_RUNTIME_DIR, XDG_CONFIG_HOME and STATE_DIRECTORY pointing into it, so that the defaults the
README relies on (the users file, the runtime directory, ``~/videos``) are this test's own and
never the machine's (as root the users file would otherwise be /var/lib/camstream/users).
Examples that talk to a daemon on the default port 8080 get one started here on that port and
stopped by its pid; a lock file keeps two runs of this file on one machine from meeting there.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from tests.helpers import ROOT, make_jpeg, wait_for

README = ROOT / "README.md"
BIN = Path(sys.executable).parent          # the virtualenv's bin: camstream is installed there
PORT = 8080                                # the README's examples use the default port
URL = f"http://127.0.0.1:{PORT}"


# -- reading the README -------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    text: str       # as the README prints it (continuation lines joined)
    lineno: int

    @property
    def key(self) -> str:
        """The command without its trailing ``# comment``, spaces squeezed: COVERED's key."""
        return " ".join(strip_comment(self.text).split())


def strip_comment(text: str) -> str:
    """Drop a trailing shell comment (`` # ...``) outside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


SHELL_FENCES = {"sh", "bash", "shell", "console"}
CODE_FENCES = {"python", "py", "json", "ini", "toml", "yaml", "text", "nginx"}


# programs a README line may start with whether or not this machine has them (sudo is
# missing from many containers); anything else on PATH counts too
PROGRAMS = {"camstream", "python", "python3", "pip", "sudo", "systemctl", "journalctl", "echo",
            "curl", "jq", "kill", "mkdir", "cp", "install", "ufw", "firewall-cmd", "hostname",
            "openssl", "nginx"}


def looks_like_command(text: str) -> bool:
    """A line of an indented or unlabelled block is a command when its first word (after any
    VAR=value) is a program: ``camstream``, a path, or something on PATH."""
    words = strip_comment(text).split()
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]
    if not words:
        return False
    first = words[0]
    if first.startswith(("./", ".venv/", "~/", "/", "tests/")) or first in PROGRAMS:
        return True
    return shutil.which(first, path=f"{BIN}:{os.environ.get('PATH', '')}") is not None


def readme_commands(text: str) -> list[Line]:
    """Every command line in the README's blocks, with its line number."""
    lines = text.splitlines()
    found: list[Line] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```\s*(\S*)", lines[i])
        if fence:
            lang = fence.group(1).lower()
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                raw = lines[i]
                if lang in SHELL_FENCES:
                    if raw.strip() and not raw.lstrip().startswith("#"):
                        found.append(Line(raw.strip(), i + 1))
                elif lang not in CODE_FENCES and looks_like_command(raw):
                    found.append(Line(raw.strip(), i + 1))
                i += 1
            i += 1
            continue
        # an indented block: after a blank line, four spaces or more
        if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            base = len(lines[i]) - len(lines[i].lstrip())
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                raw = lines[i]
                indent = len(raw) - len(raw.lstrip())
                if raw.strip() and indent > base and found and found[-1].lineno < i + 1 \
                        and raw.lstrip().startswith("["):  # a synopsis going on
                    found[-1] = Line(found[-1].text + " " + raw.strip(), found[-1].lineno)
                elif raw.strip() and indent == base and looks_like_command(raw):
                    found.append(Line(raw.strip(), i + 1))
                i += 1
            continue
        i += 1
    return found


def readme_text() -> str:
    return README.read_text()


def readme_line(key: str) -> str:
    """The README's command whose key is ``key``, as printed: what a test runs. Fails if the
    README no longer shows it (then this test and the README must change together)."""
    for line in readme_commands(readme_text()):
        if line.key == key:
            return strip_comment(line.text)
    raise AssertionError(f"README.md no longer shows {key!r}: update tests/integration/test_readme.py")


# -- what covers each line ----------------------------------------------------------------------

@dataclass(frozen=True)
class NotHere:
    why: str


SYNOPSIS = "synopsis"   # a usage line: its options are checked against the verb's --help
RECIPE = NotHere("the service recipe: as root on a systemd machine; tests/integration/test_systemd_real.py "
                 "follows it in a systemd-nspawn container, test_systemd_prints_a_recipe runs "
                 "`camstream systemd` here, and tests/integration/test_systemd.py checks that the README "
                 "shows the recipe exactly")

COVERED: dict[str, object] = {
    "hostname -I": "test_finding_the_address",
    "sudo ufw allow 8080/tcp": NotHere("changes this machine's firewall, as root"),
    "sudo firewall-cmd --add-port=8080/tcp --permanent && sudo firewall-cmd --reload":
        NotHere("changes this machine's firewall, as root (and Fedora's firewalld)"),
    "python3 -m venv .venv && .venv/bin/pip install -e '.[gui]' && .venv/bin/camstream demo":
        "test_first_command_demo",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && tests/setup.sh && "
    ".venv/bin/pytest": "test_test_command_is_what_ci_runs",
    "camstream serve [-i IP] [-p PORT] [-a] [-d] [-w N] [--users FILE] [--runtime-dir DIR] "
    "[--config FILE] [--log-level LEVEL] [--max-frame-size SIZE] [--queue-depth N] "
    "[--stop-timeout S] [--max-fps FPS] [--max-connections-per-ip N] [--worker-timeout S] "
    "[--ping-interval S] [--ping-timeout S] [--certfile PEM --keyfile PEM] [--processor NAME] "
    "[--processor-opt KEY=VALUE] [--record DIR] [--record-max-gb GB] [--emit-results] "
    "[--max-pixels N] [--frame-timeout S]": SYNOPSIS,
    "camstream users add alice": "test_users_commands",
    'echo "$PW" | camstream users add alice --password-stdin': "test_users_commands",
    "camstream users remove alice": "test_users_commands",
    "camstream users list": "test_users_commands",
    "camstream send http://127.0.0.1:8080 -u alice --password s3cret --fps 10 --count 100":
        "test_send_with_a_login",
    "camstream send --source ~/videos/lab.mp4 --legacy --transport default":
        "test_send_sources_and_results",
    "camstream send --source recordings/alice/2026-11-25": "test_send_sources_and_results",
    "camstream send --count 50 --results | jq -c '{seq, brightness}'":
        "test_send_sources_and_results",
    "camstream display [--client NAME] [--processed] [--port PORT] [--runtime-dir DIR]":
        SYNOPSIS,
    "camstream display --snapshot shots": "test_display_snapshot",
    "camstream status": "test_status_and_tap",
    "camstream status -u alice --password s3cret": "test_send_with_a_login",
    "camstream tap --client alice": "test_status_and_tap",
    "camstream demo": "test_first_command_demo",
    "camstream systemd": "test_systemd_prints_a_recipe",
    "PYTHONPATH=. camstream serve --processor redness:redness --emit-results":
        "test_own_processor",
    "camstream tap --client alice | jq -c 'select(.motion)'": "test_tap_motion",
    "camstream keys generate keys": "test_keys_generate",
    "camstream serve --web 8081": "test_web_view_commands",
    "camstream display --web 8081": "test_web_view_commands",
    "camstream tls generate tls": "test_tls_commands",
    "camstream serve -a --certfile tls/cert.pem --keyfile tls/key.pem --web 8081":
        "test_tls_commands",
}

RECIPE_LINE = re.compile(r"^(sudo |systemctl |journalctl |/opt/camstream/bin/camstream "
                         r"|mkdir -p ~/\.config/systemd/user|cp \S*camstream-display\.service )")


def coverage(line: Line) -> object:
    if line.key in COVERED:
        return COVERED[line.key]
    if RECIPE_LINE.match(line.key):
        return RECIPE
    return None


DOCS = sorted((ROOT / "docs").glob("*.md"))   # the README's long sections, moved there


def test_every_readme_command_is_covered():
    lines = readme_commands(readme_text())
    assert len(lines) > 20, "the README parser found almost no commands: is it broken?"
    missing = [f"README.md:{line.lineno}: {line.key}" for line in lines
               if coverage(line) is None]
    for doc in DOCS:  # commands there are held to the same rule
        lines += readme_commands(doc.read_text())
        missing += [f"{doc.relative_to(ROOT)}:{line.lineno}: {line.key}"
                    for line in readme_commands(doc.read_text()) if coverage(line) is None]
    assert not missing, (
        "README commands that no test runs:\n  " + "\n  ".join(missing) + "\nAdd each to "
        "COVERED in tests/integration/test_readme.py with the test that runs it as written (or "
        "SYNOPSIS for a usage line, or NotHere('why') if it cannot run on one machine).")
    keys = {line.key for line in lines}
    stale = [key for key in COVERED if key not in keys]
    assert not stale, ("COVERED lists commands README.md no longer shows (remove them, or "
                       "fix the README):\n  " + "\n  ".join(stale))


def test_links_stay_inside_the_repository():
    """README and docs link files of this repository (that exist) or web pages, nothing
    outside the tree."""
    for doc in [README, *DOCS]:
        text = doc.read_text()
        assert "../shared" not in text, f"{doc.name} refers to files outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if re.match(r"https?://", target):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: {target}"


def test_the_parser_finds_what_it_should():
    """Blocks of data (JSON, a key layout, diagrams) are not commands; continuation lines of a
    synopsis join it."""
    text = ("intro\n\n    camstream serve [-a]\n                    [-w N]\n\n"
            "    {\"status\": \"ok\"}\n\n    DIR/   0700\n\n```\n clients --> ingest\n```\n"
            "```python\nimport cv2\n```\n```sh\n# a comment\nsudo true\n```\n")
    assert [(line.key, line.lineno) for line in readme_commands(text)] == [
        ("camstream serve [-a] [-w N]", 3), ("sudo true", 18)]


def verb_help(verb: list[str]) -> str:
    r = subprocess.run([str(BIN / "camstream"), *verb, "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def options_of(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text)


def test_usage_lines_match_the_parser():
    """Every option a README synopsis, or an inline `camstream VERB ...` in its prose, names
    exists in that verb's --help (a renamed flag fails here)."""
    spans = [line.key for line in readme_commands(readme_text())
             if coverage(line) == SYNOPSIS]
    spans += re.findall(r"`((?:PYTHONPATH=\S+ )?camstream [a-z][^`]*)`", readme_text())
    checked = 0
    helps: dict[tuple, str] = {}
    for span in spans:
        words = span.split()
        words = words[words.index("camstream") + 1:]
        verb = words[:1] + ([words[1]] if words[:1] in (["users"], ["keys"])
                            and len(words) > 1 else [])
        help_text = helps.setdefault(tuple(verb), verb_help(verb))
        for option in options_of(" ".join(words[len(verb):])):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), \
                f"README: `{span}`: {option} is not an option of camstream {' '.join(verb)}"
            checked += 1
    assert checked > 30


# -- running them -------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path) -> Path:
    """A user's world of its own: HOME and the XDG and systemd directories in tmp_path."""
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True, mode=0o700)
    return home


def environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "DISPLAY",
                        "WAYLAND_DISPLAY")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"),
               XDG_CONFIG_HOME=str(home / ".config"), STATE_DIRECTORY=str(home / "state"),
               PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONUNBUFFERED="1")
    return env


def run(command: str, cwd: Path, home: Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", command], cwd=cwd, env=environment(home),
                       capture_output=True, text=True, timeout=timeout, **kw)
    assert "Traceback" not in r.stderr + r.stdout, f"{command}:\n{r.stderr}"
    return r


class Running:
    """A README command that runs until interrupted (a daemon, tap, display): started in a
    session of its own, so Ctrl-C (SIGINT to its process group, by its pid) reaches a whole
    pipeline as it would from a terminal."""

    def __init__(self, command: str, cwd: Path, home: Path, log: Path):
        self.command, self.log_path = command, log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=environment(home),
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        self.out: list[str] = []

    def interrupt(self, timeout: float = 30) -> int:
        if self.log.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.append(self.proc.stdout.read())
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()


@pytest.fixture
def port_8080():
    """The README's port, for one test at a time on this machine."""
    with open(Path("/tmp") / f"camstream-test-readme-{os.getuid()}.lock", "w") as lock:
        wait_for(lambda: try_lock(lock), 600, interval=0.5, what="another test_readme run "
                 "to free port 8080")
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("0.0.0.0", PORT))
        except OSError:
            pytest.fail(f"port {PORT} is in use on this machine, and the README's examples "
                        "need it: stop whatever listens there")
        finally:
            probe.close()
        yield PORT


def try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@pytest.fixture
def started(tmp_path):
    """Long-running commands, interrupted (by pid) after the test."""
    running: list[Running] = []

    def start(command: str, cwd: Path, home: Path) -> Running:
        r = Running(command, cwd, home, tmp_path / f"running-{len(running)}.log")
        running.append(r)
        return r
    yield start
    for r in running:
        r.interrupt()


def health(auth: tuple[str, str] | None = None) -> dict:
    """/healthz of the README's daemon; under -a client rows need a user's login."""
    import requests
    return requests.get(URL + "/healthz", timeout=2, auth=auth).json()


def serve(start, cwd: Path, home: Path, flags: str = "", command: str | None = None) -> Running:
    """A daemon on the README's port, for examples that talk to one; ready when /healthz says
    its worker is up."""
    d = start(command or f"camstream serve -i 127.0.0.1 -w 1 {flags}", cwd, home)

    def ready():
        if d.proc.poll() is not None:
            raise AssertionError(f"{d.command} exited {d.proc.returncode}:\n{d.stderr()}")
        return health()["workers"]["alive"] >= 1
    wait_for(ready, 60, what=f"{d.command} to be ready")
    return d


def stream(start, cwd: Path, home: Path, name: str = "alice", fps: int = 10) -> Running:
    """A client streaming synthetic frames until interrupted (not a README line itself)."""
    return start(f"camstream send -u {name} --fps {fps} --quiet", cwd, home)


# -- the first screen ---------------------------------------------------------------------------

def first_commands() -> list[str]:
    return [line.key for line in readme_commands(readme_text())[:2]]


@pytest.mark.serial
@pytest.mark.timeout(200)
@pytest.mark.parametrize("folder", ["empty", "beside a decoy camstream package"])
def test_first_command_demo(folder, tmp_path, home, port_8080):
    """The README's first command ends in ``camstream demo``: run that part, as written, from
    an empty folder and from one holding folders named camstream/ and workers/ (the folder
    above a clone), which must not shadow the installed package in any child (that run is
    shorter: what it checks is the imports, which happen in its first seconds)."""
    first = first_commands()[0]
    assert first == readme_line("python3 -m venv .venv && .venv/bin/pip install -e '.[gui]' "
                                "&& .venv/bin/camstream demo")
    demo = first.split("&&")[-1].strip()
    assert demo == ".venv/bin/camstream demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if folder != "empty":
        for package in ("camstream", "workers"):
            (cwd / package).mkdir()
            (cwd / package / "__init__.py").write_text(
                "raise ImportError('the decoy in the current folder was imported')\n")
    command = demo.replace(".venv/bin/", f"{BIN}/")
    seconds = 20  # the demo's default, as the README runs it
    if folder != "empty":
        seconds = 5
        command += f" --seconds {seconds}"
    r = run(command, cwd, home, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "decoy" not in r.stderr
    row = re.search(r"^demo\s+\d+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", r.stdout,
                    re.M)
    assert row, r.stdout
    received, processed = int(row.group(1)), int(row.group(4))
    assert received >= 7.5 * seconds and processed >= 0.9 * received, r.stdout  # at 10 fps
    told = re.search(r"camstream demo: (\d+) of (\d+) frames processed", r.stderr)
    assert told and (int(told.group(1)), int(told.group(2))) == (processed, received), r.stderr


def test_test_command_is_what_ci_runs():
    """The README's second command is the test command; CI (.ci/run) runs exactly it. It is
    not run here: it is what runs this test."""
    second = first_commands()[1]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [second]


# -- Connect the Android app -------------------------------------------------------------------

def test_finding_the_address(tmp_path, home):
    """``hostname -I`` lists the machine's addresses (none but loopback in a bare container:
    then it prints an empty line, and still works)."""
    r = run(readme_line("hostname -I"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    assert all(re.fullmatch(r"[0-9a-fA-F.:]+", word) for word in r.stdout.split()), r.stdout
    assert "github.com/xetiro/AndroidCamStream-Client" in readme_text()


# -- Commands -----------------------------------------------------------------------------------

def users_file(home: Path) -> Path:
    """Where ``camstream users`` writes by default in this test's world."""
    return (home / "state" / "users") if os.getuid() == 0 else \
        (home / ".config" / "camstream" / "users")


def test_users_commands(tmp_path, home):
    """add (asking on a terminal), add --password-stdin, list, remove, as the README shows."""
    import pty
    add = readme_line("camstream users add alice")
    master, slave = pty.openpty()
    p = subprocess.Popen(["bash", "-c", add], cwd=tmp_path, env=environment(home),
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    for answer in (b"first-pw\n", b"first-pw\n"):
        deadline = time.monotonic() + 20
        while not seen.rstrip().endswith(b":") and time.monotonic() < deadline:
            seen += os.read(master, 1024)
        os.write(master, answer)
        seen = b""
    assert p.wait(timeout=20) == 0
    os.close(master)
    assert "alice:" in users_file(home).read_text()

    stdin_add = readme_line('echo "$PW" | camstream users add alice --password-stdin')
    env_pw = {"PW": "s3cret"}
    r = subprocess.run(["bash", "-c", stdin_add], cwd=tmp_path,
                       env={**environment(home), **env_pw}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    from camstream.users import Users
    assert Users.load(str(users_file(home))).verify("alice", "s3cret")

    listed = run(readme_line("camstream users list"), tmp_path, home)
    assert listed.stdout.split() == ["alice"]
    removed = run(readme_line("camstream users remove alice"), tmp_path, home)
    assert removed.returncode == 0, removed.stderr
    assert run(readme_line("camstream users list"), tmp_path, home).stdout.split() == []


@pytest.mark.timeout(120)
def test_send_with_a_login(tmp_path, home, port_8080, started):
    """``send`` as alice with her password, into a daemon that requires it (-a)."""
    r = subprocess.run([str(BIN / "camstream"), "users", "add", "alice", "--password-stdin"],
                       input="s3cret\n", env=environment(home), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    serve(started, tmp_path, home, "-a")
    r = run(readme_line("camstream send http://127.0.0.1:8080 -u alice --password s3cret "
                        "--fps 10 --count 100"), tmp_path, home, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sent 100  accepted 100" in r.stderr
    wait_for(lambda: health(("alice", "s3cret"))["clients"]["alice"]["processed"] == 100, 10,
             what="alice's 100 frames processed")
    r = run(readme_line("camstream status -u alice --password s3cret"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^alice\s+\d+\s+100\s", r.stdout, re.M), r.stdout


def write_video(path: Path, frames: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    assert out.isOpened()
    for n in range(frames):
        out.write(cv2.imdecode(__import__("numpy").frombuffer(make_jpeg(seed=n), "uint8"),
                               cv2.IMREAD_COLOR))
    out.release()


@pytest.mark.timeout(150)
def test_send_sources_and_results(tmp_path, home, port_8080, started):
    """A video file with the Android app's events and transports, a folder of JPEGs, and
    results printed through jq, into a daemon with --emit-results."""
    write_video(home / "videos" / "lab.mp4")
    day = tmp_path / "recordings" / "alice" / "2026-11-25"
    day.mkdir(parents=True)
    for n in range(7):
        (day / f"12000{n}.000-{n}.jpg").write_bytes(make_jpeg(seed=n))
    serve(started, tmp_path, home, "--emit-results")

    r = run(readme_line("camstream send --source ~/videos/lab.mp4 --legacy --transport "
                        "default"), tmp_path, home, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\bsent 12\b", r.stderr) and "accepted" not in r.stderr, r.stderr
    assert "the daemon's counters for 'demo' during this run: received 12, refused 0, " \
           "dropped 0, processed 12, errors 0, lost 0" in r.stderr, r.stderr  # no acks: asked
    wait_for(lambda: health()["clients"]["demo"]["processed"] == 12, 10,
             what="the video's 12 frames processed")

    r = run(readme_line("camstream send --source recordings/alice/2026-11-25"), tmp_path, home,
            timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sent 7  accepted 7" in r.stderr

    r = run(readme_line("camstream send --count 50 --results | jq -c '{seq, brightness}'"),
            tmp_path, home, timeout=60)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) >= 45, r.stdout  # a frame replaced on the way has no result
    assert all(set(x) == {"seq", "brightness"} and x["brightness"] > 0 for x in results)


@pytest.mark.timeout(120)
def test_display_snapshot(tmp_path, home, port_8080, started):
    """``display --snapshot shots`` writes shots/<client>.jpg without a screen."""
    serve(started, tmp_path, home)
    stream(started, tmp_path, home)
    display = started(readme_line("camstream display --snapshot shots"), tmp_path, home)
    shot = tmp_path / "shots" / "alice.jpg"
    wait_for(lambda: shot.exists() and cv2.imread(str(shot)) is not None, 30,
             what="shots/alice.jpg")
    assert cv2.imread(str(shot)).shape == (480, 640, 3)
    assert display.interrupt() == 0, display.stderr()
    assert "Traceback" not in display.stderr()


@pytest.mark.timeout(120)
def test_status_and_tap(tmp_path, home, port_8080, started):
    serve(started, tmp_path, home)
    stream(started, tmp_path, home)
    wait_for(lambda: health()["clients"]["alice"]["processed"] > 5, 30, what="frames")
    r = run(readme_line("camstream status"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    row = re.search(r"^alice\s+1\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", r.stdout, re.M)
    assert row and int(row.group(4)) > 5, r.stdout

    tap = started(readme_line("camstream tap --client alice"), tmp_path, home)
    first = wait_for(lambda: tap.proc.stdout.readline(), 30, what="a line from tap")
    result = json.loads(first)
    assert result["client"] == "alice" and result["width"] == 640
    tap.interrupt()


def test_systemd_prints_a_recipe(tmp_path, home):
    r = run(readme_line("camstream systemd"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    assert "systemctl enable --now camstream" in r.stdout
    units = re.findall(r"(\S+/camstream\.service)\b", r.stdout)
    assert units and all(Path(u).is_file() for u in units if u.startswith("/")), r.stdout


# -- Processing ---------------------------------------------------------------------------------

def readme_python_block(containing: str = "def ") -> str:
    """The README's one python block with ``containing`` in it (the processor has a def; the
    frames() example, run by tests/integration/test_frames.py, has none)."""
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", readme_text(), re.S | re.M)
              if containing in b]
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.timeout(120)
def test_own_processor(tmp_path, home, port_8080, started):
    """The README's processor, saved as redness.py, served as the README says, its results
    sent back to the client."""
    (tmp_path / "redness.py").write_text(readme_python_block())
    command = readme_line("PYTHONPATH=. camstream serve --processor redness:redness "
                          "--emit-results")
    serve(started, tmp_path, home, command=command)
    r = run("camstream send --count 10 --results", tmp_path, home, timeout=60)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert results and all("redness" in x and len(x["spot"]) == 2 for x in results), r.stdout


@pytest.mark.timeout(120)
def test_tap_motion(tmp_path, home, port_8080, started):
    """``tap | jq 'select(.motion)'`` with the motion processor: synthetic frames move."""
    serve(started, tmp_path, home, "--processor motion")
    tap = started(readme_line("camstream tap --client alice | jq -c 'select(.motion)'"),
                  tmp_path, home)
    stream(started, tmp_path, home)
    first = wait_for(lambda: tap.proc.stdout.readline(), 40, what="a moving frame")
    assert json.loads(first)["motion"] is True


def test_keys_generate(tmp_path, home):
    r = run(readme_line("camstream keys generate keys"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    keys = tmp_path / "keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    for name in ("server.key", "server.key_secret", "worker.key", "worker.key_secret",
                 "authorized/worker.key"):
        assert (keys / name).is_file(), name
    for secret in ("server.key_secret", "worker.key_secret"):
        assert oct((keys / secret).stat().st_mode & 0o777) == "0o600"


# -- In a browser -------------------------------------------------------------------------------

WEB = "http://127.0.0.1:8081"


def web_state(url: str = WEB, **kw) -> dict:
    import requests
    return requests.get(url + "/api/state", timeout=15, **kw).json()


@pytest.mark.timeout(180)
def test_web_view_commands(tmp_path, home, port_8080, started):
    """``serve --web 8081``, then a ``display --web 8081`` attached to a daemon without one."""
    import requests
    d = serve(started, tmp_path, home, command=readme_line("camstream serve --web 8081"))
    alice = stream(started, tmp_path, home)
    wait_for(lambda: [c for c in web_state()["clients"] if c["name"] == "alice"], 30,
             what="alice's tile in the web view")
    assert requests.get(WEB + "/", timeout=5).status_code == 200
    alice.interrupt()
    d.interrupt()
    serve(started, tmp_path, home)
    stream(started, tmp_path, home, "bob")
    view = started(readme_line("camstream display --web 8081"), tmp_path, home)
    wait_for(lambda: [c for c in web_state()["clients"] if c["name"] == "bob"], 30,
             what="bob's tile in the attached web view")
    assert view.interrupt() == 0, view.stderr()
    assert "Traceback" not in view.stderr()


@pytest.mark.timeout(180)
def test_tls_commands(tmp_path, home, port_8080, started):
    """``tls generate tls``, then ``serve -a`` with it: https on both ports, a login needed."""
    import requests
    r = run(readme_line("camstream tls generate tls"), tmp_path, home)
    assert r.returncode == 0, r.stderr
    assert "127.0.0.1" in r.stdout and "/camera" in r.stdout
    cert = tmp_path / "tls" / "cert.pem"
    assert oct((tmp_path / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    run("echo pw | camstream users add alice --password-stdin", tmp_path, home)
    command = readme_line("camstream serve -a --certfile tls/cert.pem --keyfile tls/key.pem "
                          "--web 8081")
    started(command, tmp_path, home)
    https = URL.replace("http:", "https:")
    wait_for(lambda: requests.get(https + "/healthz", timeout=2, verify=str(cert)).json()
             ["workers"]["alive"] >= 1, 60, what="serve over https")
    assert requests.get(https + "/camera", timeout=5, verify=str(cert)).status_code == 200
    web = WEB.replace("http:", "https:")
    wait_for(lambda: requests.get(web + "/healthz", timeout=2, verify=str(cert)).ok, 30,
             what="the web view over https")
    assert requests.get(web + "/api/state", timeout=5, verify=str(cert)).status_code == 401
    assert web_state(web, verify=str(cert), auth=("alice", "pw"))["kind"] == "raw"
