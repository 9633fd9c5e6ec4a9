"""The runtime directory: where one daemon keeps its lock and its ipc sockets.

ZeroMQ's ipc sockets have no authentication of their own: who may connect to one is decided
by the file system alone. So the directory must be the daemon's and nobody else's: a directory
another user created first (``/tmp`` is everyone's) would let that user plant a symlink for
the lock or their own socket in place of ours. :func:`claim` refuses such a directory with one
line, opens the lock without following symlinks, and holds it so two daemons never share
endpoints. Socket files get their mode from :func:`restrict`: the bus's subscribing side is
open to the daemon's group (desktop displays, taps), everything else to its user alone.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import stat
from pathlib import Path

DIR_MODE = 0o750     # the group may reach the subscribing socket; nobody else may enter
PRIVATE = 0o600      # publishers and pipelines: the daemon's own processes only
SHARED = 0o660       # the bus's subscribing side: the daemon's group too
IPC_PATH_MAX = 107   # bytes in an AF_UNIX socket path, on Linux (libzmq's ipc:// limit)
LOCK = "serve.lock"


class RuntimeDirError(Exception):
    """The runtime directory cannot be used; the message is one line naming it."""


def default(port: int | str) -> str:
    """systemd's RuntimeDirectory (one service, one directory), else a directory per port, so
    that a second daemon on another port needs no flag: ``$XDG_RUNTIME_DIR/camstream-PORT``,
    ``/run/camstream-PORT`` for root, ``/tmp/camstream-UID-PORT`` for the rest."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return str(Path(os.environ["XDG_RUNTIME_DIR"]) / f"camstream-{port}")
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return f"/run/camstream-{port}"
    return f"/tmp/camstream-{os.geteuid()}-{port}"


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owned(path: str, st: os.stat_result) -> None:
    """A directory of ours that no other user can write into."""
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is a symbolic link: refusing it "
                              "(pass a real directory with --runtime-dir)")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path}: Not a directory")
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(
            f"runtime directory {path} belongs to {_owner(st.st_uid)}, not to this user "
            f"{_owner(os.geteuid())}: another user may have created it; refusing it "
            "(remove it, or pass --runtime-dir)")
    if st.st_mode & 0o022:
        who = {0o020: "its group", 0o002: "others"}.get(st.st_mode & 0o022, "group and others")
        raise RuntimeDirError(
            f"runtime directory {path} is writable by {who} (mode "
            f"{oct(st.st_mode & 0o777)[2:]}): anyone there could replace its sockets; "
            f"refusing it (chmod 750 {path}, or pass --runtime-dir)")


def _check_parents(path: Path) -> None:
    """No ancestor another user could rename the directory out of (a sticky /tmp is fine)."""
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except OSError:
            continue
        if st.st_uid not in (0, os.geteuid()) or \
                (st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX):
            raise RuntimeDirError(
                f"runtime directory {path}: its parent {parent} is open to other users "
                f"({_owner(st.st_uid)}, mode {oct(st.st_mode & 0o7777)[2:]}); pass a "
                "--runtime-dir elsewhere")


def claim(path: str, longest_name: str) -> int:
    """Create (mode 0750) or check the directory, lock it, and return the lock's descriptor
    (kept open for the daemon's life). ``longest_name``: the longest socket name it will hold,
    whose path must fit an ipc address."""
    longest = os.path.join(path, longest_name)
    if len(os.fsencode(longest)) > IPC_PATH_MAX:
        raise RuntimeDirError(
            f"runtime directory {path} is too long for ipc sockets (their paths would reach "
            f"{len(os.fsencode(longest))} bytes, at most {IPC_PATH_MAX}): pass a shorter "
            "--runtime-dir")
    where = Path(path)
    try:
        where.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        _check_parents(where)
        check_owned(path, os.lstat(path))
        # the checked directory itself, by descriptor: nothing is looked up by name again
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except RuntimeDirError:
        raise
    except OSError as e:
        raise RuntimeDirError(f"runtime directory {path}: {e.strerror}") from None
    try:
        check_owned(path, os.fstat(dir_fd))
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                         dir_fd=dir_fd)
        except OSError as e:
            if e.errno == 40:  # ELOOP: the lock is a symbolic link
                raise RuntimeDirError(f"runtime directory {path}: {LOCK} is a symbolic link; "
                                      "refusing to follow it (remove it)") from None
            raise RuntimeDirError(f"runtime directory {path}: {e.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise RuntimeDirError(f"runtime directory {path}: {LOCK} is not a plain file of "
                                  "this user's; refusing it (remove it)")
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeDirError(
            f"another camstream serve (pid {pid}) is using the runtime directory {path}; "
            "stop it, or give this one another --port or --runtime-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    if not os.access(path, os.W_OK):
        raise RuntimeDirError(f"runtime directory {path} is not writable")
    return fd


def ensure(path: str) -> None:
    """The directory again, if it was removed under a running daemon (to bind its sockets
    again), checked as at the start."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    check_owned(path, os.lstat(path))


def restrict(path: str, mode: int) -> None:
    """Give a socket file we just bound its mode (after checking it is still a socket: chmod
    follows symlinks). It was bound under umask 0077, closed until then."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise RuntimeDirError(f"{path} is not the socket this process bound")
    os.chmod(path, mode)
