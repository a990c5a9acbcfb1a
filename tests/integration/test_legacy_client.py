"""The original py-elevator client served as it is: its request shapes, packed as
msgpack-python 0.3 packs (``use_bin_type=False``: every string a msgpack str), and every
reply decodable by msgpack-python before 0.4, which knows no bin type."""
from __future__ import annotations

from typing import Any, List

import msgpack
import pytest
import zmq

from pyelevator_pool.protocol import ErrorCode, Status

BIN_TYPES = {0xc4, 0xc5, 0xc6}


def _walk_types(data: bytes) -> List[int]:
    """The msgpack type byte of every object in ``data`` (so bin can be spotted exactly)."""
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
    unpacker.feed(data)
    found: List[int] = []

    def one(buf: bytes, pos: int) -> int:
        b = buf[pos]
        found.append(b)
        if b <= 0x7f or b >= 0xe0 or b in (0xc0, 0xc2, 0xc3):
            return pos + 1
        if 0xa0 <= b <= 0xbf:
            return pos + 1 + (b & 0x1f)
        if 0x90 <= b <= 0x9f or 0x80 <= b <= 0x8f:
            n = b & 0x0f
            pos += 1
            for _ in range(n * (2 if b < 0x90 else 1)):
                pos = one(buf, pos)
            return pos
        sizes = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8,
                 0xca: 4, 0xcb: 8}
        if b in sizes:
            return pos + 1 + sizes[b]
        lengths = {0xd9: 1, 0xda: 2, 0xdb: 4, 0xc4: 1, 0xc5: 2, 0xc6: 4}
        if b in lengths:
            w = lengths[b]
            n = int.from_bytes(buf[pos + 1:pos + 1 + w], "big")
            return pos + 1 + w + n
        containers = {0xdc: (2, 1), 0xdd: (4, 1), 0xde: (2, 2), 0xdf: (4, 2)}
        if b in containers:
            w, k = containers[b]
            n = int.from_bytes(buf[pos + 1:pos + 1 + w], "big")
            pos += 1 + w
            for _ in range(n * k):
                pos = one(buf, pos)
            return pos
        raise AssertionError(f"type byte {b:#x} not expected in a reply")

    end = one(data, 0)
    assert end == len(data)
    return found


class LegacyClient:
    """Packs and decodes as the original client on msgpack-python 0.2/0.3 did."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def call(self, cmd: str, args: Any, uid: Any = None) -> tuple:
        self.sock.send(msgpack.packb({"meta": {}, "uid": uid, "cmd": cmd, "args": args},
                                     use_bin_type=False))
        assert self.sock.poll(10_000), f"no reply to {cmd}"
        header, content = self.sock.recv_multipart()
        for frame in (header, content):
            assert not BIN_TYPES & set(_walk_types(frame)), f"{cmd}: a bin in {frame!r:.200}"
        head = msgpack.unpackb(header, raw=True)
        return head, msgpack.unpackb(content, raw=True)[b"datas"]

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def legacy(server):
    c = LegacyClient(server.endpoint)
    yield c
    c.close()


def ok(head: dict) -> bool:
    return head[b"status"] in (Status.SUCCESS, Status.WARNING)


def test_every_request_shape_of_the_original_client_succeeds_and_replies_are_str(legacy):
    head, datas = legacy.call("DBCONNECT", ["default"])
    assert ok(head)
    uid = datas[0].decode()
    head, names = legacy.call("DBLIST", {}, uid)  # the original sends {} here
    assert ok(head) and b"default" in names
    head, _ = legacy.call("DBCREATE", ["legacy_db", {}], uid)
    assert ok(head)
    head, datas = legacy.call("DBCONNECT", ["legacy_db"])
    luid = datas[0].decode()
    assert ok(legacy.call("PUT", ["a", "1"], luid)[0])
    assert ok(legacy.call("PUT", ["b", "2"], luid)[0])
    assert legacy.call("GET", ["a"], luid) [1] == [b"1"]
    head, values = legacy.call("MGET", [["a", "zz", "b"]], luid)
    assert head[b"status"] == Status.WARNING and values == [b"1", None, b"2"]
    assert legacy.call("EXISTS", ["a"], luid)[1] in ([True], True)
    assert legacy.call("RANGE", ["a", "b", True, True, None], luid)[1] == [[b"a", b"1"],
                                                                         [b"b", b"2"]]
    assert legacy.call("SLICE", ["a", 1, True, False], luid)[1] == [b"a"]
    assert ok(legacy.call("BATCH", [[[1, "c", "3"], [0, "a"]]], luid)[0])
    assert legacy.call("GET", ["c"], luid)[1] == [b"3"]
    assert ok(legacy.call("DELETE", ["c"], luid)[0])
    assert ok(legacy.call("DBREPAIR", {}, luid)[0])  # the original sends {} here too
    assert ok(legacy.call("DBUMOUNT", ["legacy_db"])[0])
    assert ok(legacy.call("DBMOUNT", ["legacy_db"])[0])
    assert legacy.call("PING", [])[1] == [b"PONG"]
    assert ok(legacy.call("DBDROP", ["legacy_db"], uid)[0])


def test_a_missing_key_is_the_original_key_error(legacy):
    uid = legacy.call("DBCONNECT", ["default"])[1][0].decode()
    head, _ = legacy.call("GET", ["legacy-missing"], uid)
    assert head[b"status"] == Status.FAILURE and head[b"err_code"] == ErrorCode.KEY


def test_a_plain_python3_client_gets_str_where_the_original_server_sent_str(legacy, server):
    uid = legacy.call("DBCONNECT", ["default"])[1][0].decode()
    legacy.call("PUT", ["py3", "value"], uid)
    legacy.sock.send(msgpack.packb({"meta": {}, "uid": uid, "cmd": "GET", "args": ["py3"]}))
    assert legacy.sock.poll(10_000)
    _, content = legacy.sock.recv_multipart()
    assert msgpack.unpackb(content) == {"datas": ["value"]}  # str, as msgpack >= 1.0 decodes


def test_this_projects_requests_keep_bin(server):
    from pyelevator_pool import Elevator
    from pyelevator_pool import protocol
    with Elevator(endpoint=server.endpoint) as e:
        e.Put(b"binary", b"\xff\x00")
        assert e.Get(b"binary") == b"\xff\x00"
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    try:
        uid = None
        sock.send(protocol.encode_request(protocol.DBCONNECT, ["default"], id=1))
        assert sock.poll(10_000)
        uid = protocol.decode_reply(sock.recv_multipart()).datas[0].decode()
        sock.send(protocol.encode_request(protocol.GET, [b"binary"], uid, id=2))
        assert sock.poll(10_000)
        _, content = sock.recv_multipart()
        assert 0xc4 in _walk_types(content)
    finally:
        sock.close(0)
