"""The pipeline benchmark's baseline: a plain ``cv2.imdecode`` loop on one core.

    python -m benchmarks.decodeloop FRAME.jpg SECONDS     # prints frames/s
"""
from __future__ import annotations

import sys
import time

import cv2
import numpy as np


def main() -> int:
    buf = np.frombuffer(open(sys.argv[1], "rb").read(), np.uint8)
    seconds = float(sys.argv[2])
    cv2.imdecode(buf, cv2.IMREAD_COLOR)  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cv2.imdecode(buf, cv2.IMREAD_COLOR)
        n += 1
    print(n / (time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
