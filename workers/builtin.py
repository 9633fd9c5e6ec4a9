"""The built-in processors: ``stats`` (the default; ``measure`` is its old name), ``faces``,
``motion`` and ``edges``. Each is a class following the API in :mod:`workers.processors`;
options come from ``--processor-opt key=value`` and are checked in ``setup``, so a typo stops
``camstream serve`` before anything starts."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np

from camstream.wire import Header

TRUE = {"1", "yes", "true", "on"}
FALSE = {"0", "no", "false", "off"}


def parse_options(name: str, options: dict, defaults: dict) -> dict:
    """``options`` (strings) converted to the types of ``defaults``; unknown keys refused."""
    out = dict(defaults)
    for key, text in options.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"{name}: unknown option {key!r} (options: {known})")
        kind = type(defaults[key])
        try:
            if kind is bool:
                if str(text).lower() not in TRUE | FALSE:
                    raise ValueError
                out[key] = str(text).lower() in TRUE
            else:
                out[key] = kind(text)
        except ValueError:
            raise ValueError(f"{name}: option {key}: expected {kind.__name__}, "
                             f"got {text!r}") from None
    return out


def require(name: str, options: dict, rules: dict) -> None:
    """Refuse an option out of its range: ``rules`` maps a key to (test, what it must be)."""
    for key, (ok, what) in rules.items():
        if not ok(options[key]):
            raise ValueError(f"{name}: option {key} must be {what}, got {options[key]!r}")


class Stats:
    """The default: size, brightness (mean grey, 0-255) and sharpness (variance of the
    Laplacian: low means blurred or out of focus)."""

    def setup(self, options: dict) -> None:
        parse_options("stats", options, {})

    def process(self, image: np.ndarray, header: Header) -> dict:
        height, width = image.shape[:2]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        mean, _ = cv2.meanStdDev(gray)
        # 16-bit is exact for a Laplacian of 8-bit pixels, and half the cost of float64
        _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
        return {"width": width, "height": height,
                "brightness": round(float(mean[0, 0]), 2),
                "sharpness": round(float(std[0, 0]) ** 2, 2)}


CASCADE = "haarcascade_frontalface_default.xml"
CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")


def find_cascade(path: str = "") -> str:
    """The frontal-face Haar cascade: ``path``, else OpenCV's bundled one, else the
    system's (Debian's opencv-data)."""
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"faces: cascade file {path} does not exist")
        return path
    dirs = [getattr(getattr(cv2, "data", None), "haarcascades", "") or "", *CASCADE_DIRS]
    for d in dirs:
        candidate = os.path.join(d, CASCADE)
        if d and os.path.isfile(candidate):
            return candidate
    raise ValueError(f"faces: no {CASCADE} in OpenCV {cv2.__version__}'s data or "
                     f"{', '.join(CASCADE_DIRS)} (OpenCV 5 wheels no longer bundle the Haar "
                     "cascades: install opencv-python<5, or pass cascade=PATH)")


class Faces:
    """Frontal faces with OpenCV's Haar cascade; boxes in the result, drawn on the annotated
    image (published only when there are faces, to spare the JPEG encode)."""

    DEFAULTS = {"scale": 1.1, "neighbors": 5, "min_size": 30, "cascade": "", "equalize": False,
                "annotate": True}

    def setup(self, options: dict) -> None:
        o = parse_options("faces", options, self.DEFAULTS)
        require("faces", o, {"scale": (lambda v: v > 1, "over 1 (1.1: each step 10 % larger)"),
                             "neighbors": (lambda v: v >= 0, "0 or more"),
                             "min_size": (lambda v: v >= 1, "1 or more (pixels)")})
        if not hasattr(cv2, "CascadeClassifier"):
            raise ValueError(f"faces: OpenCV {cv2.__version__} has no CascadeClassifier "
                             "(OpenCV 5 moved it to opencv-contrib-python; or install "
                             "opencv-python<5)")
        self.cascade = cv2.CascadeClassifier(find_cascade(o["cascade"]))
        if self.cascade.empty():
            raise ValueError(f"faces: cannot read the cascade {o['cascade'] or CASCADE}")
        self.scale = o["scale"]
        self.neighbors = o["neighbors"]
        self.min_size = (o["min_size"], o["min_size"])
        self.annotate = o["annotate"]
        self.equalize = o["equalize"]  # helps with dim, low-contrast cameras

    def process(self, image: np.ndarray, header: Header):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.scale,
                                              minNeighbors=self.neighbors,
                                              minSize=self.min_size)
        boxes = [[int(v) for v in box] for box in found]
        result = {"faces": len(boxes), "boxes": boxes}
        if not boxes or not self.annotate:
            return result
        for x, y, w, h in boxes:
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
        return result, image


class _Track:
    __slots__ = ("model", "last_seq", "seen", "used")

    def __init__(self, history: int, threshold: float) -> None:
        self.model = cv2.createBackgroundSubtractorMOG2(history, threshold, False)
        self.last_seq = 0
        self.seen = 0
        self.used = 0.0


class Motion:
    """Moving regions by background subtraction (MOG2), one model per client.

    ``ordered``: serve routes each client's frames to one worker, in order. Frames dropped on
    the way (newest wins), or dealt to other workers where routing is off (remote workers,
    pools), show as ``gap``, the frames since the one the model last saw; the gap scales the
    learning rate, so the model forgets the background at the same pace in time either way.
    A sequence number going back (ingest restarted) resets the model and says so
    (``reset``)."""

    ordered = True
    DEFAULTS = {"history": 100, "threshold": 16.0, "min_area": 0.002, "warmup": 2,
                "width": 320, "annotate": True}
    IDLE_S = 60.0  # a client silent this long loses its model

    def setup(self, options: dict) -> None:
        o = parse_options("motion", options, self.DEFAULTS)
        require("motion", o, {"history": (lambda v: v >= 1, "1 or more (frames)"),
                              "threshold": (lambda v: v > 0, "over 0"),
                              "min_area": (lambda v: 0 <= v < 1, "from 0 to under 1 (a share "
                                           "of the frame)"),
                              "warmup": (lambda v: v >= 0, "0 or more (frames)"),
                              "width": (lambda v: v >= 16, "16 or more (pixels)")})
        self.o = o
        self.tracks: dict[str, _Track] = {}
        self.calls = 0

    def process(self, image: np.ndarray, header: Header):
        o = self.o
        now = time.monotonic()
        self.calls += 1
        if self.calls % 256 == 0:
            self.tracks = {k: t for k, t in self.tracks.items() if now - t.used < self.IDLE_S}
        track = self.tracks.get(header.client)
        reset = track is not None and header.seq <= track.last_seq
        if track is None or reset:
            track = self.tracks[header.client] = _Track(o["history"], o["threshold"])
            gap = 0
        else:
            gap = header.seq - track.last_seq - 1
        track.last_seq, track.used = header.seq, now
        track.seen += 1
        width = image.shape[1]
        factor = min(1.0, o["width"] / width)
        small = cv2.resize(image, None, fx=factor, fy=factor,
                           interpolation=cv2.INTER_AREA) if factor < 1.0 else image
        rate = 1.0 - (1.0 - 1.0 / o["history"]) ** (gap + 1)
        mask = track.model.apply(small, learningRate=rate if track.seen > 1 else 1.0)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        warming = track.seen <= o["warmup"]
        boxes = []
        moving = 0.0
        if not warming:
            moving = cv2.countNonZero(mask) / mask.size
            min_px = o["min_area"] * mask.size
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for c in contours:
                if cv2.contourArea(c) >= min_px:
                    x, y, w, h = cv2.boundingRect(c)
                    boxes.append([int(x / factor), int(y / factor), int(w / factor),
                                  int(h / factor)])
        result = {"motion": bool(boxes), "boxes": boxes, "moving": round(moving, 4),
                  "gap": gap, "warming_up": warming}
        if reset:
            result["reset"] = True
        if not boxes or not o["annotate"]:
            return result
        for x, y, w, h in boxes:
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 0, 255), 2)
        return result, image


class Edges:
    """Canny edges: the share of edge pixels in the result, the edge map as the annotated
    image."""

    DEFAULTS = {"low": 100.0, "high": 200.0, "annotate": True}

    def setup(self, options: dict) -> None:
        o = parse_options("edges", options, self.DEFAULTS)
        require("edges", o, {"low": (lambda v: v >= 0, "0 or more"),
                             "high": (lambda v: v >= o["low"], f"at least low ({o['low']})")})
        self.low, self.high, self.annotate = o["low"], o["high"], o["annotate"]

    def process(self, image: np.ndarray, header: Header):
        edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), self.low, self.high)
        result = {"edges": round(cv2.countNonZero(edges) / edges.size, 4)}
        return (result, edges) if self.annotate else result
