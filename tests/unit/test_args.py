"""The command line in one process: the value checkers, the flags table the --config grammar
is read from, the grammar itself, and that checking a configuration changes nothing (the
record directory and the TLS files are the daemon's start, camstream.supervisor.runtime)."""
from __future__ import annotations

import argparse
import ast
import re
import socket
from pathlib import Path

import pytest

from camstream.cli import build_parser, configfile, main
from camstream.cli.args import (CliError, Parser, endpoint_arg, pixels_arg, port_arg,
                                positive_float, positive_int, server_url, size_arg)
from camstream.cli.send import send_parser
from camstream.cli.serve import parse_serve, serve_parser
from camstream.supervisor import runtime

ROOT = Path(__file__).resolve().parents[2]


# -- values -------------------------------------------------------------------------------------

@pytest.mark.parametrize("convert, text, value", [
    (size_arg, "4MiB", 4 * 1024 ** 2), (size_arg, "500k", 500 * 1024), (size_arg, "12", 12),
    (positive_int, "3", 3), (positive_float, "0.5", 0.5), (port_arg, "65535", 65535),
    (pixels_arg, "16M", 16_000_000), (pixels_arg, "10x20", 200),
    (server_url, "host:9000", "http://host:9000"), (server_url, "host", "http://host:8080"),
    (server_url, "https://h:1", "https://h:1"),
    (endpoint_arg, "tcp://[::1]:5555", "tcp://[::1]:5555"),
])
def test_values_convert(convert, text, value):
    assert convert(text) == value


