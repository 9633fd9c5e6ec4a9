"""Malformed socket.io and Engine.IO input, both protocol revisions, websocket and long polling,
against one daemon while a bystander streams: every input is a protocol error of its own
connection or is ignored; nothing escapes a handler, nobody else is disconnected, and ingest's
memory stays bounded."""
from __future__ import annotations

import json

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Daemon, make_jpeg, wait_for
from tests.helpers.rawclient import CLOSED, TIMEOUT, RawPoll, RawWS
from tests.helpers.streaming import Streamer

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
POLL_FUZZ = settings(FUZZ, max_examples=50)
HTTP_FUZZ = settings(FUZZ, max_examples=50)
MAX_FRAME = 64 * 1024   # --max-frame-size: the transports take up to 1.5x + 64k
JPEG = make_jpeg(64, 48)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One daemon for the module, and a bystander streaming at 10 Hz throughout."""
    d = Daemon(tmp_path_factory.mktemp("fuzz"), "--max-frame-size", str(MAX_FRAME),
               "--max-connections-per-ip", "1000", "--max-fps", "1000",
               "--ping-interval", "3", "--ping-timeout", "5", workers=1)
    bystander = None
    try:
        d.wait_ready()
        bystander = Streamer(d.url, "bystander", fps=10).start()
        yield d, bystander
    finally:
        if bystander:
            bystander.stop()
        leftovers = d.children()
        d.stop()
        for p in leftovers:
            if p.is_running():
                p.kill()


def unharmed(d: Daemon, bystander: Streamer) -> None:
    """The invariants after a fuzz run."""
    assert d.proc.poll() is None, d.output()[-3000:]
    out = d.output()
    assert "Traceback" not in out, out[out.index("Traceback") - 500:][:4000]
    assert bystander.disconnects == 0 and bystander.errors == 0
    accepted = bystander.accepted
    wait_for(lambda: bystander.accepted > accepted + 3, 10, what="the bystander to go on")
    assert all(a["accepted"] for a in bystander.acks), \
        [a for a in bystander.acks if not a["accepted"]][:3]
    h = d.health()
    assert h["ingest"]["restarts"] == 0 and h["workers"]["restarts"] == 0
    assert h["clients"]["bystander"]["connected"] == 1
    ingest = d.child("ingest")
    assert ingest.memory_info().rss < 150 * 2 ** 20, ingest.memory_info()
    # and a newcomer is served
    ws = RawWS(d.port, 4)
    try:
        assert ws.connect({"username": "newcomer"}).startswith("40{")
        assert ws.probe()[0]["accepted"] is False
    finally:
        ws.close()


# -- strategies -------------------------------------------------------------------------------

EVENTS = ["frame", "receiveImage", "authenticate", "message", "connect", "disconnect",
          "connect_error", "onAuth", "result", "*", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
placeholders = st.builds(lambda n: {"_placeholder": True, "num": n},
                         st.one_of(st.integers(-2, 8), st.text(max_size=3), st.none()))
event_args = st.lists(st.one_of(values, placeholders, st.just({})), max_size=6)
events = st.builds(lambda name, args: json.dumps([name, *args]),
                   st.one_of(st.sampled_from(EVENTS), st.text(max_size=10)), event_args)
bodies = st.one_of(
    events, events, values.map(json.dumps), st.text(max_size=40),
    st.sampled_from(['["frame"', "[", '{"', '["frame",{},', "[]", "[1]", '"x"', "null",
                     "[" * 2000 + "]" * 2000, '["frame",' * 300, "\udcff"]))


@st.composite
def sio_packets(draw) -> str:
    """A Socket.IO text packet, well-formed or not: type, attachment count, namespace, ack
    id, data (<type>[<n>-][<nsp>,][<id>][<json>])."""
    kind = draw(st.one_of(st.sampled_from("0123456"), st.sampled_from("0123456"),
                          st.text(max_size=2)))
    count = draw(st.one_of(st.just(""), st.integers(0, 10 ** 12).map(lambda n: f"{n}-"),
                           st.sampled_from(["-", "-1-", "x-", "9" * 30 + "-"])))
    nsp = draw(st.sampled_from(["", "", "/,", "/admin,", "/x", ",", "/" * 50 + ","]))
    ack = draw(st.one_of(st.just(""), st.integers(0, 10 ** 25).map(str), st.just("-1")))
    return kind + count + nsp + ack + draw(bodies)


def eio_messages(eio: int):
    """One websocket message: mostly a Socket.IO packet in an Engine.IO message, else any
    Engine.IO text, binary where text is expected, or a frame larger than allowed."""
    sized = st.sampled_from([10, 1000, MAX_FRAME + 1, 3 * MAX_FRAME]).map(lambda n: b"\x04" * n)
    return st.one_of(
        sio_packets().map(lambda p: "4" + p),
        sio_packets().map(lambda p: "4" + p),
        events.map(lambda e: "42" + e),   # well-formed events: unknown, wrong arguments
        events.map(lambda e: "42" + e),
        st.text(max_size=30),
        st.sampled_from(["", "1", "2", "3", "5", "6", "2probe", "9", "b4AAAA", "b4!!", "4",
                         "40", "41", "44", "40{}", '40{"username":1}', "4" * 5000]),
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: bytes([4]) + b),
        sized)


@st.composite
def binary_events(draw, eio: int) -> list:
    """A binary event announcing some attachments, followed by some (maybe other) number."""
    announced = draw(st.one_of(st.integers(0, 6), st.integers(7, 10 ** 9)))
    nums = draw(st.lists(st.integers(-1, 7), min_size=0, max_size=4))
    event = draw(st.sampled_from(["frame", "receiveImage", "authenticate", "x"]))
    args = [{}] + [{"_placeholder": True, "num": n} for n in nums]
    sent = draw(st.integers(0, 5))
    prefix = b"\x04" if eio == 3 else b""
    return [f"45{announced}-" + draw(st.sampled_from(["", "17"])) + json.dumps([event, *args])] \
        + [prefix + JPEG[:draw(st.integers(0, len(JPEG)))] for _ in range(sent)]


def fuzz_inputs(eio: int):
    return st.one_of(st.lists(eio_messages(eio), min_size=1, max_size=3), binary_events(eio))


def may_be_silent(messages: list) -> bool:
    """Inputs after which an unanswered probe is correct: the namespace was left (41), or a
    binary packet (45/46) still waits for attachments and takes the probe as one."""
    return any(isinstance(m, str) and m[:2] in ("41", "45", "46") for m in messages)


# -- websocket --------------------------------------------------------------------------------

def ws_case(d: Daemon, eio: int, messages: list, login: bool, outcomes: dict) -> None:
    ws = RawWS(d.port, eio)
    try:
        joined = ws.connect({"username": "fuzz"} if login and eio == 4 else None)
        assert isinstance(joined, str) and joined.startswith("40"), joined
        if login and eio == 3:
            assert ws.login("fuzz3", "") is True
        for m in messages:
            if not ws.send(m):
                break
        answer = ws.probe(timeout=2.0)
        if answer == CLOSED:
            outcomes["closed"] += 1
        elif answer == TIMEOUT:
            assert may_be_silent(messages), f"the server neither answered nor closed: {messages}"
            outcomes["silent"] += 1
        else:
            assert isinstance(answer, list) and answer and answer[0]["accepted"] is False, answer
            outcomes["answered"] += 1
    finally:
        ws.close()


@pytest.mark.parametrize("eio", [4, 3])
def test_fuzz_websocket(target, eio):
    """Both revisions on a raw websocket: each input is refused, ignored or closes only its
    own connection."""
    d, bystander = target
    outcomes = {"closed": 0, "answered": 0, "silent": 0}

    @FUZZ
    @given(messages=fuzz_inputs(eio), login=st.booleans())
    def case(messages, login):
        ws_case(d, eio, messages, login, outcomes)
    case()
    unharmed(d, bystander)
    # the fuzzing reached both ends: inputs that closed their connection and inputs ignored
    assert outcomes["closed"] >= 10 and outcomes["answered"] >= 5, outcomes


# -- long polling -----------------------------------------------------------------------------

@st.composite
def poll_bodies(draw, eio: int) -> tuple[bytes, bool]:
    """A POST body: a payload of (malformed) packets, framed right or wrong, text or binary."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        packets = draw(st.lists(st.one_of(sio_packets().map(lambda p: "4" + p),
                                          st.text(max_size=12)), min_size=1, max_size=4))
        if eio == 4:
            return "\x1e".join(packets).encode("utf-8", "surrogatepass"), False
        lengths = draw(st.sampled_from(["right", "wrong"]))
        text = "".join(f"{len(p) + (lengths == 'wrong') * draw(st.integers(-3, 3))}:{p}"
                       for p in packets)
        return text.encode("utf-8", "surrogatepass"), False
    if kind == 3:
        return draw(st.binary(max_size=200)), True
    if kind == 4:
        return draw(st.text(max_size=60)).encode("utf-8", "surrogatepass"), False
    size = draw(st.sampled_from([MAX_FRAME, 4 * MAX_FRAME]))
    return b"4" * size, draw(st.booleans())


