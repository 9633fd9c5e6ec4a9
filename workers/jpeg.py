"""What a JPEG will cost to decode, read from its markers before decoding it.

``cv2.imdecode`` trusts the file: a few hundred bytes may declare 8192x8192 pixels (half a
gigabyte to allocate), and a progressive JPEG may repeat a scan thousands of times (each a pass
over every pixel: seconds per frame). No camera makes either. :func:`problem` walks the marker
segments up to the first scan (a handful of segments: microseconds), takes the frame header's
dimensions and kind, counts the scans, and says what is wrong, or nothing. Pure: bytes in, a
reason out.

Scans of a progressive JPEG are counted as the ``FF DA`` byte pairs after the first one: inside
entropy-coded data a ``FF`` is always followed by ``00`` or a restart marker, so every such pair
is a real marker (a sequential JPEG is decoded in one pass, whatever follows its first scan).
"""
from __future__ import annotations

from typing import NamedTuple

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
BASELINE, EXTENDED, PROGRESSIVE = 0xC0, 0xC1, 0xC2
# frame headers of kinds no camera makes: lossless, hierarchical, arithmetic-coded
OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
STANDALONE = {0x01, *range(0xD0, 0xD8)}   # TEM and the restart markers carry no length

DEFAULT_MAX_PIXELS = 16_000_000   # a 16-megapixel frame covers every phone camera
MAX_SCANS = 32                    # libjpeg's progressive script has 10; optimisers, < 20
MAX_SEGMENTS = 256                # markers before the first scan (tables, APPn, COM)


class Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Frame(NamedTuple):
    width: int
    height: int
    components: int
    progressive: bool
    scans: int


def read(data: bytes) -> Frame:
    """The frame header and the scan count; :class:`Refused` if this is not a JPEG we decode."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise Refused("not a JPEG", "is not a JPEG")
    if b"\xff\xd9" not in bytes(data[-32:]):
        raise Refused("truncated", "is a truncated JPEG (no end marker)")
    pos, frame, segments = 2, None, 0
    while True:
        if pos + 4 > n:
            raise Refused("truncated", "is a truncated JPEG (no scan)")
        if data[pos] != 0xFF:
            raise Refused("malformed", f"is a malformed JPEG (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in STANDALONE:
            pos += 2
            continue
        segments += 1
        if segments > MAX_SEGMENTS:
            raise Refused("malformed", f"is a malformed JPEG (over {MAX_SEGMENTS} segments "
                          "before its first scan)")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            raise Refused("malformed", f"is a malformed JPEG (a segment at byte {pos} runs "
                          "past the end)")
        if marker in OTHER_SOF:
            raise Refused("unsupported kind", "is a kind of JPEG no camera makes (lossless, "
                          "hierarchical or arithmetic-coded)")
        if marker in (BASELINE, EXTENDED, PROGRESSIVE):
            if frame is not None or length < 8:
                raise Refused("malformed", "is a malformed JPEG (a second or short frame "
                              "header)")
            precision = data[pos + 4]
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            frame = (width, height, data[pos + 9], marker == PROGRESSIVE, precision)
        if marker == SOS:
            break
        pos += 2 + length
    if frame is None:
        raise Refused("malformed", "is a malformed JPEG (a scan before its frame header)")
    width, height, components, progressive, precision = frame
    if precision != 8:
        raise Refused("unsupported kind", f"is a {precision}-bit JPEG (cameras make 8-bit "
                      "ones)")
    if not width or not height:
        raise Refused("malformed", "is a JPEG without its dimensions in its frame header")
    if components not in (1, 3, 4):
        raise Refused("unsupported kind", f"is a JPEG with {components} colour components")
    # a sequential decoder makes one pass whatever follows; only progressive scans cost
    scans = 1 + bytes(data[pos + 2:]).count(b"\xff\xda") if progressive else 1
    return Frame(width, height, components, progressive, scans)


def problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str]:
    """Why this frame must not be decoded, as (reason, detail), or ("", "") when it may: not
    a JPEG, malformed, over ``max_pixels`` (``serve --max-pixels``), or more scans than any
    encoder writes. The reason is one of a few fixed words (a counter's key)."""
    try:
        frame = read(data)
    except Refused as e:
        return e.reason, e.detail
    if frame.width * frame.height > max_pixels:
        return "over --max-pixels", (f"declares {frame.width}x{frame.height} pixels, over "
                                     f"--max-pixels {max_pixels}")
    if frame.scans > MAX_SCANS:
        return "too many scans", (f"is a progressive JPEG of {frame.scans} scans (at most "
                                  f"{MAX_SCANS} are decoded)")
    return "", ""
