"""Elevator(open=False): no I/O at construction; the binding is resolved by E.open() or by
the first call that needs it, so a program can start before its server."""
import socket
import threading
import time

import pytest

from pyelevator_pool import DatabaseError, Elevator, ElevatorTimeout
from pyelevator_pool.testing import ServerProcess

#: an upper bound on a short call on a loaded machine (never a speed assertion)
GENEROUS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_dbconnects(E) -> list:
    """A list that gets one entry per DBCONNECT E's pool sends (to the real server)."""
    sent = []
    request = E.pool.request

    def counting(cmd, *args, **kwargs):
        if cmd == "DBCONNECT":
            sent.append(cmd)
        return request(cmd, *args, **kwargs)

    E.pool.request = counting
    return sent


def test_open_false_does_no_io_and_the_first_call_binds_once_the_server_is_up(tmp_path):
    port = free_port()
    E = Elevator(endpoint=f"127.0.0.1:{port}", open=False, timeout=60)
    try:
        assert E.pool.stats()["size"] == 0  # not a socket opened
        assert E.db_name == "default"
        done = threading.Event()
        outcome = []

        def first_call():
            try:
                E.Put(b"k", b"v")  # waits for the server, within its 60 s
                outcome.append(E.Get(b"k"))
            except BaseException as exc:  # reported by the assertion below
                outcome.append(exc)
            finally:
                done.set()

        caller = threading.Thread(target=first_call)
        caller.start()
        with ServerProcess(str(tmp_path), port=port):
            assert done.wait(GENEROUS + 60)
            caller.join(10)
        assert outcome == [b"v"]
    finally:
        E.close()


def test_open_resolves_once_and_is_idempotent(server, admin):
    E = Elevator(endpoint=server.endpoint, open=False)
    try:
        sent = count_dbconnects(E)
        assert E.open(timeout=5) is E
        assert E.open() is E
        E.Put(b"opened", b"1")
        assert E.Get(b"opened") == b"1"
        assert sent == ["DBCONNECT"]
    finally:
        E.close()


@pytest.mark.parametrize("coalesce", [True, False])
def test_concurrent_first_calls_resolve_the_binding_once(server, admin, coalesce):
    E = Elevator(endpoint=server.endpoint, open=False, coalesce=coalesce)
    barrier = threading.Barrier(8)
    results = []

    def call():
        barrier.wait(GENEROUS)
        results.append(E.Exists(b"nothing-here"))

    try:
        sent = count_dbconnects(E)
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GENEROUS)
        assert results == [False] * 8
        assert sent == ["DBCONNECT"]
    finally:
        E.close()


def test_open_of_a_missing_database_raises_what_construction_raises(server, admin):
    with pytest.raises(DatabaseError) as constructed:
        Elevator("no_such_db", endpoint=server.endpoint)
    E = Elevator("no_such_db", endpoint=server.endpoint, open=False)
    try:
        with pytest.raises(DatabaseError) as opened:
            E.open()
        assert str(opened.value) == str(constructed.value)
        with pytest.raises(DatabaseError):
            E.Get(b"k")  # the first call resolves it too, and fails the same way
        # the client stays usable: once the database exists, it opens
        admin.createdb("no_such_db")
        try:
            E.Put(b"k", b"v")
            assert E.Get(b"k") == b"v"
        finally:
            admin.dropdb("no_such_db")
    finally:
        E.close()


def test_open_keeps_the_endpoint_given_as_database_hint(server, admin):
    E = Elevator(server.endpoint, pool=admin.pool, open=False)
    with pytest.raises(DatabaseError, match=r"looks like an endpoint.*Elevator\(endpoint="):
        E.open()


def test_open_timeout_bounds_the_wait_for_a_server():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    E = Elevator(endpoint=endpoint, open=False, timeout=60)
    try:
        started = time.monotonic()
        with pytest.raises(ElevatorTimeout, match=rf"no connection to {endpoint} within 1s: "
                                                  "connection refused"):
            E.open(timeout=1)
        assert time.monotonic() - started < GENEROUS
    finally:
        E.close()


def test_open_arguments_are_checked():
    with pytest.raises(TypeError, match="open"):
        Elevator(open="no")
    E = Elevator(open=False)
    try:
        with pytest.raises(ValueError, match="timeout"):
            E.open(timeout=-1)
    finally:
        E.close()


def test_from_url_open_false(server):
    port = free_port()
    E = Elevator.from_url(f"elevator://127.0.0.1:{port}/somedb?open=false")
    try:
        assert (E.db_name, E.pool.stats()["size"]) == ("somedb", 0)
    finally:
        E.close()
