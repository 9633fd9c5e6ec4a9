"""Built-in processors. A processor takes the decoded BGR image and the frame's header and
returns a JSON-serialisable dict."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from camstream.wire import Header

Processor = Callable[[np.ndarray, Header], dict]


def measure(image: np.ndarray, header: Header) -> dict:
    """The default: the frame's size and mean brightness (0-255)."""
    height, width = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return {"width": width, "height": height, "brightness": round(float(cv2.mean(gray)[0]), 2)}


BUILTINS: dict[str, Processor] = {"measure": measure}


def load(name: str) -> Processor:
    """A built-in by name, or ``module:attr``."""
    if name in BUILTINS:
        return BUILTINS[name]
    if ":" in name:
        import importlib
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"unknown processor {name!r} (built-ins: {', '.join(sorted(BUILTINS))})")
