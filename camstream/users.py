"""The user database: a text file of scrypt hashes, one user a line.

    alice:scrypt:16384:8:1:<salt base64>:<hash base64>

Passwords are never stored or logged. The file is written atomically (temporary file, fsync,
rename) with mode 0600. Checking a password takes as long for an unknown user as for a known
one (a dummy hash is checked), so timing does not tell which names exist.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # whole name: fullmatch
NAME_RULE = "1-64 characters: letters, digits and _ . @ - (not first)"


class UsersError(Exception):
    """A users file that cannot be read or a name that is not allowed."""


@dataclass(frozen=True)
class Hash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def make(cls, password: str) -> Hash:
        salt = secrets.token_bytes(16)
        return cls(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, _scrypt(password, salt, SCRYPT_N,
                                                              SCRYPT_R, SCRYPT_P))

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(
            _scrypt(password, self.salt, self.n, self.r, self.p), self.digest)

    def encode(self) -> str:
        b64 = base64.b64encode
        return f"scrypt:{self.n}:{self.r}:{self.p}:{b64(self.salt).decode()}:" \
               f"{b64(self.digest).decode()}"

    @classmethod
    def decode(cls, text: str) -> Hash:
        kind, n, r, p, salt, digest = text.split(":")
        if kind != "scrypt":
            raise ValueError(f"unknown hash kind {kind!r}")
        return cls(int(n), int(r), int(p), base64.b64decode(salt, validate=True),
                   base64.b64decode(digest, validate=True))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r * p, dklen=32)


@functools.cache
def _dummy() -> Hash:
    """What an unknown name's password is checked against (made on the first check, known
    name or not, rather than at import: every process that imports this pays 50 ms)."""
    return Hash.make(secrets.token_hex(16))


def check_name(name: str) -> str:
    # fullmatch: with match and ``$``, "bob\n" passed ($ matches before a final newline)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsersError(f"invalid user name {name!r}: {NAME_RULE}")
    return name


class Users:
    """In-memory user database loaded from a users file."""

    def __init__(self, hashes: dict[str, Hash] | None = None) -> None:
        self.hashes = dict(hashes or {})

    @classmethod
    def load(cls, path: str, missing_ok: bool = False) -> Users:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise UsersError(f"users file {path} does not exist "
                             f"(create it with: camstream users add NAME --users {path})") \
                from None
        except OSError as e:
            raise UsersError(f"cannot read users file {path}: {e.strerror}") from None
        hashes = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, encoded = line.partition(":")
            try:
                hashes[check_name(name)] = Hash.decode(encoded)
            except (ValueError, UsersError):
                raise UsersError(f"{path}:{lineno}: not a valid user line "
                                 "(expected NAME:scrypt:N:R:P:SALT:HASH)") from None
        return cls(hashes)

    def save(self, path: str) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = "".join(f"{name}:{h.encode()}\n" for name, h in sorted(self.hashes.items()))
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write("# camstream users: NAME:scrypt:N:R:P:SALT:HASH "
                        "(manage with 'camstream users')\n" + lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

    def add(self, name: str, password: str) -> None:
        if not password:
            raise UsersError("empty password")
        self.hashes[check_name(name)] = Hash.make(password)

    def remove(self, name: str) -> None:
        if name not in self.hashes:
            raise UsersError(f"no user {name!r}")
        del self.hashes[name]

    def verify(self, name: str, password: str) -> bool:
        """Constant work whether or not the user exists."""
        if not isinstance(password, str):
            password = ""
        dummy = _dummy()
        h = self.hashes.get(name) if isinstance(name, str) else None
        ok = (h or dummy).matches(password)
        return ok and h is not None

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, name: str) -> bool:
        return name in self.hashes
