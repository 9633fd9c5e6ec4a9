"""Bad flags and impossible combinations: one clear line, a non-zero exit, nothing started."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.helpers import free_port


def serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1",
         "--runtime-dir", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, message", [
    (["-w", "0"], "must be 1 or more"),
    (["-p", "70000"], "a port is 1-65535, got 70000"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-a", "--users", "/nonexistent/users"], "does not exist"),
    (["--processor", "nope"], "unknown processor 'nope'"),
    (["--max-frame-size", "lots"], "not a size"),
    (["--route", "client", "--worker-endpoint", "tcp://127.0.0.1:5999"],
     "--route client works with this machine's workers only"),
    (["--route", "sideways"], "invalid choice: 'sideways'"),
])
def test_bad_serve_flags(tmp_path, args, message):
    result = serve(tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_auth_with_an_empty_users_file(tmp_path):
    users = tmp_path / "users"
    users.write_text("# nobody yet\n")
    result = serve(tmp_path, "-a", "--users", str(users))
    assert result.returncode == 2 and "has no users" in result.stderr


def test_a_runtime_dir_too_long_for_ipc_sockets(tmp_path):
    long_dir = tmp_path / ("r" * (110 - len(str(tmp_path))))
    result = serve(tmp_path, "-p", str(free_port()), "--runtime-dir", str(long_dir))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "too long for ipc sockets" in result.stderr


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve(tmp_path, "-p", str(taken.getsockname()[1]))
    assert result.returncode == 2
    assert "the port is in use" in result.stderr and len(result.stderr.splitlines()) == 1


def test_two_daemons_on_one_runtime_dir(daemons, tmp_path):
    d = daemons(workers=1)
    result = subprocess.run(
        [sys.executable, "-m", "camstream", "serve", "-i", "127.0.0.1", "-p", str(free_port()),
         "--runtime-dir", str(d.runtime_dir)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "is using the runtime directory" in result.stderr


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "camstream", "serve", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    for flag in ("--ip", "--port", "--auth", "--display", "--workers", "--users",
                 "--runtime-dir", "--log-level"):
        assert flag in out
    top = subprocess.run([sys.executable, "-m", "camstream", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    for verb in ("serve", "users", "send", "status", "demo"):
        assert verb in top


def test_pool_on_a_tcp_port_in_use(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "camstream", "keys", "generate", str(keys)],
                   check=True, capture_output=True, timeout=30)
    port = free_port(span=3)  # the pool binds the next two ports too: they must be free
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "camstream", "pool", "--worker-endpoint",
             f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys), "-w", "1",
             "--runtime-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        f"camstream: error: Address already in use (addr='tcp://127.0.0.1:{port}')"
    assert "Traceback" not in result.stderr
