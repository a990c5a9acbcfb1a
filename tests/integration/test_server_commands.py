"""Integration: every command of docs/protocol.rst against a real elevator-server, with result shapes.

One server for the module; each test works in its own keys (prefixed by the test name)
or its own database.
"""
from __future__ import annotations

import msgpack
import pytest

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, Status

pytestmark = pytest.mark.timeout(60)


def ok(reply):
    assert reply.status == Status.SUCCESS, reply
    return reply.datas


def failed(reply, code):
    assert reply.status == Status.FAILURE, reply
    assert reply.err_code == code, reply
    return reply.err_msg


# ------------------------------------------------------------------ basics

def test_ping_answers_pong(client):
    assert ok(client.call("PING")) == [b"PONG"]


def test_dbconnect_default_returns_uid_in_a_list(client):
    datas = ok(client.call("DBCONNECT", [b"default"]))
    assert isinstance(datas, list) and len(datas) == 1 and len(datas[0]) == 32


def test_put_returns_nil_and_get_returns_value_in_a_list(client, uid):
    assert ok(client.call("PUT", [b"pg:k", b"v"], uid)) is None
    assert ok(client.call("GET", [b"pg:k"], uid)) == [b"v"]


def test_get_missing_key_is_key_error(client, uid):
    failed(client.call("GET", [b"pg:missing"], uid), ErrorCode.KEY)


def test_delete_returns_nil_and_removes(client, uid):
    ok(client.call("PUT", [b"del:k", b"v"], uid))
    assert ok(client.call("DELETE", [b"del:k"], uid)) is None
    failed(client.call("GET", [b"del:k"], uid), ErrorCode.KEY)


def test_delete_of_missing_key_succeeds(client, uid):
    assert ok(client.call("DELETE", [b"del:never"], uid)) is None


def test_exists_answers_true_in_a_list(client, uid):
    ok(client.call("PUT", [b"ex:k", b"v"], uid))
    assert ok(client.call("EXISTS", [b"ex:k"], uid)) == [True]


def test_binary_keys_and_values_round_trip(client, uid):
    key, value = bytes(range(256)), b"\x00\xff" * 100
    ok(client.call("PUT", [key, value], uid))
    assert ok(client.call("GET", [key], uid)) == [value]


def test_keys_packed_as_msgpack_str_like_the_original_client_are_accepted(client, uid):
    frame = msgpack.packb({"meta": {}, "uid": uid, "cmd": "PUT", "args": ["strkey", "strval"]},
                          use_bin_type=False)
    assert ok(client.raw(frame)) is None
    assert ok(client.call("GET", [b"strkey"], uid)) == [b"strval"]


def test_put_with_non_string_value_is_type_error(client, uid):
    failed(client.call("PUT", [b"t:k", 12], uid), ErrorCode.TYPE)


def test_get_with_non_string_key_is_type_error(client, uid):
    failed(client.call("GET", [12], uid), ErrorCode.TYPE)


def test_wrong_argument_count_is_request_error(client, uid):
    failed(client.call("GET", [], uid), ErrorCode.REQUEST)
    failed(client.call("PUT", [b"a"], uid), ErrorCode.REQUEST)


def test_unknown_uid_is_runtime_error_naming_it(client):
    msg = failed(client.call("GET", [b"a"], "nosuchuid"), ErrorCode.RUNTIME)
    assert msg == "Database nosuchuid doesn't exist"


def test_unknown_command_is_key_error_naming_it(client, uid):
    msg = failed(client.call("FROB", [], uid), ErrorCode.KEY)
    assert msg == "Command FROB not handled"


# -------------------------------------------------------------------- MGET

def test_mget_returns_values_in_request_order(client, uid):
    ok(client.call("BATCH", [[[1, b"mg:a", b"1"], [1, b"mg:b", b"2"]]], uid))
    assert ok(client.call("MGET", [[b"mg:b", b"mg:a"]], uid)) == [b"2", b"1"]


