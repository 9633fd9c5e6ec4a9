"""JPEGs an attacker sends: small files that are costly to decode (built here, not stored)."""
from __future__ import annotations

import cv2
import numpy as np


def _segments_end(jpeg: bytes) -> int:
    """Where the EOI marker is (the end of the last scan)."""
    end = jpeg.rfind(b"\xff\xd9")
    assert end > 0
    return end


def repeated_scans(width: int = 4096, height: int = 4096, repeats: int = 16680) -> bytes:
    """A progressive JPEG whose last scan (an AC refinement) is repeated: every copy is one
    more pass of the decoder over all the pixels, for a few bytes each."""
    img = np.full((height, width, 3), 128, np.uint8)  # flat: each scan is a few bytes
    jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                      cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    end = _segments_end(jpeg)
    last = jpeg.rfind(b"\xff\xda", 0, end)
    scan = jpeg[last:end]
    return jpeg[:end] + scan * repeats + b"\xff\xd9"


def declaring(width: int = 8192, height: int = 8192) -> bytes:
    """A tiny baseline JPEG whose frame header declares ``width`` x ``height``."""
    small = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    bomb = bytearray(small)
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(bomb)