@pytest.mark.parametrize("convert, text, message", [
    (size_arg, "lots", "not a size: 'lots'"), (size_arg, "0", "a size must be positive"),
    (positive_int, "0", "must be 1 or more, got 0"), (positive_int, "1.5", "not a whole number"),
    (positive_float, "-1", "must be more than 0, got -1.0"), (port_arg, "0", "a port is 1-65535"),
    (pixels_arg, "big", "not a pixel count"), (server_url, "ftp://h", "expected a server URL"),
    (endpoint_arg, "ipc:///x", "expected tcp://HOST:PORT"),
])
def test_values_refuse_with_a_reason(convert, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        convert(text)


def test_a_parse_error_is_one_line_naming_the_verbs_help():
    with pytest.raises(CliError) as err:
        build_parser().parse_args(["serve", "-p", "http"])
    assert str(err.value) == ("argument -p/--port: not a port number: 'http' "
                              "(see 'camstream serve --help')")
    with pytest.raises(CliError, match=r"\(see 'camstream serve --help'\)"):
        serve_parser().parse_args(["--bogus"])


def test_main_prints_one_line_and_exits_2(capsys):
    assert main(["serve", "--queue-depth", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("camstream: error: argument --queue-depth")


# -- the flags table ----------------------------------------------------------------------------

def test_the_flags_table_holds_every_long_option_of_serve():
    """The --config grammar's keys are the options serve's help lists, no more, no fewer."""
    parser = serve_parser()
    listed = set(re.findall(r"(?m)^  (?:-\w(?: \S+)?, )?--([\w-]+)", parser.format_help()))
    assert len(listed) > 40 and set(parser.flags) == listed
    assert parser.flags["auth"].switch and not parser.flags["port"].switch
    assert parser.flags["processor-opt"].repeat and parser.flags["processor-opt"].dest == \
        "processor_options"
    assert parser.flags["log-level"].choices == ("debug", "info", "warning", "error")
    assert parser.flags["max-fps"].convert is positive_float


def test_log_level_is_declared_once():
    text = "".join(p.read_text() for p in (ROOT / "camstream").rglob("*.py"))
    assert text.count('add_argument("--log-level"') == 1


def test_serve_parses_alone_as_under_camstream():
    argv = ["-p", "9000", "--processor-opt", "a=1", "--processor-opt", "b=2", "-a"]
    alone = vars(serve_parser().parse_args(argv))
    under = vars(build_parser().parse_args(["serve", *argv]))
    assert alone == under


def test_demo_sends_with_sends_own_parser():
    alone = vars(send_parser().parse_args(["h:1", "--fps", "2"]))
    under = vars(build_parser().parse_args(["send", "h:1", "--fps", "2"]))
    assert alone == under and alone["url"] == "http://h:1"


# -- the --config grammar -----------------------------------------------------------------------

def keys() -> dict:
    return {name: flag for name, flag in serve_parser().flags.items()
            if flag.dest not in configfile.NOT_KEYS}


def test_the_grammar_reads_values_as_the_flags_do():
    text = ("# a comment\n\nport = 9000   # trailing comment\nauth = yes\nmetrics_trust_loopback"
            " = off\nmax-frame-size = 2MiB\nprocessor-opt = a=1\nprocessor-opt = b=2\n"
            "route = client\n")
    assert configfile.parse(text, "f.conf", keys()) == {
        "port": 9000, "auth": True, "metrics_trust_loopback": False,
        "max_frame_size": 2 * 1024 ** 2, "processor_options": [("a", "1"), ("b", "2")],
        "route": "client"}


@pytest.mark.parametrize("text, message", [
    ("config = other.conf\n", "f.conf:1: unknown key 'config' (keys are serve's long options: "
     "auth, bus-endpoint,"),
    ("help = yes\n", "f.conf:1: unknown key 'help'"),
    ("\n\nworkers = none\n", "f.conf:3: workers: not a whole number: 'none'"),
    ("display = 2\n", "f.conf:1: display: expected yes or no, got '2'"),
    ("route = some\n", "f.conf:1: route: expected one of auto, any, client, got 'some'"),
    ("port 80\n", "f.conf:1: expected 'key = value', got 'port 80'"),
])
def test_the_grammar_names_file_line_and_key(text, message):
    with pytest.raises(CliError) as err:
        configfile.parse(text, "f.conf", keys())
    assert str(err.value).startswith(message), str(err.value)


def test_a_config_file_that_is_not_text(tmp_path):
    path = tmp_path / "c.conf"
    path.write_bytes(b"port = 1\n\xff\n")
    with pytest.raises(CliError, match=r":2: not UTF-8 text \(byte 0xff\)"):
        configfile.read(str(path), serve_parser().flags)
    with pytest.raises(CliError, match="No such file"):
        configfile.read(str(tmp_path / "missing"), serve_parser().flags)


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("port = 9000\nworkers = 3\nqueue-depth = 4\n")
    config = parse_serve(["serve", "--config", str(path), "-p", "9100"])
    assert (config.port, config.workers, config.queue_depth, config.max_fps) == \
        (9100, 3, 4, 100.0)


# -- checking changes nothing; starting does ----------------------------------------------------

def test_checking_makes_no_record_directory(tmp_path):
    record = tmp_path / "a" / "b"
    config = parse_serve(["serve", "--record", str(record), "--runtime-dir", str(tmp_path)])
    assert config.record_dir == str(record) and not record.exists()
    runtime.make_record_dir(config.record_dir, str(record))
    assert record.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(runtime.StartError, match=f"--record {blocker}/x: Not a directory"):
        runtime.make_record_dir(str(blocker / "x"), f"{blocker}/x")


def test_checking_pairs_the_tls_files_and_starting_loads_them(tmp_path):
    missing = str(tmp_path / "none.pem")
    with pytest.raises(CliError, match="--certfile and --keyfile go together"):
        parse_serve(["serve", "--certfile", missing])
    config = parse_serve(["serve", "--certfile", missing, "--keyfile", missing])
    assert config.certfile == missing
    with pytest.raises(runtime.StartError, match="--certfile/--keyfile: cannot load them"):
        runtime.load_tls(config.certfile, config.keyfile)


def test_a_port_in_use_is_one_line():
    taken = runtime.listen("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(runtime.StartError, match=f"cannot listen on 127.0.0.1:{port}: the "
                           "port is in use"):
            runtime.listen("127.0.0.1", port)
    finally:
        taken.close()
    assert isinstance(taken, socket.socket)


# -- a leaf -------------------------------------------------------------------------------------

def test_args_is_a_leaf():
    """cli.args imports no camstream module but leaf defaults (so every module can use it)."""
    tree = ast.parse((ROOT / "camstream" / "cli" / "args.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {f"{node.module}.{a.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for a in node.names}
    ours = {m for m in imported if m and m.split(".")[0] == "camstream"}
    assert ours <= {"camstream", "camstream.opencv", "camstream.config",
                    "camstream.config.default_users_file", "camstream.rundir",
                    "camstream.rundir.default"}, ours
    assert Parser.__mro__[1] is argparse.ArgumentParser