def test_mget_with_missing_key_is_warning_with_nil(client, uid):
    ok(client.call("PUT", [b"mgw:a", b"1"], uid))
    reply = client.call("MGET", [[b"mgw:a", b"mgw:nope"]], uid)
    assert reply.status == Status.WARNING
    assert reply.datas == [b"1", None]


def test_mget_fill_cache_argument_is_accepted(client, uid):
    ok(client.call("PUT", [b"mgf:a", b"1"], uid))
    assert ok(client.call("MGET", [[b"mgf:a"], True], uid)) == [b"1"]
    assert ok(client.call("MGET", [[b"mgf:a"], False], uid)) == [b"1"]


def test_mget_of_many_keys_goes_through_a_worker_and_keeps_order(client, uid):
    ops = [[1, b"mgm:%04d" % i, b"%d" % i] for i in range(1000)]
    ok(client.call("BATCH", [ops], uid))
    keys = [b"mgm:%04d" % i for i in reversed(range(1000))]
    assert ok(client.call("MGET", [keys], uid)) == [b"%d" % i for i in reversed(range(1000))]


def test_mget_non_list_keys_is_type_error(client, uid):
    failed(client.call("MGET", [b"notalist"], uid), ErrorCode.TYPE)


def test_mget_with_non_string_key_is_type_error(client, uid):
    failed(client.call("MGET", [[b"a", 3]], uid), ErrorCode.TYPE)


# ------------------------------------------------------------- RANGE/SLICE

@pytest.fixture(scope="module")
def ranged(client, uid):
    """A private database with keys r0..r9 -> v0..v9."""
    ok(client.call("DBCREATE", [b"ranged", {}], uid))
    ruid = client.uid("ranged")
    ok(client.call("BATCH", [[[1, b"r%d" % i, b"v%d" % i] for i in range(10)]], ruid))
    ok(client.call("PUT", [b"s0", b"other"], ruid))
    return ruid


def test_range_is_inclusive_at_both_ends(client, ranged):
    assert ok(client.call("RANGE", [b"r2", b"r4"], ranged)) == [
        [b"r2", b"v2"], [b"r3", b"v3"], [b"r4", b"v4"]]


def test_range_with_nil_ends_is_open(client, ranged):
    assert len(ok(client.call("RANGE", [None, None], ranged))) == 11
    assert ok(client.call("RANGE", [b"r8", None], ranged))[0] == [b"r8", b"v8"]
    assert ok(client.call("RANGE", [None, b"r1"], ranged)) == [[b"r0", b"v0"], [b"r1", b"v1"]]


def test_range_keys_only_and_values_only_are_bare(client, ranged):
    assert ok(client.call("RANGE", [b"r1", b"r2", True, False], ranged)) == [b"r1", b"r2"]
    assert ok(client.call("RANGE", [b"r1", b"r2", False, True], ranged)) == [b"v1", b"v2"]


def test_range_with_prefix_keeps_only_prefixed_keys(client, ranged):
    got = ok(client.call("RANGE", [None, None, True, False, b"r"], ranged))
    assert got == [b"r%d" % i for i in range(10)]
    got = ok(client.call("RANGE", [b"r5", b"s9", True, False, b"r"], ranged))
    assert got == [b"r%d" % i for i in range(5, 10)]


def test_range_reversed_bounds_is_empty(client, ranged):
    assert ok(client.call("RANGE", [b"r5", b"r1"], ranged)) == []


def test_range_with_non_string_bound_is_type_error(client, ranged):
    failed(client.call("RANGE", [1, None], ranged), ErrorCode.TYPE)


def test_slice_returns_count_items_from_key(client, ranged):
    assert ok(client.call("SLICE", [b"r3", 2], ranged)) == [[b"r3", b"v3"], [b"r4", b"v4"]]
    assert ok(client.call("SLICE", [b"r3", 2, False, True], ranged)) == [b"v3", b"v4"]
    assert ok(client.call("SLICE", [b"r8", 100, True, False], ranged)) == [b"r8", b"r9", b"s0"]


def test_slice_with_bad_count_is_type_or_value_error(client, ranged):
    failed(client.call("SLICE", [b"r3", b"2"], ranged), ErrorCode.TYPE)
    failed(client.call("SLICE", [b"r3", -1], ranged), ErrorCode.VALUE)


