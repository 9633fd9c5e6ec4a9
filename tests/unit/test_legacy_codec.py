"""Pure codec tests for the legacy revision (Engine.IO 3 payloads, Socket.IO 4 packets), with a
cross-check against the engine.io-parser 2.x that socket.io-client 2.x itself uses."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG
from socketio.packet import BINARY_EVENT, CONNECT, EVENT, Packet

from camstream.ingest.eio3.codec import (
    MAX_ATTACHMENTS,
    ProtocolError,
    add_attachment,
    decode_binary_payload,
    decode_packet,
    decode_sio,
    decode_text_payload,
    encode_packet,
    encode_payload,
    encode_sio,
)

JS = Path(__file__).resolve().parent.parent / "js"
JPEGISH = bytes([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10]) + bytes(range(256)) + b"\xff\xd9"


# -- packets -------------------------------------------------------------------------------------

def test_encode_packet_forms():
    assert encode_packet(PONG) == "3"
    assert encode_packet(PONG, "probe") == "3probe"
    assert encode_packet(MESSAGE, "40") == "440"
    assert encode_packet(MESSAGE, b"\x01\x02") == b"\x04\x01\x02"
    assert encode_packet(MESSAGE, b"\x01\x02", b64=True) == "b4AQI="


@pytest.mark.parametrize("encoded, expected", [
    ("2", (PING, "")),
    ("2probe", (PING, "probe")),
    ("5", (5, "")),
    ("6", (NOOP, "")),
    ("1", (CLOSE, "")),
    ('451-["receiveImage",{"_placeholder":true,"num":0}]',
     (MESSAGE, '51-["receiveImage",{"_placeholder":true,"num":0}]')),
    ("4é😀", (MESSAGE, "é😀")),
    ("b4AQID", (MESSAGE, b"\x01\x02\x03")),
    ("b4", (MESSAGE, b"")),
    (b"\x04\x01\x02", (MESSAGE, b"\x01\x02")),
    (b"\x04", (MESSAGE, b"")),
])
def test_decode_packet(encoded, expected):
    assert decode_packet(encoded) == expected


def test_decode_packet_strips_the_type_byte_of_a_bytearray_in_place():
    frame = bytearray(b"\x04" + JPEGISH)
    ptype, data = decode_packet(frame)
    assert ptype == MESSAGE and data is frame and data == JPEGISH


@pytest.mark.parametrize("bad", ["", "7", "x", "b", "b9AA==", "b4!!!!", "b4AQI", b"", b"\x07ab",
                                 bytearray(b"\xff")])
def test_decode_packet_refuses(bad):
    with pytest.raises(ProtocolError):
        decode_packet(bad)


# -- text payloads -------------------------------------------------------------------------------

def test_text_payload_the_handshake_sample():
    open_ = '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,' \
            '"pingTimeout":5000}'
    body, binary = encode_payload([(OPEN, open_[1:]), (MESSAGE, "0")])
    assert not binary
    assert body == f"{len(open_)}:{open_}2:40".encode()
    assert decode_text_payload(body.decode()) == [(OPEN, open_[1:]), (MESSAGE, "0")]


def test_text_payload_counts_utf16_units():
    # "é" is one unit (two UTF-8 bytes), "😀" two units (one Python character)
    body, _ = encode_payload([(MESSAGE, '2["x","é😀"]')])
    assert body.decode() == '13:42["x","é😀"]'
    assert decode_text_payload('13:42["x","é😀"]2:40') == [(MESSAGE, '2["x","é😀"]'),
                                                            (MESSAGE, "0")]


def test_text_payload_binary_goes_as_b64_when_asked():
    body, binary = encode_payload([(MESSAGE, '51-["a",{"_placeholder":true,"num":0}]'),
                                   (MESSAGE, b"\x00\xff")], b64=True)
    assert not binary
    assert body.endswith(b"6:b4AP8=")
    assert decode_text_payload(body.decode())[1] == (MESSAGE, b"\x00\xff")


def test_text_payload_skips_empty_packets_and_encodes_nothing_as_0():
    assert decode_text_payload("0:1:2") == [(PING, "")]
    assert encode_payload([]) == (b"0:", False)


@pytest.mark.parametrize("bad", [
    "", "2", ":2", "a:2", "-1:2", "1:", "3:40", "2:4😀", "1:21:", "1:9", "01234567890:2",
])
def test_text_payload_refuses(bad):
    with pytest.raises(ProtocolError):
        decode_text_payload(bad)


def test_text_payload_packet_limit():
    assert len(decode_text_payload("1:2" * 4, max_packets=4)) == 4
    with pytest.raises(ProtocolError):
        decode_text_payload("1:2" * 5, max_packets=4)


# -- binary payloads -----------------------------------------------------------------------------

def test_binary_payload_layout():
    placeholder = '51-["receiveImage",{"_placeholder":true,"num":0}]'
    body, binary = encode_payload([(MESSAGE, placeholder), (MESSAGE, JPEGISH)])
    assert binary
    text = ("4" + placeholder).encode()
    n = len(JPEGISH) + 1
    expected = (bytes([0, *map(int, str(len(text))), 255]) + text
                + bytes([1, *map(int, str(n)), 255]) + b"\x04" + JPEGISH)
    assert body == expected
    assert decode_binary_payload(body) == [(MESSAGE, placeholder), (MESSAGE, JPEGISH)]


def test_binary_payload_text_is_utf8_counted_in_bytes():
    body, _ = encode_payload([(MESSAGE, "2é"), (MESSAGE, b"\x01")])
    assert body[:4] == bytes([0, 4, 255, ord("4")])  # "42é" is 4 UTF-8 bytes
    assert decode_binary_payload(body) == [(MESSAGE, "2é"), (MESSAGE, b"\x01")]


def test_binary_payload_large_length_and_data_full_of_0xff():
    data = b"\xff" * 123456
    body, _ = encode_payload([(MESSAGE, data)])
    assert body[:9] == bytes([1, 1, 2, 3, 4, 5, 7, 255, 4])
    assert decode_binary_payload(body) == [(MESSAGE, data)]


@pytest.mark.parametrize("bad", [
    b"", b"\x02\x01\xff2", b"\x00\x01", b"\x00\x01\x0a\xff2", b"\x00\xff", b"\x00\x00\xff",
    b"\x00\x02\xff2", b"\x01\x02\xff\x09a", b"\x00\x02\xff4\xc3", b"\x00" + b"\x01" * 11 + b"\xff",
    b"\x00\x01\xff2\x00",
])
def test_binary_payload_refuses(bad):
    with pytest.raises(ProtocolError):
        decode_binary_payload(bad)


# -- socket.io packets ---------------------------------------------------------------------------

def test_sio_binary_event_with_its_attachment():
    pkt = decode_sio('51-["receiveImage",{"_placeholder":true,"num":0}]')
    assert pkt.packet_type == BINARY_EVENT and pkt.attachment_count == 1
    jpeg = bytearray(JPEGISH)
    assert add_attachment(pkt, jpeg)
    assert pkt.data == ["receiveImage", jpeg] and pkt.data[1] is jpeg  # not copied


def test_sio_event_with_ack_id_and_namespace():
    pkt = decode_sio('2/cam,12["frame",{"n":1}]')
    assert (pkt.packet_type, pkt.namespace, pkt.id, pkt.data) == (EVENT, "/cam", 12,
                                                                   ["frame", {"n": 1}])


def test_sio_encodings_the_server_sends():
    assert encode_sio(Packet(CONNECT)) == [(MESSAGE, "0")]
    assert encode_sio(Packet(EVENT, data=["onAuthentication", True])) == [
        (MESSAGE, '2["onAuthentication",true]')]
    assert encode_sio(Packet(EVENT, data=["x", b"\x01"])) == [
        (MESSAGE, '51-["x",{"_placeholder":true,"num":0}]'), (MESSAGE, b"\x01")]


@pytest.mark.parametrize("bad", [
    "", "7", "x", "2[", '2["a"', "5-[\"a\"]", f'5{MAX_ATTACHMENTS + 1}-["a"]', '50-["a"]',
    '21-["a"]'.replace("1-", "1-1-"), "2" + "[" * 100000 + "]" * 100000,
    '2' + '1' * 101 + '["a"]',
])
def test_sio_refuses(bad):
    with pytest.raises(ProtocolError):
        decode_sio(bad)


@pytest.mark.parametrize("placeholder", ['{"_placeholder":true,"num":3}',
                                         '{"_placeholder":true,"num":"a"}',
                                         '{"_placeholder":true,"num":[0]}'])
def test_sio_bad_placeholders(placeholder):
    pkt = decode_sio(f'51-["receiveImage",{placeholder}]')
    with pytest.raises(ProtocolError):
        add_attachment(pkt, b"\x01")


# -- against the real engine.io-parser 2.x (socket.io-client 2.x's own) ------------------------

NODE_CODEC = r"""
const parser = require(process.argv[1] + "/node_modules/engine.io-parser");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = {};
// encode what Python gave, binary where marked
const packets = input.packets.map(([type, data, isBin]) => ({
  type: ["open", "close", "ping", "pong", "message", "upgrade", "noop"][type],
  data: isBin ? Buffer.from(data, "base64") : data === null ? undefined : data }));
