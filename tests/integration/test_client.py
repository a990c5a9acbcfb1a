"""The documented py-elevator API, in Python 3, against a real elevator-server.

The first tests are the examples of the original py-elevator documentation, one each,
in the order of that document. Values come back as bytes (``decode_responses=True``
gives str).
"""
from __future__ import annotations

import os
import threading

import msgpack
import pytest
import zmq

from pyelevator_pool import (DatabaseError, Elevator, ElevatorError, ElevatorKeyError,
                             ElevatorPool, ElevatorTimeout, ElevatorTypeError, RequestError,
                             ServerError, SignalError, WriteBatch, errors, protocol)


@pytest.fixture
def E(endpoint):
    client = Elevator(endpoint=endpoint)
    yield client
    client.close()


# ------------------------------------------------------------ seed: databases

def test_seed_client_connects_to_default_db(E):
    assert E.db_name == "default"


def test_seed_listdb_lists_default(E):
    assert "default" in E.listdb()


def test_seed_createdb_then_listdb_shows_it(E):
    E.createdb("seed_testdb")
    try:
        assert {"default", "seed_testdb"} <= set(E.listdb())
    finally:
        E.dropdb("seed_testdb")


def test_seed_connect_binds_client_to_new_db(E):
    E.createdb("seed_bind")
    try:
        E.connect("seed_bind")
        assert E.db_name == "seed_bind"
        E.Put("k", "v")
        E.connect("default")
        with pytest.raises(KeyError):
            E.Get("k")
    finally:
        E.dropdb("seed_bind")


def test_seed_connect_to_missing_db_raises_database_error_and_keeps_binding(E):
    with pytest.raises(DatabaseError) as info:
        E.connect("dbthatdoesntexist")
    assert "dbthatdoesntexist" in str(info.value)
    assert E.db_name == "default"
    E.Put("still_bound", "yes")
    assert E.Get("still_bound") == b"yes"


def test_seed_repairdb_then_dropdb(E):
    E.createdb("seed_repair")
    client = Elevator("seed_repair", endpoint=E.endpoint)
    client.Put("a", "1")
    client.repairdb()
    assert client.Get("a") == b"1"
    client.close()
    E.dropdb("seed_repair")
    assert "seed_repair" not in E.listdb()


def test_seed_createdb_with_absolute_path_is_refused_without_allow_path(E, tmp_path):
    # The seed registers a pre-existing LevelDB by its path; this server allows that
    # only under a root its operator named with --allow-path (tested in the server tests).
    path = str(tmp_path / "existing")
    with pytest.raises(DatabaseError) as info:
        E.createdb(path)
    assert "allow-path" in str(info.value)
    assert not os.path.exists(path)


# ------------------------------------------------------- seed: interact with a db

def test_seed_put_get(db):
    db.Put("abc", "123")
    db.Put("easy as", "do re mi")
    assert db.Get("abc") == b"123"


def test_seed_mget_returns_none_for_missing(db):
    db.Put("abc", "123")
    db.Put("easy as", "do re mi")
    assert db.MGet(["abc", "easy as", "you and me"]) == [b"123", b"do re mi", None]


def test_seed_delete(db):
    db.Put("abc", "123")
    db.Delete("abc")
    with pytest.raises(KeyError):
        db.Get("abc")


def _ten(db):
    for i in range(10):
        db.Put(str(i), str(i))


def test_seed_range_with_stop_key_is_inclusive(db):
    _ten(db)
    assert db.Range("1", "9") == [[str(i).encode()] * 2 for i in range(1, 10)]


def test_seed_range_with_int_limit_is_a_count(db):
    _ten(db)
    assert db.Range("1", 2) == [[b"1", b"1"], [b"2", b"2"]]


def test_seed_slice(db):
    _ten(db)
    assert db.Slice("1", 2) == [[b"1", b"1"], [b"2", b"2"]]


def test_seed_rangeiter(db):
    _ten(db)
    it = db.RangeIter("1", "2")
    assert list(it) == [[b"1", b"1"], [b"2", b"2"]]