# ------------------------------------------------------------------- BATCH

def test_batch_puts_and_deletes_and_returns_nil(client, uid):
    ok(client.call("PUT", [b"b:gone", b"x"], uid))
    assert ok(client.call("BATCH", [[[1, b"b:a", b"1"], [0, b"b:gone"]]], uid)) is None
    assert ok(client.call("MGET", [[b"b:a"]], uid)) == [b"1"]
    failed(client.call("GET", [b"b:gone"], uid), ErrorCode.KEY)


def test_batch_with_unknown_op_is_signal_error_and_applies_nothing(client, uid):
    failed(client.call("BATCH", [[[1, b"bs:a", b"1"], [7, b"bs:b"]]], uid), ErrorCode.SIGNAL)
    failed(client.call("GET", [b"bs:a"], uid), ErrorCode.KEY)


def test_batch_with_malformed_op_is_type_error_and_applies_nothing(client, uid):
    ok(client.call("PUT", [b"bt:keep", b"old"], uid))
    for bad in ([1, b"bt:b"], [1, b"bt:b", 5], [0, 5], b"notalist", [], [1, b"a", b"b", b"c"]):
        ops = [[1, b"bt:a", b"1"], [0, b"bt:keep"], bad]
        failed(client.call("BATCH", [ops], uid), ErrorCode.TYPE)
    failed(client.call("GET", [b"bt:a"], uid), ErrorCode.KEY)
    assert ok(client.call("GET", [b"bt:keep"], uid)) == [b"old"]


def test_big_batch_with_bad_last_op_applies_nothing(client, uid):
    ops = [[1, b"bb:%05d" % i, b"v"] for i in range(5000)] + [[9, b"x"]]
    failed(client.call("BATCH", [ops], uid), ErrorCode.SIGNAL)
    assert ok(client.call("RANGE", [b"bb:", b"bb:~", True, False], uid)) == []


def test_empty_batch_succeeds(client, uid):
    assert ok(client.call("BATCH", [[]], uid)) is None


# ------------------------------------------------------- database admin

def test_dbcreate_then_dbconnect_gives_an_isolated_database(client, uid):
    ok(client.call("DBCREATE", [b"isolated", {b"bloom_filter_bits": 10}], uid))
    iso = client.uid("isolated")
    assert iso != uid
    ok(client.call("PUT", [b"iso:k", b"in-iso"], iso))
    failed(client.call("GET", [b"iso:k"], uid), ErrorCode.KEY)
    assert "isolated" in [n.decode() for n in ok(client.call("DBLIST", [], uid))]


def test_dbcreate_of_existing_name_is_database_error(client, uid):
    failed(client.call("DBCREATE", [b"default", {}], uid), ErrorCode.DATABASE)


def test_dbcreate_with_unknown_options_ignores_them(client, uid):
    assert ok(client.call("DBCREATE", [b"opts", {b"nonsense": 1, b"block_size": 8192}], uid)) is None


def test_dbcreate_with_badly_typed_option_is_type_error(client, uid):
    failed(client.call("DBCREATE", [b"badopt", {b"block_size": b"big"}], uid), ErrorCode.TYPE)


@pytest.mark.parametrize("name", [b"", b"a/b", b"..", b".", b"x..y", b"a\x00b", b"a\\b",
                                  b"n" * 256])
def test_dbcreate_refuses_unsafe_names(client, uid, server, name):
    failed(client.call("DBCREATE", [name, {}], uid), ErrorCode.DATABASE)


def test_dbconnect_unknown_is_database_error(client):
    failed(client.call("DBCONNECT", [b"nope"]), ErrorCode.DATABASE)


