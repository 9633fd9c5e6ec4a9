"""Bad input gets a reason; the connection, the daemon and the counters survive it."""
from __future__ import annotations

from tests.helpers import make_jpeg, wait_for


def test_bad_frames_get_reasons_and_the_connection_survives(daemons, clients):
    d = daemons("--max-frame-size", "100k", workers=1)
    sio = clients(d.url, "gina")
    call = lambda *args: sio.call("frame", args, timeout=10)  # noqa: E731
    assert call({}, b"\xff\xd8 this is not a jpeg")["accepted"] is True  # ingest never decodes
    assert call({}, "a text, not bytes") == {
        "accepted": False, "seq": 2, "reason": "not bytes: the frame arrived as str"}
    oversize = call({}, b"\xff" * (100 * 1024 + 1))
    assert oversize["accepted"] is False and oversize["reason"] == "too large"
    assert call()["reason"].startswith("malformed")           # missing arguments
    assert call("meta", make_jpeg())["reason"].startswith("malformed")
    assert call({}, b"")["reason"] == "empty frame"
    sio.emit("no-such-event", (1, 2))
    assert call({}, make_jpeg())["accepted"] is True
    assert sio.connected

    h = wait_for(lambda: (h := d.health())["clients"]["gina"]["processed"] == 1 and
                 h["clients"]["gina"]["errors"] == 1 and h, 10,
                 what="one processed frame and one decode error")
    row = h["clients"]["gina"]
    assert row["received"] == 7 and row["refused"] == 5 and row["dispatched"] == 2
    assert row["refused_by"]["too large"] == 1
    assert "is a truncated JPEG" in d.output()
    assert "ignoring unknown event 'no-such-event'" in d.output()
    # a second client never noticed
    other = clients(d.url, "hank")
    assert other.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True


def test_a_frame_far_over_the_transport_limit_costs_only_its_connection(daemons, clients):
    d = daemons("--max-frame-size", "100k", workers=1)
    bystander = clients(d.url, "ivan")
    sio = clients(d.url, "judy")
    sio.emit("frame", ({}, b"\0" * (1024 * 1024)))
    wait_for(lambda: not sio.connected, 10, what="the oversize connection to close")
    assert bystander.call("frame", ({}, make_jpeg()), timeout=10)["accepted"] is True
    assert d.proc.poll() is None