def test_seed_elevator_with_statement(db):
    db.Put("1", "1")
    with Elevator(db.db_name, endpoint=db.endpoint) as e:
        assert e.Get("1") == b"1"
    assert e.pool.is_closed


def test_seed_elevator_spawns_writebatch_inheriting_configuration(db):
    batch = db.WriteBatch()
    assert isinstance(batch, WriteBatch)
    assert batch.db_name == db.db_name
    batch.Put("x", "y")
    batch.Write()
    assert db.Get("x") == b"y"


# ---------------------------------------------------------------- seed: batches

def test_seed_writebatch_put_delete_write(db):
    batch = WriteBatch(db.db_name, endpoint=db.endpoint)
    batch.Put("a", "a")
    batch.Put("b", "b")
    batch.Put("c", "c")
    batch.Delete("c")
    batch.Write()
    batch.close()
    assert db.Get("a") == b"a"
    assert db.Get("b") == b"b"
    with pytest.raises(KeyError):
        db.Get("c")


def test_seed_writebatch_with_statement_writes_on_exit(db):
    with WriteBatch(db.db_name, endpoint=db.endpoint) as batch:
        batch.Put("abc", "123")
        batch.Put("or simple as...", "do re mi")
    assert db.MGet(["abc", "or simple as..."]) == [b"123", b"do re mi"]


def test_writebatch_defaults_to_default_db(endpoint):
    with WriteBatch(endpoint=endpoint) as batch:
        assert batch.db_name == "default"


# ------------------------------------------------------------ WriteBatch semantics

def test_writebatch_context_discards_on_exception(db):
    with pytest.raises(RuntimeError):
        with db.WriteBatch() as batch:
            batch.Put("never", "written")
            raise RuntimeError("boom")
    assert not db.Exists("never")
    assert len(batch) == 0


def test_writebatch_write_empties_batch_on_success(db):
    batch = db.WriteBatch()
    batch.Put("k1", "v1")
    assert len(batch) == 1
    batch.Write()
    assert len(batch) == 0
    batch.Write()  # an empty batch sends nothing
    assert db.Get("k1") == b"v1"


def test_writebatch_keeps_ops_after_failure_and_can_be_rewritten(db):
    batch = db.WriteBatch()
    for i in range(100_000):  # far more than the server can apply within the timeout
        batch.Put(f"kept{i}", "v")
    with pytest.raises(ElevatorTimeout):
        batch.Write(timeout=0.001)
    assert len(batch) == 100_000
    batch.Write()
    assert db.MGet(["kept0", "kept99999"]) == [b"v", b"v"]
    assert len(batch) == 0


def test_writebatch_is_atomic_when_server_rejects_an_op(db, client):
    # A malformed op (sent on the wire: the public API would refuse it) makes the
    # server apply nothing of the batch.
    reply = client.call(protocol.BATCH, [[[1, b"good", b"v"], [7, b"bad"]]],
                        client.uid(db.db_name))
    assert reply.status == protocol.Status.FAILURE
    assert not db.Exists("good")


def test_writebatch_unknown_op_is_signal_error(db, client):
    reply = client.call(protocol.BATCH, [[[9, b"k", b"v"]]], client.uid(db.db_name))
    assert isinstance(errors.error_from_reply(reply.err_code, reply.err_msg), SignalError)


def test_writebatch_rejects_non_string_key_before_sending(db):
    batch = db.WriteBatch()
    with pytest.raises(TypeError, match="key must be str or bytes, not int"):
        batch.Put(1, "v")
    with pytest.raises(TypeError, match="value must be str or bytes, not NoneType"):
        batch.Put("k", None)
    assert len(batch) == 0


def test_writebatch_arguments_validated(db):
    with pytest.raises(TypeError):
        WriteBatch(elevator="not a client")
    with pytest.raises(ValueError):
        WriteBatch("other", elevator=db)


# -------------------------------------------------------------- keys and values

def test_bytes_and_str_keys_are_the_same_key(db):
    db.Put("clé", b"\x00\xff")
    assert db.Get("clé".encode()) == b"\x00\xff"
    assert db.Get(bytearray("clé".encode())) == b"\x00\xff"


