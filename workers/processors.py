"""The processor API, and how ``--processor NAME`` finds one.

A processor is what a worker does with each decoded frame. It is either

- a callable ``process(image, header)``, or
- a class with ``process(self, image, header)`` and, optionally, ``setup(self, options)``; the
  worker makes one instance (per worker process) and calls ``setup`` once with the
  ``--processor-opt key=value`` options as a ``dict`` of strings.

``image`` is the decoded BGR ``numpy`` array (owned by the processor: draw on it freely) and
``header`` the frame's :class:`camstream.wire.Header` (client, session, seq, recv_ns, size).

It returns a JSON-serialisable ``dict`` (the result), or a ``(dict, image)`` tuple to publish
an annotated image beside the result (``image`` may be ``None``). Nothing else. The worker adds
``seq``, ``worker`` and ``done_ns`` to the dict. An exception costs that frame only: it is
counted for the client (``errors`` and ``processor_errors``) and logged once per kind.

A processor that keeps state per client across frames (a background model, a tracker) sets
``ordered = True`` (a class attribute, or an attribute of the function): ``serve`` then routes
each client's frames to one worker, in order (``--route client``, :mod:`camstream.ingest.routing`).

``NAME`` is looked up as a built-in (:data:`BUILTINS`), then as an installed entry point in the
group ``camstream.processors``, then as ``module:attr``.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Union

import numpy as np

from camstream.wire import Header

Result = Union[dict, "tuple[dict, np.ndarray | None]"]
Processor = Callable[[np.ndarray, Header], Result]
ENTRY_POINT_GROUP = "camstream.processors"


def _builtins() -> dict[str, Any]:
    from workers import builtin
    return {"stats": builtin.Stats, "measure": builtin.Stats, "faces": builtin.Faces,
            "motion": builtin.Motion, "edges": builtin.Edges}


BUILTIN_NAMES = ("stats", "measure", "faces", "motion", "edges")  # measure: stats' old name


def parse_option(text: str) -> tuple[str, str]:
    """``key=value`` from the command line, for ``--processor-opt``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    return key, value.strip()


def find(name: str) -> Any:
    """The object ``name`` refers to: a built-in, an entry point, or ``module:attr``."""
    builtins = _builtins()
    if name in builtins:
        return builtins[name]
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    if ":" in name:
        module, _, attr = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    installed = sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    raise ValueError(f"unknown processor {name!r} (built-ins: {', '.join(BUILTIN_NAMES)}"
                     + (f"; installed: {', '.join(installed)}" if installed else "")
                     + "; or module:attr)")


def is_ordered(name: str) -> bool:
    """Whether processor ``name`` wants each client's frames in order, on one worker."""
    return bool(getattr(find(name), "ordered", False))


def load(name: str, options: Iterable[Iterable[str]] | dict | None = None) -> Processor:
    """Find processor ``name``, set it up with ``options`` and return its ``process``
    callable. Raises (with a message fit for one line) when it cannot be loaded."""
    opts = dict(options or {})
    obj = find(name)
    if inspect.isclass(obj):
        instance = obj()
        if hasattr(instance, "setup"):
            instance.setup(opts)
        elif opts:
            raise ValueError(f"{name} takes no options (it has no setup method)")
        if not callable(getattr(instance, "process", None)):
            raise TypeError(f"{name} has no process(image, header) method")
        return instance.process
    if not callable(obj):
        raise TypeError(f"{name} is a {type(obj).__name__}, not a function or a class")
    if opts:
        raise ValueError(f"{name} is a function and takes no options (make it a class with "
                         "setup(options) to take some)")
    return obj