def test_dbmount_and_dbumount_then_use_remounts(client, uid):
    ok(client.call("DBCREATE", [b"mnt", {}], uid))
    muid = client.uid("mnt")
    ok(client.call("PUT", [b"k", b"v"], muid))
    assert ok(client.call("DBUMOUNT", [b"mnt"])) is None
    assert ok(client.call("GET", [b"k"], muid)) == [b"v"]  # remounted on use
    assert ok(client.call("DBUMOUNT", [b"mnt"])) is None
    assert ok(client.call("DBMOUNT", [b"mnt"])) is None
    assert ok(client.call("GET", [b"k"], muid)) == [b"v"]


def test_dbumount_default_keeps_it_usable(client, uid):
    ok(client.call("DBUMOUNT", [b"default"]))
    ok(client.call("PUT", [b"um:k", b"v"], uid))


def test_dbdrop_unregisters_and_its_uid_stops_working(client, uid):
    ok(client.call("DBCREATE", [b"dropme", {}], uid))
    duid = client.uid("dropme")
    ok(client.call("PUT", [b"k", b"v"], duid))
    assert ok(client.call("DBDROP", [b"dropme"], uid)) is None
    assert b"dropme" not in ok(client.call("DBLIST", [], uid))
    msg = failed(client.call("GET", [b"k"], duid), ErrorCode.RUNTIME)
    assert "doesn't exist" in msg
    ok(client.call("DBCREATE", [b"dropme", {}], uid))  # recreated empty
    failed(client.call("GET", [b"k"], client.uid("dropme")), ErrorCode.KEY)


def test_dbdrop_of_default_is_refused(client, uid):
    failed(client.call("DBDROP", [b"default"], uid), ErrorCode.DATABASE)


def test_dbdrop_unknown_is_database_error(client, uid):
    failed(client.call("DBDROP", [b"never-was"], uid), ErrorCode.DATABASE)


def test_dblist_returns_names(client, uid):
    names = ok(client.call("DBLIST", [], uid))
    assert b"default" in names


# ---------------------------------------------------------------- extensions

@pytest.mark.parametrize("rid", [0, 42, -7, 2**63 - 1, "req-1"])
def test_meta_id_is_echoed_on_success(client, rid):
    assert client.call("PING", id=rid).id == rid


def test_meta_id_is_echoed_on_error_replies(client, uid):
    assert client.call("GET", [b"nokey-at-all"], uid, id=99).id == 99
    assert client.call("NOPE", [], uid, id=100).id == 100
    frame = msgpack.packb({"meta": {"id": 101}, "uid": uid, "cmd": "GET"})  # no args
    reply = client.raw(frame)
    assert reply.err_code == ErrorCode.REQUEST and reply.id == 101


def test_compression_gives_lz4_content_that_decodes(client, uid):
    value = b"abc" * 1000
    ok(client.call("PUT", [b"cz:k", value], uid))
    client.sock.send(protocol.encode_request("GET", [b"cz:k"], uid, compression=True))
    frames = client.recv_frames()
    assert msgpack.unpackb(frames[0])["compression"] is True
    assert len(frames[1]) < len(value)
    assert protocol.decode_reply(frames).datas == [value]


def test_pipelined_requests_with_ids_all_get_answered(client, uid):
    ok(client.call("PUT", [b"pl:k", b"v"], uid))
    for i in range(50):
        cmd, args = ("RANGE", [b"pl:", b"pl:~"]) if i % 5 == 0 else ("GET", [b"pl:k"])
        client.sock.send(protocol.encode_request(cmd, args, uid, id=i))
    ids = sorted(client.recv().id for _ in range(50))
    assert ids == list(range(50))


# ---------------------------------------------- the original's defects, fixed

def test_get_of_empty_value_returns_empty_bytes_not_missing(client, uid):
    ok(client.call("PUT", [b"defect:empty", b""], uid))
    assert ok(client.call("GET", [b"defect:empty"], uid)) == [b""]


def test_mget_with_duplicate_keys_returns_the_value_at_every_position(client, uid):
    ok(client.call("PUT", [b"defect:dup", b"d"], uid))
    assert ok(client.call("MGET", [[b"defect:dup", b"defect:dup"]], uid)) == [b"d", b"d"]
    reply = client.call("MGET", [[b"defect:dup", b"x", b"defect:dup"]], uid)
    assert reply.status == Status.WARNING and reply.datas == [b"d", None, b"d"]


