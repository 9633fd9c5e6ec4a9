"""What every camstream child process does first: name itself, tie its life to the
supervisor's, set up logging, and read its configuration."""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import sys

import setproctitle

from camstream.config import Config

# ``python -m camstream`` puts the current directory first on sys.path, so a folder named
# ``camstream`` or ``workers`` where the user stands (the folder above a clone) shadows the
# installed package. Children start through this line instead: it drops that first entry and
# runs the module as -m would. Not ``-I``: it also ignores PYTHONPATH (the README's
# ``PYTHONPATH=. camstream serve --processor redness:redness``) and user site-packages
# (``pip install --user``); not ``-P``: Python 3.11+, and camstream runs on 3.9.
_RUN_MODULE = ("import runpy, sys\n"
               "if not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
               "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def python_module(module: str, *args: str) -> list[str]:
    """The argv of ``python -m module args...`` run with this interpreter, importing the
    installed camstream whatever the current directory holds."""
    return [sys.executable, "-c", _RUN_MODULE, module, *args]

_PR_SET_PDEATHSIG = 1
HOST = socket.gethostname()  # in reports on a bus that other machines may share


# C0 and C1 control characters, DEL, and lone surrogates (which would not even encode)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``): what
    a client sent can neither colour a terminal, rewrite a line, nor forge a log line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace")
                            .decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """Each record's message with its control characters escaped (a traceback, appended
    after the message, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(level: str) -> None:
    """One line per record, with a level and the process's role: journald-friendly. On a
    terminal each line starts with the time; journald stamps its own (JOURNAL_STREAM).
    Control characters in a message are escaped: much of what is logged comes from clients."""
    stamp = "%(asctime)s " if sys.stderr.isatty() and "JOURNAL_STREAM" not in os.environ \
        else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(
        f"{stamp}%(levelname)s {setproctitle.getproctitle()}: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def become(role: str, parent_pid: int) -> None:
    """Take the title ``camstream: <role>`` and die with the supervisor, even on its SIGKILL."""
    setproctitle.setproctitle(f"camstream: {role}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop still reaps us
        pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        raise SystemExit(0)


def child_start(role: str) -> Config:
    """Entry of a child: the config arrives as JSON on stdin, the parent pid as argv[1]."""
    config = Config.from_json(sys.stdin.read())
    sys.stdin.close()
    become(role, int(sys.argv[1]))
    setup_logging(config.log_level)
    return config