def test_binary_values_round_trip_exactly(db):
    value = bytes(range(256)) * 4
    db.Put(b"\x00bin\xff", value)
    assert db.Get(b"\x00bin\xff") == value
    assert db.MGet([b"\x00bin\xff"]) == [value]
    assert db.Range(b"\x00", b"\x00z") == [[b"\x00bin\xff", value]]


def test_empty_value_is_returned_not_missing(db):
    db.Put("empty", "")
    assert db.Get("empty") == b""
    assert db.Exists("empty") is True


def test_decode_responses_returns_str(endpoint, db):
    db.Put("s", "värde")
    with Elevator(db.db_name, endpoint=endpoint, decode_responses=True) as e:
        assert e.Get("s") == "värde"
        assert e.MGet(["s", "missing"]) == ["värde", None]
        assert e.Range("s", "s") == [["s", "värde"]]
        assert e.Range("s", "s", include_value=False) == ["s"]
        assert list(e.RangeIter("s", "s", include_key=False)) == ["värde"]


@pytest.mark.parametrize("bad", [1, 1.5, None, ["k"], object()])
def test_non_string_keys_raise_type_error_before_sending(db, bad):
    before = db.pool.stats()["checkouts"]
    with pytest.raises(TypeError, match="key must be str or bytes"):
        db.Get(bad)
    with pytest.raises(TypeError):
        db.Put(bad, "v")
    with pytest.raises(TypeError):
        db.MGet([bad])
    assert db.pool.stats()["checkouts"] == before


def test_argument_validation_messages(db):
    with pytest.raises(TypeError, match="keys must be a list or tuple"):
        db.MGet("abc")
    with pytest.raises(TypeError, match="fill_cache must be a bool"):
        db.MGet(["a"], fill_cache="yes")
    with pytest.raises(ValueError, match="count must be >= 0"):
        db.Slice("a", -1)
    with pytest.raises(TypeError, match="count must be an int"):
        db.Slice("a", "3")
    with pytest.raises(ValueError, match="cannot both be False"):
        db.Range("a", "b", include_key=False, include_value=False)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        db.Get("a", timeout=0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        db.Get("a", timeout="1")
    with pytest.raises(ValueError, match="page_size"):
        db.RangeIter(page_size=0)
    with pytest.raises(TypeError, match="database name must be a str"):
        db.connect(3)
    with pytest.raises(ValueError, match="must not be empty"):
        db.createdb("")
    with pytest.raises(TypeError, match="options must be a dict"):
        db.createdb("x", options=[1])
    with pytest.raises(TypeError, match="pool must be an ElevatorPool"):
        Elevator(pool="p")


def test_client_sharing_a_pool_refuses_pool_options(db):
    with pytest.raises(ValueError, match="give these to the ElevatorPool"):
        Elevator(pool=db.pool, max_size=3)


# ------------------------------------------------------------------ data calls

def test_exists_answers_true_and_false(db):
    db.Put("here", "1")
    assert db.Exists("here") is True
    assert db.Exists("not here") is False


def test_ping(E):
    assert E.Ping() is True


def test_mget_empty_list_and_duplicates(db):
    db.Put("d", "1")
    assert db.MGet([]) == []
    assert db.MGet(("d", "d", "nope", "d")) == [b"1", b"1", None, b"1"]


def test_mget_fill_cache_gives_same_values(db):
    db.Put("fc", "1")
    assert db.MGet(["fc"], fill_cache=True) == [b"1"]


def test_range_flags_and_open_ends(db):
    _ten(db)
    assert db.Range("8", None) == [[b"8", b"8"], [b"9", b"9"]]
    assert db.Range(None, "1") == [[b"0", b"0"], [b"1", b"1"]]
    assert db.Range("3", "4", include_value=False) == [b"3", b"4"]
    assert db.Range("3", "4", include_key=False) == [b"3", b"4"]
    assert len(db.Range()) == 10


def test_range_prefix(db):
    for k in ("user:1", "user:2", "users", "video:1"):
        db.Put(k, k)
    assert db.Range(prefix="user:", include_value=False) == [b"user:1", b"user:2"]


def test_slice_count_larger_than_db(db):
    _ten(db)
    assert len(db.Slice("5", 100)) == 5
    assert db.Slice("5", 0) == []


def test_rangeiter_pages_through_range_larger_than_a_page(db):
    with db.WriteBatch() as batch:
        for i in range(2500):
            batch.Put(f"{i:05d}", str(i))
    items = list(db.RangeIter("00100", "02200", page_size=97))
    assert [k for k, _ in items] == [f"{i:05d}".encode() for i in range(100, 2201)]
    assert all(v == str(int(k)).encode() for k, v in items)
    # the stop key falls exactly on a page boundary
    assert len(list(db.RangeIter("00000", "00099", page_size=100))) == 100
    keys = list(db.RangeIter(None, None, page_size=1000, include_value=False))
    assert keys == [f"{i:05d}".encode() for i in range(2500)]


def test_rangeiter_is_lazy(db):
    with db.WriteBatch() as batch:
        for i in range(300):
            batch.Put(f"{i:04d}", "v")
    it = db.RangeIter(page_size=50)
    before = db.pool.stats()["checkouts"]
    first = next(it)
    assert first == [b"0000", b"v"]
    assert db.pool.stats()["checkouts"] == before + 1  # one page fetched, not six


def test_rangeiter_with_count_via_range_int_limit_and_prefix(db):
    for i in range(30):
        db.Put(f"p:{i:02d}", "x")
    db.Put("q", "x")
    assert len(list(db.RangeIter(prefix="p:", page_size=7))) == 30
    assert db.Range("p:10", 5, include_value=False) == [f"p:{i}".encode() for i in range(10, 15)]


# ----------------------------------------------------------------------- errors

def test_missing_key_is_keyerror_and_elevator_error_with_context(db):
    with pytest.raises(ElevatorKeyError) as info:
        db.Get("missing-key")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ElevatorError)
    assert err.command == "GET" and err.db == db.db_name and err.endpoint == db.endpoint
    assert db.db_name in str(err) and "GET" in str(err)


