"""The users file and 'camstream users'."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from camstream.users import Users, UsersError


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camstream", "users", *args], input=stdin,
                          text=True, capture_output=True, timeout=30)


def test_add_list_remove(tmp_path):
    path = tmp_path / "users"
    assert cli("add", "alice", "--password-stdin", "--users", str(path),
               stdin="s3cret\n").returncode == 0
    assert cli("add", "bob", "--password-stdin", "--users", str(path),
               stdin="hunter2\n").returncode == 0
    assert cli("list", "--users", str(path)).stdout.split() == ["alice", "bob"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert "s3cret" not in text and "hunter2" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("alice:"))
    name, kind, n, r, p, salt, digest = line.split(":")
    assert (kind, n, r, p) == ("scrypt", "16384", "8", "1")
    assert salt != next(ln for ln in text.splitlines() if ln.startswith("bob:")).split(":")[5]

    users = Users.load(str(path))
    assert users.verify("alice", "s3cret") and not users.verify("alice", "hunter2")

    removed = cli("remove", "alice", "--users", str(path))
    assert removed.returncode == 0
    assert cli("list", "--users", str(path)).stdout.split() == ["bob"]
    missing = cli("remove", "alice", "--users", str(path))
    assert missing.returncode == 2 and "no user 'alice'" in missing.stderr


def test_bad_names_and_files(tmp_path):
    bad = cli("add", "no spaces", "--password-stdin", "--users", str(tmp_path / "u"),
              stdin="x\n")
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    empty = cli("add", "carol", "--password-stdin", "--users", str(tmp_path / "u"), stdin="\n")
    assert empty.returncode == 2 and "empty password" in empty.stderr
    (tmp_path / "broken").write_text("carol:plaintext\n")
    with pytest.raises(UsersError, match="broken:1"):
        Users.load(str(tmp_path / "broken"))


@pytest.mark.serial
def test_wrong_password_timing_does_not_tell_whether_the_user_exists():
    users = Users()
    users.add("alice", "correct horse")

    def timed(name: str) -> float:
        t = time.perf_counter()
        assert not users.verify(name, "wrong")
        return time.perf_counter() - t
    # alternate the two and keep each one's fastest: load on a shared machine only adds time
    rounds = [(timed("alice"), timed("nobody")) for _ in range(9)]
    known, unknown = min(r[0] for r in rounds), min(r[1] for r in rounds)
    assert 0.75 < known / unknown < 1.33, (known, unknown)


def test_the_users_file_is_replaced_whole_and_private(tmp_path):
    """A daemon reading the file on SIGHUP sees the old or the new file, never half of one:
    each save writes a new file (mode 0600 from the start) and renames it over the old."""
    path = tmp_path / "users"
    assert cli("add", "alice", "--password-stdin", "--users", str(path),
               stdin="s3cret\n").returncode == 0
    before = os.stat(path).st_ino
    assert cli("add", "bob", "--password-stdin", "--users", str(path),
               stdin="hunter2\n").returncode == 0
    assert os.stat(path).st_ino != before, "replaced by a rename, not rewritten in place"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert os.listdir(tmp_path) == ["users"], "no temporary file left behind"
