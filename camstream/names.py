"""A client or session name as one file name, for the processes that write files named after
clients (the display's ``--folder``, the workers' recorder)."""
from __future__ import annotations


def safe(name: str) -> str:
    """``name`` as one path component. Names are checked at login (letters, digits and
    ``_.@-``, not first: those pass unchanged); this is belt and braces: no separator, no NUL,
    never ``.``/``..`` or hidden, never empty. Two names that login accepts never share a file
    (those pass unchanged); names it refuses may (``a/b`` and ``a_b``)."""
    name = name.replace("/", "_").replace("\0", "_")
    return "_" + name if name.startswith(".") or not name else name
