"""JPEG frames made on the spot: blurred noise (compresses like a camera picture) and a caption."""
from __future__ import annotations

import cv2
import numpy as np


def make_jpeg(width: int = 320, height: int = 240, quality: int = 80, seed: int = 0,
              label: str | None = None, sigma: float | None = None) -> bytes:
    """A frame that differs by ``seed``. The benchmarks pass ``label`` (a caption scaled to the
    width) and ``sigma`` (the blur) so that their frames stay the size their results quote
    (640x480 at q80: about 60 KB)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    img = (cv2.GaussianBlur(noise, (9, 9), 0) if sigma is None
           else cv2.GaussianBlur(noise, (0, 0), sigma))
    if label is None:
        cv2.putText(img, str(seed), (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.5,
                    (255, 255, 255), 3)
    else:
        cv2.putText(img, label, (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.4, width / 640), (255, 255, 255), 2)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def jpeg_of_size(min_bytes: int, seed: int = 0) -> bytes:
    """The smallest 4:3 ``make_jpeg`` frame (q85, light blur), grown 16 px at a time, of at least
    ``min_bytes``: for a benchmark where the bytes matter, not the picture."""
    height = 64
    while True:
        data = make_jpeg(height * 4 // 3, height, 85, seed=seed, sigma=1.0)
        if len(data) >= min_bytes:
            return data
        height += 16