def test_createdb_existing_is_database_error(E):
    with pytest.raises(DatabaseError):
        E.createdb("default")


def test_dropdb_unknown_is_database_error(E):
    with pytest.raises(DatabaseError):
        E.dropdb("never-created")


@pytest.mark.parametrize("code,cls,builtin", [
    (0, ElevatorTypeError, TypeError), (1, ElevatorKeyError, KeyError),
    (2, errors.ElevatorValueError, ValueError), (3, errors.ElevatorIndexError, IndexError),
    (4, errors.ElevatorRuntimeError, RuntimeError), (5, errors.ElevatorOSError, OSError),
    (6, DatabaseError, ServerError), (7, SignalError, ServerError),
    (8, RequestError, ValueError)])
def test_every_server_error_code_maps_to_its_class(code, cls, builtin):
    err = errors.error_from_reply(code, "msg", command="CMD", db="d", endpoint="tcp://x:1")
    assert type(err) is cls
    assert isinstance(err, builtin) and isinstance(err, ElevatorError)
    assert err.code == code
    assert str(err) == "msg (CMD db='d' at tcp://x:1)"


def test_timeout_is_builtin_timeout_error(db):
    assert issubclass(ElevatorTimeout, TimeoutError)
    assert issubclass(errors.PoolTimeout, TimeoutError)
    assert issubclass(errors.ConnectionError, OSError)


def test_server_type_error_maps_to_type_error(db, client):
    # Below the public API (which validates first): a PUT with an int key.
    reply = db.pool.request(protocol.PUT, [1, b"v"], client.uid(db.db_name))
    assert isinstance(errors.error_from_reply(reply.err_code, reply.err_msg), TypeError)


def test_unknown_command_is_key_error_from_server(db, client):
    reply = db.pool.request("NOPE", [], client.uid(db.db_name))
    assert reply.status == protocol.Status.FAILURE
    assert reply.err_code == protocol.ErrorCode.KEY


