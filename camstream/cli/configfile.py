"""The ``serve --config FILE`` grammar: ``key = value`` lines (``#`` comments), the keys being
serve's long options as declared (:class:`camstream.cli.args.Flag`), the values checked by the
flags' own converters. Every problem is one line naming the file, the line and the key."""
from __future__ import annotations

import argparse
from pathlib import Path

from camstream.cli.args import CliError, Flag

TRUE = {"1", "yes", "true", "on"}
FALSE = {"0", "no", "false", "off"}
NOT_KEYS = ("help", "config")  # long options a config file cannot set


def read(path: str, flags: dict[str, Flag]) -> dict:
    """FILE's settings as parser defaults (``dest: value``)."""
    return parse(read_text(path), path, {name: flag for name, flag in flags.items()
                                         if flag.dest not in NOT_KEYS})


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"--config {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
        raise CliError(f"--config {path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}"
                       f"); is it the right file?") from None


def parse(text: str, path: str, keys: dict[str, Flag]) -> dict:
    """``text``'s settings; ``path`` names the file in errors."""
    values: dict = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        where = f"{path}:{lineno}"
        if not sep:
            raise CliError(f"{where}: expected 'key = value', got {line!r}")
        flag = keys.get(key.replace("_", "-"))
        if flag is None:
            raise CliError(f"{where}: unknown key {key!r} (keys are serve's long options: "
                           f"{', '.join(sorted(keys))})")
        converted = convert(flag, key, value, where)
        if flag.repeat:  # a repeatable key
            values.setdefault(flag.dest, []).append(converted)
        else:
            values[flag.dest] = converted
    return values


def convert(flag: Flag, key: str, value: str, where: str):
    """One value, as the flag would take it on the command line."""
    if flag.switch:  # a switch such as auth
        if value.lower() not in TRUE | FALSE:
            raise CliError(f"{where}: {key}: expected yes or no, got {value!r}")
        return value.lower() in TRUE
    try:
        converted = flag.convert(value) if flag.convert else value
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise CliError(f"{where}: {key}: {e}") from None
    if flag.choices and converted not in flag.choices:
        raise CliError(f"{where}: {key}: expected one of {', '.join(flag.choices)}, "
                       f"got {value!r}")
    return converted
