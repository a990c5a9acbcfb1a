"""Pure tests of the protocol module: no sockets, no sleeps."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, ProtocolError, Status


def test_request_round_trip_with_id_and_compression():
    frame = protocol.encode_request("GET", [b"k"], "uid-1", id=42, compression=True)
    req = protocol.decode_request(frame)
    assert req.cmd == "GET" and req.uid == "uid-1" and req.args == [b"k"]
    assert req.id == 42 and req.compression is True


def test_request_without_extensions_has_empty_meta():
    raw = msgpack.unpackb(protocol.encode_request("PING"), raw=False)
    assert raw == {"meta": {}, "uid": None, "cmd": "PING", "args": []}


def test_original_client_str_packed_keys_decode_to_bytes():
    # Python 2's msgpack packed binary keys as str (raw): they must still be bytes.
    frame = msgpack.packb({"meta": {}, "uid": "u", "cmd": "PUT", "args": ["k", "v"]},
                          use_bin_type=False)
    assert protocol.decode_request(frame).args == [b"k", b"v"]


@pytest.mark.parametrize("frame,message", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (msgpack.packb({"args": []}), "no 'cmd'"),
    (msgpack.packb({"cmd": "GET"}), "no 'args'"),
    (msgpack.packb({"cmd": "GET", "args": 3}), "'args' must be an array"),
    (msgpack.packb({"cmd": 5, "args": []}), "'cmd' must be a string"),
    (msgpack.packb({"cmd": "GET", "args": [], "meta": 1}), "'meta' must be a map"),
    (msgpack.packb({"cmd": "GET", "args": [], "uid": 1.5}), "'uid' must be a string"),
    (msgpack.packb({"cmd": "GET", "args": [], "meta": {"id": [1]}}), "meta.id"),
])
def test_malformed_requests_raise_protocol_error_with_request_code(frame, message):
    with pytest.raises(ProtocolError, match=message) as info:
        protocol.decode_request(frame)
    assert info.value.code == ErrorCode.REQUEST


def test_request_size_is_bounded_before_decoding():
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        protocol.decode_request(b"\x90" * 101, max_size=100)


def test_deeply_nested_request_is_refused_not_a_crash():
    frame = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        protocol.decode_request(frame)


def test_reply_round_trip_success_warning_and_failure():
    frames = protocol.encode_reply([b"v"], id=7)
    reply = protocol.decode_reply(frames)
    assert reply.status == Status.SUCCESS and reply.datas == [b"v"] and reply.id == 7
    warn = protocol.decode_reply(protocol.encode_reply([None], status=Status.WARNING))
    assert warn.status == Status.WARNING and warn.datas == [None]
    err = protocol.decode_reply(protocol.encode_error_reply(ErrorCode.KEY, "missing", id="x"))
    assert (err.status, err.err_code, err.err_msg, err.id) == (-1, 1, "missing", "x")


def test_compressed_reply_round_trip():
    datas = [[b"k%d" % i, b"v" * 50] for i in range(100)]
    frames = protocol.encode_reply(datas, compression=True)
    assert len(frames[1]) < len(msgpack.packb({"datas": datas}))
    assert protocol.decode_reply(frames).datas == datas


def test_str_and_bin_values_decode_to_the_same_bytes():
    as_str = [msgpack.packb({"status": 1}), msgpack.packb({"datas": ["é"]}, use_bin_type=False)]
    as_bin = [msgpack.packb({"status": 1}), msgpack.packb({"datas": ["é".encode()]})]
    assert protocol.decode_reply(as_str).datas == protocol.decode_reply(as_bin).datas == [
        "é".encode()]


@pytest.mark.parametrize("frames,message", [
    ([b"x"], "expected 2"),
    ([msgpack.packb([1]), b""], "not a map"),
    ([msgpack.packb({"status": 9}), msgpack.packb({"datas": 1})], "unknown status"),
    ([msgpack.packb({"status": 1}), b"\xc1"], "not valid msgpack"),
    ([msgpack.packb({"status": 1}), msgpack.packb(3)], "content is not a map"),
    ([msgpack.packb({"status": 1, "compression": True}), b"junk"], "lz4"),
])
def test_malformed_replies_raise_protocol_error(frames, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_reply(frames)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=3))
def test_reply_decoder_fuzz_random_frames_raise_only_protocol_error(frames):
    try:
        protocol.decode_reply(frames)
    except ProtocolError:
        pass


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["status", "err_code", "err_msg", "compression",
                                               "id"]), _msgpack_values),
       content=_msgpack_values)
def test_reply_decoder_fuzz_random_msgpack_raises_only_protocol_error(header, content):
    frames = [msgpack.packb(header), msgpack.packb(content)]
    try:
        reply = protocol.decode_reply(frames)
    except ProtocolError:
        return
    assert reply.status in (1, -1, -2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_request_decoder_fuzz_random_bytes_raise_only_protocol_error(data):
    try:
        req = protocol.decode_request(data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.REQUEST
        return
    assert isinstance(req.cmd, str) and isinstance(req.args, list)