parser.encodePayload(packets, input.supportsBinary, (enc) => {
  out.encoded = Buffer.isBuffer(enc) ? {binary: enc.toString("base64")} : {text: enc};
});
// decode what Python encoded
const py = input.python.binary !== undefined ? Buffer.from(input.python.binary, "base64")
                                             : input.python.text;
out.decoded = [];
parser.decodePayload(py, (p) => {
  if (p.data === undefined) out.decoded.push([p.type]);
  else out.decoded.push([p.type, Buffer.isBuffer(p.data) ? {b: p.data.toString("base64")} : p.data]);
});
process.stdout.write(JSON.stringify(out));
"""

CASES = {
    "text": [(OPEN, '{"sid":"abc"}'), (MESSAGE, "0"), (MESSAGE, '2["x","é😀"]')],
    "binary": [(MESSAGE, '51-["receiveImage",{"_placeholder":true,"num":0}]'),
               (MESSAGE, JPEGISH * 50), (PONG, None)],
    "b64": [(MESSAGE, '51-["receiveImage",{"_placeholder":true,"num":0}]'), (MESSAGE, JPEGISH)],
}


@pytest.mark.parametrize("case", CASES)
def test_payloads_agree_with_engine_io_parser_2(case):
    packets = CASES[case]
    b64 = case == "b64"
    body, binary = encode_payload(packets, b64=b64)
    request = {
        "packets": [[t, base64.b64encode(d).decode() if isinstance(d, bytes) else d,
                     isinstance(d, bytes)] for t, d in packets],
        "supportsBinary": not b64,
        "python": {"binary": base64.b64encode(body).decode()} if binary
        else {"text": body.decode()},
    }
    out = json.loads(subprocess.run(["node", "-e", NODE_CODEC, str(JS)],
                                    input=json.dumps(request), capture_output=True, text=True,
                                    check=True, timeout=30).stdout)
    names = ["open", "close", "ping", "pong", "message", "upgrade", "noop"]
    # JS decodes what Python encoded
    assert out["decoded"] == [[names[t], {"b": base64.b64encode(d).decode()}
                               if isinstance(d, bytes) else d] if d is not None else [names[t]]
                              for t, d in packets]
    # Python decodes what JS encoded, to the same packets, and the bytes match
    enc = out["encoded"]
    if "binary" in enc:
        js_body = base64.b64decode(enc["binary"])
        assert decode_binary_payload(js_body) == [(t, "" if d is None else d) for t, d in packets]
    else:
        js_body = enc["text"].encode()
        assert decode_text_payload(enc["text"]) == [(t, "" if d is None else d)
                                                    for t, d in packets]
    assert js_body == body