def test_unreachable_endpoint_fails_at_construction_with_timeout():
    with pytest.raises(ElevatorTimeout) as info:
        Elevator(endpoint="127.0.0.1:1", timeout=0.3)
    assert "127.0.0.1:1" in str(info.value)


def test_uid_is_refreshed_after_db_dropped_and_recreated(E):
    E.createdb("recreated")
    c = Elevator("recreated", endpoint=E.endpoint)
    c.Put("a", "1")
    E.dropdb("recreated")
    E.createdb("recreated")
    try:
        with pytest.raises(KeyError):
            c.Get("a")  # the old uid is refused, the client reconnects by name
        c.Put("b", "2")
        assert c.Get("b") == b"2"
    finally:
        c.close()
        E.dropdb("recreated")


# ------------------------------------------------------------------ compression

def test_compression_round_trip(db):
    db.Put("big", "x" * 10000)
    assert db.Get("big", compression=True) == b"x" * 10000
    assert db.Range("big", "big", compression=True) == [[b"big", b"x" * 10000]]
    with Elevator(db.db_name, endpoint=db.endpoint, compression=True) as c:
        assert c.MGet(["big"]) == [b"x" * 10000]


# ----------------------------------------------------------- stale-reply safety

def test_call_after_timeout_gets_its_own_answer(db):
    with db.WriteBatch() as batch:
        for i in range(50000):
            batch.Put(f"s{i:06d}", f"v{i}")
    keys = [f"s{i:06d}" for i in range(50000)]
    for round_ in range(5):
        with pytest.raises(ElevatorTimeout):
            db.MGet(keys, timeout=0.001)
        i = round_ * 7
        assert db.Get(f"s{i:06d}") == f"v{i}".encode()
        assert db.Exists("nope") is False
    assert db.MGet(keys[:3]) == [b"v0", b"v1", b"v2"]


def test_threads_share_one_client(db):
    errors_seen = []

    def work(t):
        try:
            for i in range(200):
                db.Put(f"t{t}:{i}", f"{t}:{i}")
                assert db.Get(f"t{t}:{i}") == f"{t}:{i}".encode()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors_seen.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors_seen
    assert db.pool.stats()["size"] <= 8


# ----------------------------------------------- against an original-style peer

def test_client_accepts_str_packed_values_and_bare_false(endpoint):
    """The original server packs values as msgpack str and EXISTS's false bare, and
    echoes no id: a tiny ROUTER playing that part (a protocol peer, not a mock of
    our server) answers DBCONNECT, GET, EXISTS and MGET."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    answers = {
        "DBCONNECT": ["uid-1"], "GET": ["valeur"], "EXISTS": False, "MGET": ["a", None],
    }
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if not router.poll(50):
                continue
            ident, frame = router.recv_multipart()
            req = msgpack.unpackb(frame, raw=False)
            header = {"status": 1, "err_code": None, "err_msg": None, "compression": False}
            content = {"datas": answers[req["cmd"]]}
            # use_bin_type=False: everything packed as str, as Python 2 did
            router.send_multipart([ident, msgpack.packb(header, use_bin_type=False),
                                   msgpack.packb(content, use_bin_type=False)])

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        with Elevator(endpoint=f"tcp://127.0.0.1:{port}", timeout=5) as e:
            assert e.Get("k") == "valeur".encode()
            assert e.Exists("k") is False
            assert e.MGet(["x", "y"]) == [b"a", None]
            conn = e.pool.checkout()
            assert conn.ids_echoed is False
            e.pool.checkin(conn)
    finally:
        stop.set()
        th.join(5)
        router.close(0)
        ctx.term()


def test_endpoint_forms(server):
    host_port = server.endpoint[len("tcp://"):]
    with Elevator(endpoint=host_port) as a, Elevator(endpoint=server.endpoint) as b:
        assert a.endpoint == b.endpoint == server.endpoint
    with pytest.raises(ValueError, match="transport"):
        ElevatorPool("127.0.0.1:1", transport="udp")
    with pytest.raises(ValueError, match="HOST:PORT"):
        ElevatorPool("localhost")
