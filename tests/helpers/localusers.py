"""Second local users, for attacks that only another account on the machine can make.

As root (CI runs as root) the fixture creates system accounts that do not exist yet
(``csattacker``, a daemon user ``csvictim``, a viewer ``csviewer`` in the group
``csdisplays``), runs an attacker's steps as one of them (``run_as``: in a forked child that
drops to that user, since the interpreter may sit where other users cannot read it), and
removes what it created. Without root the tests that need it are skipped, saying why.
"""
from __future__ import annotations

import grp
import importlib
import os
import pwd
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

import pytest

GROUP = "csdisplays"        # like the service's camstream group: displays and taps
USERS = {"csattacker": (), "csvictim": (), "csviewer": (GROUP,)}


class AsUser:
    """Python code running as another user in a forked child of the test (the interpreter
    may live where other users cannot read, e.g. under /root: no exec, and the modules the
    code needs are imported before dropping to the user): ``stdout`` is a pipe, ``wait``
    returns the exit status."""

    PRELOAD = ("json", "socket", "time", "zmq")

    def __init__(self, uid: int, gid: int, groups: list[int], code: str, args: tuple,
                 env: dict | None = None, preload: tuple = ()) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: become the user, run the code, never return
            rc = 1
            try:
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                for module in self.PRELOAD + preload:  # while the interpreter's files
                    importlib.import_module(module)   # are still readable
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
                os.chdir("/")
                os.environ.clear()
                os.environ.update(env or {"PATH": "/usr/bin:/bin", "HOME": "/"})
                sys.argv = ["-c", *args]
                exec(compile(code, "<as another user>", "exec"), {"__name__": "__main__"})
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(rc)
        os.close(out_w)
        os.close(err_w)
        self.stdout = os.fdopen(out_r, "r")
        self._stderr = os.fdopen(err_r, "r")
        self.returncode: int | None = None

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"code run as another user did not end in {timeout} s")
            else:
                time.sleep(0.05)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def stderr(self) -> str:
        return self._stderr.read()


@dataclass
class LocalUsers:
    uid: dict
    gid: dict

    def spawn_as(self, user: str, code: str, *args: str, env: dict | None = None,
                 preload: tuple = ()) -> AsUser:
        """Start Python ``code`` as ``user`` (with its groups); ``sys.argv[1:]`` = args."""
        groups = [grp.getgrnam(g).gr_gid for g in USERS.get(user, ())]
        return AsUser(self.uid[user], self.gid[user], groups, code, args, env, preload)

    def run_as(self, user: str, code: str, *args: str, timeout: float = 60,
               env: dict | None = None, preload: tuple = ()) -> subprocess.CompletedProcess:
        """Run Python ``code`` as ``user`` to its end."""
        child = self.spawn_as(user, code, *args, env=env, preload=preload)
        out = child.stdout.read()
        rc = child.wait(timeout)
        return subprocess.CompletedProcess(args, rc, out, child.stderr())


def _exists(lookup, name: str) -> bool:
    try:
        lookup(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def local_users():
    if os.geteuid() != 0:
        pytest.skip("needs root: the attack is made by a second local user this test creates")
    made_groups, made_users = [], []
    try:
        if not _exists(grp.getgrnam, GROUP):
            subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
            made_groups.append(GROUP)
        for user, groups in USERS.items():
            if not _exists(pwd.getpwnam, user):
                subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                                "--shell", "/usr/sbin/nologin", user], check=True,
                               capture_output=True)
                made_users.append(user)
            for g in groups:  # membership in the group (for tools that read /etc/group)
                subprocess.run(["usermod", "-a", "-G", g, user], check=True,
                               capture_output=True)
        yield LocalUsers({u: pwd.getpwnam(u).pw_uid for u in USERS},
                         {u: pwd.getpwnam(u).pw_gid for u in USERS})
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True)
