"""``camstream systemd`` (the install recipe) and ``camstream reload`` (the unit's
ExecReload): the service's two verbs (camstream.supervisor.systemd)."""
from __future__ import annotations

import argparse
from typing import Any

from camstream.cli.args import CliError, positive_int


def add_parser(verbs: Any) -> None:
    units = verbs.add_parser("systemd", help="print how to install camstream as a service",
                             description="Print a step-by-step recipe that installs camstream "
                             "as a systemd service, with the paths of its unit files.")
    units.set_defaults(run=run_systemd)


def add_reload_parser(verbs: Any) -> None:
    reload = verbs.add_parser("reload", help="make a running daemon reload (systemctl reload "
                              "runs this)", description="Send SIGHUP to the daemon whose "
                              "supervisor is PID: it re-reads the users file (added users can "
                              "log in, removed ones are disconnected) and applies workers and "
                              "log-level from its configuration. The unit's ExecReload runs "
                              "it, so that no /bin/kill is needed.")
    reload.add_argument("pid", type=positive_int, metavar="PID",
                        help="the supervisor's pid (systemd: $MAINPID)")
    reload.set_defaults(run=run_reload)


def run_systemd(args: argparse.Namespace) -> int:
    from camstream.supervisor.systemd import recipe
    print(recipe())
    return 0


def run_reload(args: argparse.Namespace) -> int:
    from camstream.supervisor.systemd import ReloadError, reload
    try:
        reload(args.pid)
    except ReloadError as e:
        raise CliError(str(e)) from None
    return 0
