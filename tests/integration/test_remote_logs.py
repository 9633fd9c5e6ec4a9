"""A remote worker (``camstream worker --connect``) that reaches nothing says so, and the
binding side logs remote workers joining and leaving: ZeroMQ alone retries in silence."""
from __future__ import annotations

import shutil
import signal

from tests.helpers import free_port, wait_for
from test_scaleout import make_keys, procs, servers, worker_argv  # noqa: F401 (fixtures)


def test_a_worker_pointed_at_nothing_says_so(procs, tmp_path):  # noqa: F811
    keys = make_keys(tmp_path / "keys")
    port = free_port(3)
    w = procs("lonely", *worker_argv(port, keys))
    line = f"no connection to tcp://127.0.0.1:{port} after 5 s: is 'camstream serve " \
           "--worker-endpoint' or 'camstream pool' running there"
    wait_for(lambda: line in w.output(), 15, what=f"the worker's warning:\n{w.output()}")
    assert w.proc.poll() is None, "it goes on retrying"
    assert w.output().count(line) == 1


def test_a_worker_whose_key_is_refused_says_so(servers, procs, tmp_path):  # noqa: F811
    keys = make_keys(tmp_path / "keys")
    stranger = make_keys(tmp_path / "stranger")  # a pair of its own, unknown to the server
    shutil.copyfile(keys / "server.key", stranger / "server.key")
    port = free_port(3)
    servers("--worker-endpoint", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys))
    w = procs("stranger", *worker_argv(port, stranger))
    hint = "this machine's public key is not in the server's authorized/"
    wait_for(lambda: hint in w.output(), 15, what=f"the worker's warning:\n{w.output()}")
    assert "handshake done" not in w.output()


def test_the_binding_side_logs_remote_workers_joining_and_leaving(servers, procs,  # noqa: F811
                                                                  tmp_path):
    keys = make_keys(tmp_path / "keys")
    port = free_port(3)
    d = servers("--worker-endpoint", f"tcp://127.0.0.1:{port}", "--curve-keys", str(keys),
                "--worker-timeout", "2")
    endpoint = f"tcp://127.0.0.1:{port}"
    first = procs("first", *worker_argv(port, keys))
    joined = f"remote worker pid {first.proc.pid} on "
    wait_for(lambda: joined in d.output() and "joined" in d.output(), 20,
             what=f"the join logged:\n{d.output()}")
    assert f"joined (pulling from {endpoint})" in d.output()
    wait_for(lambda: f"reached {endpoint}: handshake done" in first.output(), 10,
             what="the worker's own line")
    first.stop(signal.SIGTERM)
    wait_for(lambda: f"remote worker pid {first.proc.pid} on " in d.output()
             and "is stopping" in d.output(), 15, what=f"the stop logged:\n{d.output()}")

    second = procs("second", *worker_argv(port, keys))
    wait_for(lambda: f"remote worker pid {second.proc.pid} on " in d.output(), 20,
             what="the second join")
    second.stop(signal.SIGKILL)
    wait_for(lambda: "left (no report for 2 s)" in d.output(), 15,
             what=f"the silent leave logged:\n{d.output()}")