def test_mget_of_empty_list_answers_empty_list(client, uid):
    reply = client.call("MGET", [[]], uid)
    assert reply.status == Status.SUCCESS and reply.datas == []
    assert ok(client.call("PING")) == [b"PONG"]


def test_exists_of_missing_key_answers_false_in_a_list(client, uid):
    assert ok(client.call("EXISTS", [b"defect:nope"], uid)) == [False]


def test_dbrepair_repairs_and_the_database_keeps_its_data(client, uid):
    ok(client.call("DBCREATE", [b"repairme", {}], uid))
    ruid = client.uid("repairme")
    ok(client.call("PUT", [b"k", b"v"], ruid))
    assert ok(client.call("DBREPAIR", [], ruid)) is None
    assert ok(client.call("GET", [b"k"], ruid)) == [b"v"]


def test_dbmount_of_unknown_name_is_database_error_and_server_goes_on(client):
    failed(client.call("DBMOUNT", [b"unknown-db"]), ErrorCode.DATABASE)
    assert ok(client.call("PING")) == [b"PONG"]


def test_data_command_without_uid_is_request_error(client):
    failed(client.call("GET", [b"a"], None), ErrorCode.REQUEST)
    failed(client.call("PUT", [b"a", b"b"], ""), ErrorCode.REQUEST)


def test_wrongly_typed_key_is_type_error_and_server_goes_on(client, uid):
    failed(client.call("PUT", [[1, 2], b"v"], uid), ErrorCode.TYPE)
    assert ok(client.call("PING")) == [b"PONG"]


def test_garbage_bytes_get_request_error(client):
    failed(client.raw(b"\xc1\xc1 definitely not msgpack"), ErrorCode.REQUEST)
    assert ok(client.call("PING")) == [b"PONG"]


def test_non_map_request_gets_request_error(client):
    failed(client.raw(msgpack.packb([1, 2, 3])), ErrorCode.REQUEST)
    failed(client.raw(msgpack.packb("PING")), ErrorCode.REQUEST)


def test_request_without_cmd_or_args_gets_request_error(client):
    failed(client.raw(msgpack.packb({"meta": {}, "args": []})), ErrorCode.REQUEST)
    failed(client.raw(msgpack.packb({"meta": {}, "cmd": "GET"})), ErrorCode.REQUEST)
    # An argument-less command may omit them, or send {} as the original client does.
    assert ok(client.raw(msgpack.packb({"meta": {}, "cmd": "PING"}))) == [b"PONG"]
    assert ok(client.raw(msgpack.packb({"meta": {}, "cmd": "PING", "args": {}}))) == [b"PONG"]
    failed(client.raw(msgpack.packb({"cmd": "PING", "args": 5})), ErrorCode.REQUEST)


def test_multi_frame_request_gets_request_error(client):
    client.send_frames([protocol.encode_request("PING"), b"extra"])
    failed(client.recv(), ErrorCode.REQUEST)
    client.send_frames([b"", protocol.encode_request("PING")])
    failed(client.recv(), ErrorCode.REQUEST)
    assert ok(client.call("PING")) == [b"PONG"]


def test_every_malformed_request_is_answered_even_many_in_a_row(client):
    frames = [b"", b"\x00", b"\x91", msgpack.packb({}), msgpack.packb({"cmd": 1, "args": []})]
    n = 0
    for _ in range(20):  # more than any number of workers: none may die
        for f in frames:
            client.sock.send(f)
            n += 1
    replies = [client.recv() for _ in range(n)]
    assert all(r.status == Status.FAILURE and r.err_code == ErrorCode.REQUEST for r in replies)
    assert ok(client.call("PING")) == [b"PONG"]


def test_any_client_cannot_register_an_arbitrary_directory(client, uid, tmp_path):
    target = tmp_path / "victim"
    msg = failed(client.call("DBCREATE", [str(target).encode(), {}], uid), ErrorCode.DATABASE)
    assert "--allow-path" in msg
    assert not target.exists()
