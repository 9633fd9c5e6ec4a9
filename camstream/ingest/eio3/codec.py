"""Engine.IO 3 and Socket.IO 4 codecs, pure: bytes and strings in, packets out, no I/O (every
edge case is a unit test, tests/test_legacy_codec.py). The protocol facts they rely on are
listed in camstream.ingest.eio3.transport.
"""
from __future__ import annotations

import base64
import binascii

from engineio.packet import MESSAGE
from socketio.packet import BINARY_ACK, BINARY_EVENT, Packet

from camstream.ingest.limits import MAX_ATTACHMENTS

MAX_PAYLOAD_PACKETS = 256   # Engine.IO packets in one polling payload


class ProtocolError(ValueError):
    """Something a client sent that the legacy revision does not allow."""


# -- codecs: Engine.IO 3 packets and payloads -------------------------------------------------

def _packet_type(char: str) -> int:
    if len(char) != 1 or not "0" <= char <= "6":
        raise ProtocolError(f"unknown packet type {char[:8]!r}")
    return ord(char) - 48


def encode_packet(ptype: int, data: str | bytes | bytearray | None = None,
                  b64: bool = False) -> str | bytes:
    """One packet: ``<type><text>``, binary ``<type byte><bytes>``, or ``b<type><base64>``."""
    if data is None:
        return str(ptype)
    if isinstance(data, str):
        return f"{ptype}{data}"
    if b64:
        return f"b{ptype}{base64.b64encode(data).decode('ascii')}"
    return bytes((ptype,)) + data


