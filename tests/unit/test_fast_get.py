"""The server's GET fast path: for the GETs it takes, the very bytes the general path
(decode, dispatch, encode) answers; everything else it declines, to the general path.
A Store over real LevelDB files in a temporary dir; no socket."""
from __future__ import annotations

import time

import msgpack
import pytest

from pyelevator_pool import protocol
from pyelevator_pool.server.handlers import Dispatcher
from pyelevator_pool.server.store import Store


@pytest.fixture
def dispatcher(tmp_path):
    store = Store(str(tmp_path / "data"))
    store.load()
    store.create("fast", {})
    uid = store.connect("fast")
    d = Dispatcher(store)
    assert d.handle(protocol.encode_request("PUT", [b"k", b"v" * 40], uid))[0]
    yield d, uid
    store.close_all()


def _general(d: Dispatcher, frame: bytes) -> list:
    return d.run(d.decode(frame))


@pytest.mark.parametrize("rid", [1, 2**40, -3])
def test_a_plain_get_is_answered_byte_for_byte_as_the_general_path_does(dispatcher, rid):
    d, uid = dispatcher
    for timeout_ms in (None, 5000):
        frame = protocol.encode_request("GET", [b"k"], uid, id=rid, timeout_ms=timeout_ms)
        fast = d.fast_get(frame, time.monotonic())
        assert fast is not None
        assert fast == _general(d, frame)
        assert protocol.decode_reply(fast).datas == [b"v" * 40]


def test_a_key_packed_as_msgpack_str_with_an_id_is_answered_as_the_general_path_does(dispatcher):
    d, uid = dispatcher
    frame = msgpack.packb({"meta": {"id": 7}, "uid": uid, "cmd": "GET", "args": ["k"]})
    assert d.fast_get(frame, time.monotonic()) == _general(d, frame)


def test_whatever_the_fast_path_does_not_fully_understand_goes_to_the_general_path(dispatcher):
    d, uid = dispatcher
    now = time.monotonic()
    declined = {
        "a missing key (an error reply)": protocol.encode_request("GET", [b"nope"], uid, id=1),
        "no id (an original client: str replies)": protocol.encode_request("GET", [b"k"], uid),
        "a str id": protocol.encode_request("GET", [b"k"], uid, id="x"),
        "compression": protocol.encode_request("GET", [b"k"], uid, id=1, compression=True),
        "another command": protocol.encode_request("EXISTS", [b"k"], uid, id=1),
        "two args": protocol.encode_request("GET", [b"k", b"j"], uid, id=1),
        "an unknown uid": protocol.encode_request("GET", [b"k"], "0" * 32, id=1),
        "no uid": protocol.encode_request("GET", [b"k"], None, id=1),
        "an expired deadline": protocol.encode_request("GET", [b"k"], uid, id=1, timeout_ms=0),
        "not msgpack": b"\xc1\xc1",
        "not a map": msgpack.packb([1, 2]),
        "an unknown meta field": msgpack.packb(
            {"meta": {"id": 1, "stream": 5}, "uid": uid, "cmd": "GET", "args": [b"k"]}),
        "a bool timeout": msgpack.packb(
            {"meta": {"id": 1, "timeout": True}, "uid": uid, "cmd": "GET", "args": [b"k"]}),
    }
    for why, frame in declined.items():
        # received a second ago: a zero timeout has passed, a 5 s one would not have
        assert d.fast_get(frame, now - 1) is None, why
