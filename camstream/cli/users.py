"""``camstream users``: add, remove and list the users of a users file (camstream.users)."""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from camstream.cli.args import CliError, Parser, add_users_file


def add_parser(verbs: Any) -> None:
    users = verbs.add_parser("users", help="manage the users file (scrypt hashes)",
                             description="Add, remove and list users. Passwords are stored "
                             "as scrypt hashes; a running daemon reloads the file on SIGHUP.")
    actions = users.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                   required=True)
    for action, text in (("add", "add a user or change a password"),
                         ("remove", "remove a user"), ("list", "list the users")):
        p = actions.add_parser(action, help=text, description=text)
        if action != "list":
            p.add_argument("name", help="user name (letters, digits, _ . @ -)")
        if action == "add":
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password from standard input (for scripts) "
                           "instead of prompting")
        add_users_file(p, "users file (default: %(default)s)")
    users.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camstream.users import Users, UsersError

    try:
        users = Users.load(args.users, missing_ok=args.action == "add")
        if args.action == "list":
            for name in sorted(users.hashes):
                print(name)
            return 0
        if args.action == "remove":
            users.remove(args.name)
            users.save(args.users)
            print(f"removed {args.name} from {args.users}")
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = ask_password(args.name, args.users)
        users.add(args.name, password)
        users.save(args.users)
    except UsersError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.users}: {e.strerror}") from None
    print(f"saved {args.name} in {args.users} (a running daemon picks it up on SIGHUP)")
    return 0


def ask_password(name: str, users_file: str) -> str:
    """Twice, on the terminal; with none (a script, a service), say what to use instead."""
    hint = (f"no terminal to ask for the password on: pipe it in with --password-stdin, "
            f"e.g. echo \"$PW\" | camstream users add {name} --password-stdin --users "
            f"{users_file}")
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        if not sys.stdin.isatty():
            raise CliError(hint) from None
    try:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ")
    except EOFError:
        raise CliError(hint) from None
    return password