def decode_packet(encoded: str | bytes | bytearray) -> tuple[int, str | bytes | bytearray]:
    """One packet, text or binary, into ``(type, data)``.

    A ``bytearray`` loses its type byte in place, which is O(1) for a bytearray; ``bytes``
    (what the websocket reader produces) are sliced: one copy.
    """
    if isinstance(encoded, str):
        if not encoded:
            raise ProtocolError("empty packet")
        if encoded[0] != "b":
            return _packet_type(encoded[0]), encoded[1:]
        ptype = _packet_type(encoded[1:2])
        try:
            return ptype, base64.b64decode(encoded[2:], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid base64 in a b64 packet") from None
    if not encoded:
        raise ProtocolError("empty binary packet")
    ptype = encoded[0]
    if ptype > 6:
        raise ProtocolError(f"unknown binary packet type {ptype}")
    if isinstance(encoded, bytearray):
        del encoded[:1]
        return ptype, encoded
    return ptype, bytes(encoded[1:])


def _utf16_len(text: str) -> int:
    """Length as JS counts it: characters outside the BMP are two code units."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def encode_payload(packets: list[tuple[int, str | bytes | bytearray | None]],
                   b64: bool = False) -> tuple[bytes, bool]:
    """Packets for one long-poll response: ``(body, is_binary)``.

    Binary framing only when a packet is binary and the client did not ask for ``b64``;
    otherwise the text framing, with binary packets as ``b<type><base64>``.
    """
    if not b64 and any(isinstance(d, (bytes, bytearray)) for _, d in packets):
        parts = []
        for ptype, data in packets:
            if isinstance(data, (bytes, bytearray)):
                flag, raw = 1, encode_packet(ptype, data)
            else:
                flag, raw = 0, encode_packet(ptype, data).encode("utf-8")
            parts.append(bytes([flag, *(ord(c) - 48 for c in str(len(raw))), 255]))
            parts.append(raw)
        return b"".join(parts), True
    if not packets:
        return b"0:", False
    text = "".join(f"{_utf16_len(p)}:{p}" for p in
                   (encode_packet(ptype, data, b64=True) for ptype, data in packets))
    return text.encode("utf-8"), False


def decode_text_payload(text: str, max_packets: int = MAX_PAYLOAD_PACKETS) -> list[tuple]:
    """``<length>:<packet>...`` (lengths in UTF-16 code units) into ``[(type, data)]``."""
    if not text:
        raise ProtocolError("empty payload")
    ascii_only = text.isascii()
    packets = []
    pos, end = 0, len(text)
    while pos < end:
        colon = text.find(":", pos, pos + 11)
        digits = text[pos:colon] if colon >= 0 else ""
        if not digits.isascii() or not digits.isdigit():
            raise ProtocolError("payload: missing or bad length before ':'")
        units = int(digits)
        start = colon + 1
        if ascii_only:
            stop = start + units
        else:  # walk the characters, counting surrogate pairs as two units
            stop, counted = start, 0
            while counted < units and stop < end:
                counted += 2 if ord(text[stop]) > 0xFFFF else 1
                stop += 1
            if counted != units:
                raise ProtocolError("payload: length splits a character or runs past the end")
        if stop > end:
            raise ProtocolError("payload: packet runs past the end")
        if units:  # engine.io-parser skips empty packets ("0:")
            if len(packets) >= max_packets:
                raise ProtocolError(f"payload: more than {max_packets} packets")
            packets.append(decode_packet(text[start:stop]))
        pos = stop
    return packets


def decode_binary_payload(body: bytes, max_packets: int = MAX_PAYLOAD_PACKETS) -> list[tuple]:
    """``<0|1><decimal digit bytes><0xFF><packet>...`` into ``[(type, data)]``.

    A binary packet's data is copied once out of the body; nothing else is.
    """
    if not body:
        raise ProtocolError("empty payload")
    view = memoryview(body)
    packets = []
    pos, end = 0, len(body)
    while pos < end:
        kind = body[pos]
        if kind > 1:
            raise ProtocolError(f"binary payload: bad packet kind {kind}")
        pos += 1
        length, digits = 0, 0
        while True:
            if pos >= end:
                raise ProtocolError("binary payload: truncated length")
            b = body[pos]
            pos += 1
            if b == 255:
                break
            if b > 9 or digits >= 10:
                raise ProtocolError("binary payload: bad length")
            length = length * 10 + b
            digits += 1
        if not digits or not length:
            raise ProtocolError("binary payload: empty packet")
        if pos + length > end:
            raise ProtocolError("binary payload: packet runs past the end")
        if len(packets) >= max_packets:
            raise ProtocolError(f"payload: more than {max_packets} packets")
        if kind == 0:
            try:
                text = str(view[pos:pos + length], "utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("binary payload: text packet is not UTF-8") from None
            packets.append(decode_packet(text))
        else:
            ptype = body[pos]
            if ptype > 6:
                raise ProtocolError(f"unknown binary packet type {ptype}")
            packets.append((ptype, bytes(view[pos + 1:pos + length])))
        pos += length
    return packets


# -- codecs: Socket.IO 4 packets (socketio.packet.Packet, with the limits it lacks) ------------

def decode_sio(text: str) -> Packet:
    """A Socket.IO text packet. Raises ProtocolError, never anything else."""
    if not text or not "0" <= text[0] <= "6":
        raise ProtocolError(f"unknown socket.io packet type {text[:1]!r}")
    try:
        pkt = Packet(encoded_packet=text)
    except Exception as e:  # noqa: BLE001 (json errors, RecursionError on deep nesting, bad ids)
        raise ProtocolError(f"bad socket.io packet: {type(e).__name__}") from None
    if pkt.packet_type in (BINARY_EVENT, BINARY_ACK):
        if not 1 <= pkt.attachment_count <= MAX_ATTACHMENTS:
            raise ProtocolError(f"{pkt.attachment_count} attachments (1-{MAX_ATTACHMENTS} allowed)")
    elif pkt.attachment_count:
        raise ProtocolError("attachments on a packet that is not binary")
    return pkt


def add_attachment(pkt: Packet, data: bytes | bytearray) -> bool:
    """Give ``pkt`` its next attachment; True when it is complete."""
    try:
        return pkt.add_attachment(data)
    except Exception as e:  # noqa: BLE001 (a placeholder pointing nowhere, a bad "num")
        raise ProtocolError(f"bad binary placeholder: {type(e).__name__}") from None


def encode_sio(pkt: Packet) -> list[tuple[int, str | bytes]]:
    """A Socket.IO packet as Engine.IO messages: the text, then any attachments."""
    encoded = pkt.encode()
    if isinstance(encoded, str):
        return [(MESSAGE, encoded)]
    return [(MESSAGE, encoded[0])] + [(MESSAGE, a) for a in encoded[1:]]