def poll_case(d: Daemon, eio: int, posts: list, outcomes: dict) -> None:
    session = RawPoll(d.url, eio)
    try:
        if eio == 4:
            assert session.post(session.packets('40{"username":"pfuzz"}')) == 200
            assert session.wait_for(b"40{", 5) == "found"
        statuses = [session.post(body, binary) for body, binary in posts]
        # 0: the connection was reset, for a body beyond the transport's limit only
        assert set(statuses) <= {200, 400, 413} or (
            0 in statuses and max(len(b) for b, _ in posts) > 1.5 * MAX_FRAME), statuses
        status = session.post(session.packets(f'42{4242}["frame"]'))
        if status != 200:
            outcomes["closed"] += 1
            return
        found = session.wait_for(b"434242[", 2.5)
        if found == TIMEOUT:
            assert any(s != 200 for s in statuses) or any(b"45" in b or b"46" in b or b"41"
                                                          in b for b, _ in posts), posts
        outcomes["answered" if found == "found" else found] += 1
    finally:
        session.close()


@pytest.mark.parametrize("eio", [4, 3])
def test_fuzz_long_polling(target, eio):
    """Both revisions over long polling: malformed payloads get 400 (or are ignored); the
    daemon and the bystander never notice."""
    d, bystander = target
    outcomes = {"closed": 0, "answered": 0, "timeout": 0}

    @POLL_FUZZ
    @given(posts=st.lists(poll_bodies(eio), min_size=1, max_size=3))
    def case(posts):
        poll_case(d, eio, posts, outcomes)
    case()
    unharmed(d, bystander)
    assert outcomes["closed"] >= 5 and outcomes["answered"] >= 3, outcomes


# -- HTTP around the protocol -----------------------------------------------------------------

@HTTP_FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "DELETE"]),
       query=st.dictionaries(st.sampled_from(["EIO", "transport", "sid", "b64", "j", "t"]),
                             st.one_of(st.sampled_from(["3", "4", "5", "polling", "websocket",
                                                        "", "x" * 300]), st.text(max_size=8)),
                             max_size=5),
       body=st.binary(max_size=100))
def test_fuzz_handshake_requests(target, method, query, body):
    """Any query string on /socket.io/: a status below 500 and a well-formed answer."""
    import requests
    d, _ = target
    r = requests.request(method, d.url + "/socket.io/", params=query, data=body, timeout=10)
    assert r.status_code < 500, (r.status_code, r.text[:200])


def test_after_everything(target):
    """After all of the above: the daemon, the bystander and ingest's memory are fine."""
    d, bystander = target
    unharmed(d, bystander)
    row = d.health()["clients"]["bystander"]
    assert row["refused"] == 0 and row["processed"] > 0
    assert psutil.Process(d.proc.pid).is_running()
