"""What every verb shares: the one-line error, the parser that raises it, the value checkers
and the flags declared by several verbs (declared here once).

A leaf: it imports nothing from camstream but the defaults of two leaf modules (the users
file, the runtime directory), so that every command-line module (the verbs, camstream.attach,
camstream.tls) can take from it without importing the others back.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from camstream.config import default_users_file
from camstream.rundir import default as default_runtime_dir

LOG_LEVELS = ["debug", "info", "warning", "error"]


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class Flag:
    """One long option as declared (the ``--config`` file's grammar is read from these)."""
    name: str                      # the long option without its dashes: "max-fps"
    dest: str
    switch: bool                   # takes no value (store_true): yes/no in a config file
    convert: Callable[[str], Any] | None
    choices: tuple | None
    repeat: bool                   # action="append": each line adds one


class Parser(argparse.ArgumentParser):
    """One-line errors; remembers its long options as declared (:attr:`flags`), so that the
    ``--config`` grammar needs none of argparse's private attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: dict[str, Flag] = {}
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not usage + line
        raise CliError(f"{message} (see '{self.prog} --help')")

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*names, **kwargs)
        longs = [n for n in names if n.startswith("--")]
        if longs:
            self.flags[longs[-1][2:]] = Flag(
                name=longs[-1][2:], dest=action.dest,
                switch=kwargs.get("action") in ("store_true", "store_false"),
                convert=kwargs.get("type"), choices=tuple(kwargs["choices"])
                if kwargs.get("choices") else None, repeat=kwargs.get("action") == "append")
        return action


def verb_parser(verb: str, description: str,
                add_arguments: Callable[[argparse.ArgumentParser], None]) -> Parser:
    """A verb's flags alone, parsed (and failing) as ``camstream VERB`` parses them."""
    parser = Parser(prog=f"camstream {verb}", description=description)
    add_arguments(parser)
    return parser


# -- values -------------------------------------------------------------------------------------

def size_arg(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, 500k, 1048576)")
    unit = (m.group(2) or "b")[0]
    value = int(float(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def pixels_arg(text: str) -> int:
    """A pixel count: 16000000, 16M, 12.5M or 4096x4096."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text.lower())
    if m:
        value = int(m.group(1)) * int(m.group(2))
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([km]?)p?\s*", text.lower())
        if not m:
            raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 16M, "
                                             "4096x4096, 12000000)")
        value = int(float(m.group(1)) * {"": 1, "k": 1000, "m": 1000 ** 2}[m.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError("a pixel count must be positive")
    return value


def server_url(text: str) -> str:
    """A server address as users write it: ``http(s)://HOST:PORT``, or ``HOST:PORT`` meaning
    ``http://HOST:PORT`` (and a bare ``HOST`` the daemon's default port, 8080)."""
    from urllib.parse import urlsplit
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number
    except ValueError:
        parts = port = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected a server URL such as "
                                         f"http://HOST:8080 (or HOST:PORT), got {text!r}")
    if "://" not in text and port is None:  # a bare host: the daemon's default port
        url += ":8080"
    return url


def endpoint_arg(text: str) -> str:
    m = re.fullmatch(r"tcp://([^:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text)
    if not m or not 0 < int(m.group(2)) < 65535:
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {text!r}")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def processor_opt(text: str) -> tuple[str, str]:
    from workers.processors import parse_option  # the processors' own grammar
    try:
        return parse_option(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- flags several verbs declare ----------------------------------------------------------------

def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                        help="log verbosity (default: %(default)s)")


def add_users_file(parser: argparse.ArgumentParser, help: str) -> None:
    """``--users FILE``; ``help`` ends with the default, as ``(default: %(default)s)``."""
    parser.add_argument("--users", metavar="FILE", default=default_users_file(), help=help)


def add_runtime_dir(parser: argparse.ArgumentParser, port: bool = False) -> None:
    """``--runtime-dir``, whose default follows the port (:func:`runtime_dir_of`); with
    ``port``, also the ``--port`` an attaching tool finds its daemon by."""
    if port:
        parser.add_argument("-p", "--port", type=port_arg, default=8080,
                            help="the daemon's port, which names its default runtime "
                            "directory (default: %(default)s)")
    parser.add_argument("--runtime-dir", metavar="DIR", default=None,
                        help="where the daemon's ipc sockets live (default: one per port, "
                        f"e.g. {default_runtime_dir(8080)} for port 8080)")


def runtime_dir_of(args: argparse.Namespace) -> str:
    """``--runtime-dir`` as given, else the default for the daemon's port (a pool's: its
    --worker-endpoint's)."""
    if args.runtime_dir:
        return str(Path(args.runtime_dir).absolute())
    if args.verb == "pool":
        return default_runtime_dir(f"pool-{args.worker_endpoint.rpartition(':')[2]}")
    return default_runtime_dir(args.port)


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="worker processes (default: the CPU count, %(default)s)")


def add_processor(parser: argparse.ArgumentParser, processor_help: str, option_help: str
                  ) -> None:
    """``--processor`` and the repeatable ``--processor-opt`` (serve words them at length)."""
    parser.add_argument("--processor", default="stats", metavar="NAME", help=processor_help)
    parser.add_argument("--processor-opt", dest="processor_options", action="append",
                        type=processor_opt, default=[], metavar="KEY=VALUE", help=option_help)


def add_frame_limits(parser: argparse.ArgumentParser) -> None:
    """What a worker spends on one frame at most (checked before and while decoding)."""
    parser.add_argument("--max-pixels", type=pixels_arg, default="16M", metavar="N",
                        help="largest frame decoded, read from its JPEG header before "
                        "decoding (larger ones are counted as errors); e.g. 16M or 4096x4096 "
                        "(default: 16M, more than any phone camera streams)")
    parser.add_argument("--frame-timeout", type=positive_float, default=5.0,
                        metavar="SECONDS", help="a worker still decoding and processing one "
                        "frame after this long is replaced, and the frame counted as an error "
                        "(default: %(default)s)")


def add_stop_timeout(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--stop-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                        help=help)


def add_worker_timeout(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--worker-timeout", type=positive_float, default=10.0,
                        metavar="SECONDS", help=help)


def add_tls_files(parser: argparse.ArgumentParser, cert_help: str, key_help: str) -> None:
    """``--certfile``/``--keyfile`` of a server (serve, display --web)."""
    parser.add_argument("--certfile", metavar="FILE", help=cert_help)
    parser.add_argument("--keyfile", metavar="FILE", help=key_help)


def check_tls_files(certfile: str | None, keyfile: str | None) -> None:
    """Both or neither; loading them is the server's start (camstream.supervisor.runtime)."""
    if bool(certfile) != bool(keyfile):
        raise CliError("--certfile and --keyfile go together")


def add_tls_trust(parser: argparse.ArgumentParser) -> None:
    """How a client verifies an https:// server (serve --certfile): by default against the
    system's certificate authorities."""
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", metavar="PEM", type=existing_file,
                       help="trust the server's certificate (or its authority) from this "
                       "file: a lab's self-signed certificate")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate at all")


def add_login(parser: argparse.ArgumentParser, username_default: str | None,
              username_help: str, password_help: str) -> None:
    """``-u/--username`` and ``--password`` of the clients (send, status)."""
    parser.add_argument("-u", "--username", default=username_default, help=username_help)
    parser.add_argument("--password", default="", help=password_help)


def password_of(args: argparse.Namespace) -> str:
    return args.password or os.environ.get("CAMSTREAM_PASSWORD", "")


def require_opencv(gui: bool = False):
    """``cv2`` for the verbs that need it, or one line saying which build to install."""
    from camstream import opencv  # a leaf; imported late: loading OpenCV takes a while
    try:
        return opencv.require_gui() if gui else opencv.require()
    except opencv.OpenCVUnusable as e:
        raise CliError(str(e)) from None



def add_tcp_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The scaling-out options: tcp endpoints (see camstream.bus) and their CURVE keys."""
    if verb == "worker":
        parser.add_argument("--connect", dest="worker_endpoint", type=endpoint_arg,
                            required=True, metavar="tcp://HOST:PORT",
                            help="the serving machine's --worker-endpoint")
        parser.add_argument("--bus", dest="bus_endpoint", type=endpoint_arg, default=None,
                            metavar="tcp://HOST:PORT",
                            help="its bus (default: the same host, PORT+1)")
        parser.add_argument("--key", default="worker", metavar="NAME",
                            help="use DIR/NAME.key_secret (default: %(default)s)")
    else:
        parser.add_argument("--worker-endpoint", type=endpoint_arg, default=None,
                            required=verb == "pool", metavar="tcp://HOST:PORT",
                            help="where ingest nodes ('serve --ingest-only') and remote "
                            "workers connect, e.g. tcp://0.0.0.0:5555" if verb == "pool" else
                            "also offer frames to remote workers here (e.g. "
                            "tcp://0.0.0.0:5555); with --ingest-only: the pool's endpoint")
        parser.add_argument("--bus-endpoint", type=endpoint_arg, default=None,
                            metavar="tcp://HOST:PORT", help="the bus over tcp: PORT (publish) "
                            "and PORT+1 (subscribe) (default: --worker-endpoint's PORT+1)")
    parser.add_argument("--curve-keys", metavar="DIR", default="",
                        help="CURVE keys, required by tcp endpoints (make them with "
                        "'camstream keys generate DIR')")
    if verb == "serve":
        parser.add_argument("--ingest-only", action="store_true",
                            help="no workers here: send frames to a 'camstream pool' at "
                            "--worker-endpoint and use its bus (several ingest nodes "
                            "behind nginx)")
