"""ElevatorPool against the real server: many threads, the socket bound, checkout timeouts,
affinity and pinning, tainted sockets, stats, close, argument validation.

One server for the module; each test uses its own key prefix and its own pools, which a
fixture closes.
"""
from __future__ import annotations

import errno
import gc
import sys
import threading
import time
from typing import Callable, Dict, List

import psutil
import pytest
import tenacity
import zmq

from pyelevator_pool import (Elevator, ElevatorPool, PoolClosed, PoolTimeout, RetryPolicy,
                             errors, protocol)
from pyelevator_pool.connection import Connection

from rawclient import wait_until

JOIN = 30.0  # seconds: the longest any test thread may take


def established(port: int) -> int:
    """ESTABLISHED TCP connections of this process to ``port`` (the real sockets)."""
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port)


def run_threads(n: int, target: Callable[[int], None], timeout: float = JOIN) -> List[BaseException]:
    """Run ``target(i)`` in ``n`` threads; the exceptions that escaped them."""
    escaped: List[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            escaped.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout}s"
    return escaped


@pytest.fixture
def make_pool(server):
    """ElevatorPool factory on the module's server; every pool is closed afterwards."""
    pools: List[ElevatorPool] = []

    def make(**kwargs) -> ElevatorPool:
        pool = ElevatorPool(server.endpoint, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


# ---------------------------------------------------------------------- load

def test_64_threads_mixed_ops_through_one_shared_elevator_every_answer_checked(make_pool, server):
    pool = make_pool(max_size=16)
    E = Elevator(pool=pool)
    rounds, nkeys = 56, 6
    wrong: List[str] = []
    models: Dict[int, Dict[bytes, bytes]] = {}

    def worker(tid: int) -> None:
        prefix = f"mixed/t{tid:02d}/".encode()
        keys = [prefix + b"k%d" % j for j in range(nkeys)]
        model: Dict[bytes, bytes] = {}
        models[tid] = model

        def check(what: str, got, expected) -> None:
            if got != expected:
                wrong.append(f"thread {tid} {what}: got {got!r}, expected {expected!r}")

        for i in range(rounds):
            key = keys[i % nkeys]
            value = b"%d-%d" % (tid, i)
            op = i % 7
            if op == 0:
                assert E.Put(key, value) is None
                model[key] = value
            elif op == 1:
                try:
                    check(f"Get {key!r}", E.Get(key), model.get(key, KeyError))
                except errors.ElevatorKeyError:
                    check(f"Get {key!r}", KeyError, model.get(key, KeyError))
            elif op == 2:
                check("MGet", E.MGet(keys), [model.get(k) for k in keys])
            elif op == 3:
                E.Delete(key)
                model.pop(key, None)
            elif op == 4:
                check(f"Exists {key!r}", E.Exists(key), key in model)
            elif op == 5:
                other = keys[(i + 1) % nkeys]
                with E.WriteBatch() as batch:
                    batch.Put(key, value)
                    batch.Put(other, value + b"b")
                    batch.Delete(keys[(i + 2) % nkeys])
                model[key] = value
                model[other] = value + b"b"
                model.pop(keys[(i + 2) % nkeys], None)
            else:
                check("Range", E.Range(prefix, prefix + b"\xff"),
                      [[k, model[k]] for k in sorted(model)])

    escaped = run_threads(64, worker)
    assert escaped == []
    assert wrong == []
    # the final state of every key space is the model's
    for tid, model in models.items():
        prefix = f"mixed/t{tid:02d}/".encode()
        assert E.Range(prefix, prefix + b"\xff") == [[k, model[k]] for k in sorted(model)]
    stats = pool.stats()
    assert stats["size"] <= 16 and stats["in_use"] == 0 and stats["waiting"] == 0
    assert stats["timeouts"] == 0 and stats["retries"] == 0
    # every call checked a socket out, or was answered by a merged request that did
    assert stats["checkouts"] + stats["merged_calls"] - stats["merged_requests"] >= 64 * rounds


def test_open_tcp_connections_never_exceed_max_size_under_load(make_pool, server):
    assert wait_until(lambda: established(server.port) == 0), "connections left by other tests"
    max_size = 4
    pool = make_pool(max_size=max_size, checkout_timeout=20.0)
    E = Elevator(pool=pool)
    E.Put("sockets/k", "v")
    samples: List[int] = []
    done = threading.Event()
    enough = threading.Event()

    def sampler() -> None:
        while not done.is_set() and len(samples) < 50:
            samples.append(established(server.port))
        enough.set()

    def worker(tid: int) -> None:
        for _ in range(2000):  # until the sampler has enough samples
            if enough.is_set():
                return
            assert E.Get("sockets/k") == b"v"
            assert E.MGet(["sockets/k", f"sockets/missing{tid}"]) == [b"v", None]

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    try:
        escaped = run_threads(24, worker)
    finally:
        done.set()
        sampling.join(JOIN)
    assert escaped == []
    print(f"\nTCP connections sampled {len(samples)} times during the load, peak {max(samples)}")
    assert len(samples) == 50, "the load ended before the sampler had looked at it"
    assert max(samples) <= max_size, f"peak of {max(samples)} TCP connections"
    # the bound was reached, so the samples looked at a pool that was full
    assert pool.stats()["size"] == max_size
    assert established(server.port) == max_size
    pool.close()
    assert wait_until(lambda: established(server.port) == 0)


# ---------------------------------------------------------------- exhaustion

def test_pool_timeout_when_exhausted_names_size_and_waiters(make_pool):
    pool = make_pool(max_size=2, checkout_timeout=0.3)
    E = Elevator(pool=pool)
    E.Put("exhaust/k", "v")
    holding = threading.Barrier(3, timeout=JOIN)
    release = threading.Event()
    results: List[object] = []

    def hold_checkout(i: int) -> None:
        if i == 0:
            conn = pool.checkout()
            try:
                holding.wait()
                release.wait(JOIN)
            finally:
                pool.checkin(conn)
        else:
            with pool.connection():
                holding.wait()
                release.wait(JOIN)

    def patient_waiter() -> None:
        results.append(pool.checkout(timeout=JOIN))
        pool.checkin(results[-1])  # type: ignore[arg-type]

    holders = [threading.Thread(target=hold_checkout, args=(i,), daemon=True) for i in range(2)]
    for t in holders:
        t.start()
    holding.wait()
    waiter = threading.Thread(target=patient_waiter, daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 1)

    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        E.Get("exhaust/k")
    waited = time.monotonic() - start
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, errors.PoolError)
    message = str(info.value)
    assert "max_size=2" in message and "1 other threads waiting" in message
    assert waited >= 0.3 - 0.01
    stats = pool.stats()
    assert stats["checkout_timeouts"] == 1 and stats["size"] == 2 and stats["in_use"] == 2
    assert stats["wait_time_total"] >= 0.3 - 0.01
    assert stats["retries"] == 0  # a full pool is not a transport failure

    release.set()
    for t in holders + [waiter]:
        t.join(JOIN)
    assert results and isinstance(results[0], Connection)  # the waiter got a freed socket
    assert E.Get("exhaust/k") == b"v"
    assert pool.stats()["in_use"] == 0 and pool.stats()["size"] == 2


def test_checkout_timeout_zero_fails_at_once_when_full(make_pool):
    pool = make_pool(max_size=1, checkout_timeout=0)
    conn = pool.checkout()
    try:
        got: List[BaseException] = []
        run = threading.Thread(target=lambda: got.extend(
            [pytest.raises(PoolTimeout, pool.checkout).value]), daemon=True)
        run.start()
        run.join(JOIN)
        assert len(got) == 1 and "max_size=1" in str(got[0])
    finally:
        pool.checkin(conn)


# ------------------------------------------------------------------ affinity

def test_thread_gets_back_its_last_socket_rather_than_the_last_returned(make_pool):
    pool = make_pool(max_size=4)
    a, b, c = pool.checkout(), pool.checkout(), pool.checkout()
    assert len({a, b, c}) == 3
    for conn in (c, a, b):  # LIFO alone would hand out b next
        pool.checkin(conn)
    again = pool.checkout()
    try:
        assert again is c  # the socket this thread checked out last
    finally:
        pool.checkin(again)


def test_threads_each_get_back_their_own_socket(make_pool):
    n = 4
    pool = make_pool(max_size=n)
    E = Elevator(pool=pool)
    E.Put("affinity/k", "v")
    first: Dict[int, Connection] = {}
    second: Dict[int, Connection] = {}
    all_out = threading.Barrier(n, timeout=JOIN)
    all_back = threading.Barrier(n, timeout=JOIN)

    def worker(i: int) -> None:
        conn = pool.checkout()
        first[i] = conn
        all_out.wait()  # every socket is out at once: they are distinct
        pool.checkin(conn)
        all_back.wait()  # every socket is idle: each thread may pick any
        for _ in range(5):
            conn = pool.checkout()
            second.setdefault(i, conn)
            assert conn is first[i]
            pool.checkin(conn)
            assert E.Get("affinity/k") == b"v"

    assert run_threads(n, worker) == []
    assert len(set(first.values())) == n
    assert all(second[i] is first[i] for i in range(n))
    assert pool.stats()["size"] == n


def test_connection_block_pins_one_socket_for_a_sequence_of_calls(make_pool, monkeypatch):
    pool = make_pool(max_size=4)
    E = Elevator(pool=pool)
    used: List[tuple] = []
    original = Connection.request

    def spy(self, *args, **kwargs):
        used.append((threading.get_ident(), self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "request", spy)
    others_running = threading.Event()
    stop_others = threading.Event()

    def other(i: int) -> None:
        for n in range(500):
            E.Put(f"pin/other{i}", str(n))
            others_running.set()
            if stop_others.is_set():
                return

    others = [threading.Thread(target=other, args=(i,), daemon=True) for i in range(3)]
    for t in others:
        t.start()
    assert others_running.wait(JOIN)
    me = threading.get_ident()
    try:
        with pool.connection() as conn:
            assert isinstance(conn, Connection)
            used.clear()
            E.Put("pin/k", "1")
            assert E.Get("pin/k") == b"1"
            with pool.connection() as inner:  # re-entrant: the same socket
                assert inner is conn
                assert E.MGet(["pin/k", "pin/none"]) == [b"1", None]
            E.Delete("pin/k")
            assert E.Exists("pin/k") is False
            assert pool.stats()["in_use"] >= 1
            mine = [c for tid, c in used if tid == me]
            theirs = [c for tid, c in used if tid != me]
    finally:
        stop_others.set()
        for t in others:
            t.join(JOIN)
    assert len(mine) == 5 and all(c is conn for c in mine)
    assert conn not in theirs  # nobody else used the pinned socket meanwhile
    assert not conn.is_closed and pool.stats()["in_use"] == 0


def test_success_path_never_enters_tenacity(make_pool, monkeypatch):
    pool = make_pool(max_size=2)
    E = Elevator(pool=pool)

    def forbidden(*args, **kwargs):
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity, "Retrying", forbidden)
    E.Put("fast/k", "v")
    assert E.Get("fast/k") == b"v"
    assert E.MGet(["fast/k"]) == [b"v"]
    assert pool.stats()["retries"] == 0


# ------------------------------------------------------------------- tainted

def test_tainted_socket_is_replaced_never_returned_as_is(make_pool):
    pool = make_pool(max_size=1)
    E = Elevator(pool=pool)
    E.Put("taint/k", "v")
    conn = pool.checkout()
    conn.is_tainted = True  # as after a malformed reply, or a timeout without ids
    pool.checkin(conn)
    assert conn.is_closed
    stats = pool.stats()
    assert stats["replaced"] == 1 and stats["size"] == 0 and stats["in_use"] == 0
    fresh = pool.checkout()
    try:
        assert fresh is not conn and not fresh.is_tainted and not fresh.is_closed
    finally:
        pool.checkin(fresh)
    assert E.Get("taint/k") == b"v"
    assert pool.stats()["size"] == 1


def test_tainted_socket_frees_its_slot_for_a_waiting_thread(make_pool):
    pool = make_pool(max_size=1, checkout_timeout=JOIN)
    conn = pool.checkout()
    got: List[Connection] = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout()), daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 1)
    conn.is_tainted = True
    pool.checkin(conn)
    waiter.join(JOIN)
    assert len(got) == 1 and got[0] is not conn and not got[0].is_closed
    assert pool.stats()["size"] == 1 and pool.stats()["in_use"] == 1
    pool.checkin(got[0])  # from another thread than the one that checked it out: allowed
    assert pool.stats()["in_use"] == 0


# --------------------------------------------------------------------- stats

def test_stats_has_every_documented_counter_and_repr_shows_counts(make_pool):
    pool = make_pool(max_size=3)
    E = Elevator(pool=pool)
    E.Put("stats/k", "v")
    held = pool.checkout()
    try:
        stats = pool.stats()
        required = {"size", "in_use", "idle", "max_size", "waiting", "checkouts",
                    "wait_time_total", "timeouts", "retries", "replaced", "health_checks"}
        assert required <= set(stats)
        assert stats["max_size"] == 3 and stats["in_use"] == 1
        assert stats["size"] == stats["in_use"] + stats["idle"]
        assert stats["checkouts"] >= 2 and stats["waiting"] == 0
        assert isinstance(stats["wait_time_total"], float)
        text = repr(pool)
        assert f"size={stats['size']}/3" in text and "in_use=1" in text
        assert "waiting=0" in text and "retries=0" in text and server_port(pool) in text
    finally:
        pool.checkin(held)
    assert "in_use=0" in repr(pool)
    assert "in_use=0" in repr(E)  # the client's repr shows its pool's


def server_port(pool: ElevatorPool) -> str:
    return pool.endpoint.rsplit(":", 1)[1]


# --------------------------------------------------------------------- close

def test_close_while_other_threads_hold_sockets(make_pool):
    pool = make_pool(max_size=3, checkout_timeout=JOIN)
    E = Elevator(pool=pool)
    E.Put("close/k", "v")
    holding = threading.Barrier(3, timeout=JOIN)
    release = threading.Event()
    held: List[Connection] = []
    waiter_result: List[BaseException] = []

    def holder() -> None:
        with pool.connection() as conn:
            held.append(conn)
            holding.wait()
            release.wait(JOIN)

    def waiter() -> None:
        try:
            E.Get("close/k")
        except BaseException as exc:  # noqa: BLE001
            waiter_result.append(exc)

    holders = [threading.Thread(target=holder, daemon=True) for _ in range(2)]
    for t in holders:
        t.start()
    holding.wait()
    extra = pool.checkout()  # a third socket, given back idle
    pool.checkin(extra)
    hold3 = pool.checkout()  # ... then held by the main thread: the pool is full
    waiting = threading.Thread(target=waiter, daemon=True)
    waiting.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 1)
    pool.checkin(hold3)  # goes to the waiter, which gets its answer
    waiting.join(JOIN)
    assert waiter_result == []
    assert pool.stats()["idle"] == 1 and pool.stats()["size"] == 3

    closer = threading.Thread(target=pool.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() hung while sockets were in use"
    stats = pool.stats()
    assert stats["closed"] and stats["idle"] == 0 and stats["size"] == 2 and stats["in_use"] == 2
    assert hold3.is_closed  # the idle socket closed at once
    with pytest.raises(PoolClosed):
        E.Get("close/k")
    with pytest.raises(PoolClosed):
        pool.checkout()
    assert not any(c.is_closed for c in held)  # still in their threads' hands

    release.set()
    for t in holders:
        t.join(JOIN)
        assert not t.is_alive()
    assert all(c.is_closed for c in held)  # closed when returned
    stats = pool.stats()
    assert stats["size"] == 0 and stats["in_use"] == 0
    # the pool owned its context: it is terminated once the last socket is closed
    assert wait_until(lambda: pool.context.closed, timeout=10)
    pool.close()  # idempotent
    assert "closed" in repr(pool)


def test_calls_inside_a_pinned_block_raise_pool_closed_after_close(make_pool):
    pool = make_pool()
    E = Elevator(pool=pool)
    E.Put("pinned/k", "v")
    with pool.connection():
        assert E.Get("pinned/k") == b"v"
        pool.close()
        with pytest.raises(PoolClosed):
            E.Get("pinned/k")
    assert pool.stats()["size"] == 0


def test_close_wakes_waiting_threads_with_pool_closed(make_pool):
    pool = make_pool(max_size=1, checkout_timeout=JOIN)
    held = pool.checkout()
    got: List[BaseException] = []

    def waiter() -> None:
        try:
            pool.checkout()
        except BaseException as exc:  # noqa: BLE001
            got.append(exc)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 1)
    start = time.monotonic()
    pool.close()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - start < 10
    assert len(got) == 1 and isinstance(got[0], PoolClosed)
    pool.checkin(held)
    assert held.is_closed and pool.stats()["size"] == 0


def test_close_racing_checkins_leaves_no_socket_open(make_pool):
    # A socket given back while close() runs must be closed, not parked idle in a
    # closed pool (where nothing would ever close it, nor terminate the context).
    # The window is a few bytecodes wide: switch threads very often, and try many times.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    leaks = []
    try:
        for trial in range(150):
            pool = make_pool(max_size=8, health_check_interval=None)
            seen: List[Connection] = []
            go = threading.Event()

            def worker(i: int) -> None:
                go.wait(JOIN)
                for _ in range(2000):
                    try:
                        conn = pool.checkout()
                    except PoolClosed:
                        return
                    seen.append(conn)
                    pool.checkin(conn)

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
            for t in threads:
                t.start()
            go.set()
            wait_until(lambda: len(seen) >= 20, timeout=JOIN, step=0.0005)
            pool.close()
            for t in threads:
                t.join(JOIN)
            stats = pool.stats()
            left_open = [c for c in set(seen) if not c.is_closed]
            if stats["size"] or left_open or not pool.context.closed:
                leaks.append((trial, stats["size"], len(left_open)))
    finally:
        sys.setswitchinterval(previous)
    assert leaks == []


def test_pool_and_elevator_are_context_managers(server):
    with ElevatorPool(server.endpoint, max_size=2) as pool:
        with Elevator(pool=pool) as E:
            E.Put("ctx/k", "v")
            assert E.Get("ctx/k") == b"v"
        assert not pool.is_closed  # a client does not close a shared pool
    assert pool.is_closed
    with Elevator(endpoint=server.endpoint, max_size=2) as E:
        assert E.Get("ctx/k") == b"v"
        private = E.pool
    assert private.is_closed  # a client closes the pool it owns


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs,exc,words", [
    ({"max_size": 0}, ValueError, "max_size must be >= 1"),
    ({"max_size": -3}, ValueError, "max_size"),
    ({"max_size": 2.5}, TypeError, "max_size must be an int"),
    ({"max_size": True}, TypeError, "max_size must be an int"),
    ({"max_size": "8"}, TypeError, "max_size must be an int"),
    ({"timeout": 0}, ValueError, "timeout must be > 0"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout must be a number"),
    ({"checkout_timeout": -0.1}, ValueError, "checkout_timeout must be >= 0"),
    ({"checkout_timeout": None}, TypeError, "checkout_timeout must be a number"),
    ({"health_check_interval": -1}, ValueError, "health_check_interval must be >= 0"),
    ({"health_check_interval": "30"}, TypeError, "health_check_interval must be a number"),
    ({"heartbeat_interval": -1}, ValueError, "heartbeat_interval"),
    ({"retry": 3}, TypeError, "retry must be a RetryPolicy"),
    ({"retry": tenacity.stop_after_attempt(3)}, TypeError, "retry must be a RetryPolicy"),
    ({"context": object()}, TypeError, "context must be a zmq.Context"),
    ({"security": "curve"}, TypeError, "security must be callable"),
    ({"transport": "udp"}, ValueError, "transport must be 'tcp' or 'ipc'"),
])
def test_pool_argument_validation(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        ElevatorPool("127.0.0.1:1", **kwargs)


@pytest.mark.parametrize("endpoint,exc", [
    (None, TypeError), ("", ValueError), (4141, TypeError),
    ("localhost", ValueError), ("http://127.0.0.1:1", ValueError),
])
def test_pool_endpoint_validation(endpoint, exc):
    with pytest.raises(exc, match="endpoint"):
        ElevatorPool(endpoint)


def test_pool_options_are_keyword_only():
    with pytest.raises(TypeError):
        ElevatorPool("127.0.0.1:1", "tcp")  # type: ignore[misc]


def test_valid_edge_values_are_accepted_and_own_no_socket_yet():
    ctx = zmq.Context()
    try:
        pool = ElevatorPool("tcp://127.0.0.1:1", max_size=1, checkout_timeout=0,
                            health_check_interval=None, heartbeat_interval=0,
                            retry=RetryPolicy(), context=ctx, security=lambda s: None)
        assert pool.stats()["size"] == 0 and pool.max_size == 1
        pool.close()
        assert not ctx.closed  # a context given by the caller stays the caller's
    finally:
        ctx.term()


# ------------------------------------------ a socket that cannot connect

def _open_sockets(ctx: zmq.Context) -> List[zmq.Socket]:
    return [s for s in gc.get_objects()
            if isinstance(s, zmq.Socket) and s.context is ctx and not s.closed]


# -------------------------------------------------------- connection that cannot connect

def test_a_socket_that_cannot_connect_leaves_no_socket_open_and_close_does_not_hang():
    ctx = zmq.Context()
    pool = ElevatorPool("tcp://127.0.0.1:notaport", context=ctx)  # refused by connect()
    with pytest.raises(errors.ConnectionError) as info:
        pool.checkout()
    kept = info.value  # a caller keeps the error (to log it later): its frames stay alive
    leaked = _open_sockets(ctx)
    closer = threading.Thread(target=pool.close, daemon=True)
    closer.start()
    closer.join(10.0)
    hung = closer.is_alive()
    for sock in leaked:  # let the hung term() finish whatever the outcome
        sock.close(0)
    closer.join(10.0)
    ctx.term()
    assert leaked == [], f"sockets left open by a failed Connection: {leaked} ({kept})"
    assert not hung, "pool.close() hung on a socket the failed Connection left open"


def test_a_pinned_socket_whose_replacement_failed_once_does_not_exceed_max_size(server):
    fail_next: List[int] = []

    def security(sock: zmq.Socket) -> None:
        # Opening a socket fails once, as it does when the process is out of descriptors.
        if fail_next:
            fail_next.pop()
            raise zmq.ZMQError(errno.EMFILE)

    pool = ElevatorPool(server.endpoint, max_size=1, security=security,
                        retry=RetryPolicy(wait=tenacity.wait_fixed(0)))
    try:
        with pool.connection() as conn:
            assert pool.request(protocol.PING, []).status == protocol.Status.SUCCESS
            conn.is_tainted = True  # as after a timeout against a server without ids
            fail_next.append(1)
            assert pool.request(protocol.PING, []).status == protocol.Status.SUCCESS
            assert not fail_next  # the failure happened, and was retried
        stats = pool.stats()
        assert (stats["size"], stats["in_use"], stats["idle"]) == (1, 0, 1)
        held = pool.checkout()
        try:
            with pytest.raises(PoolTimeout):
                pool.checkout(timeout=0)  # max_size=1: no second socket
        finally:
            pool.checkin(held)
        assert pool.stats()["size"] == 1
    finally:
        pool.close()


# ------------------------------------------------------ argument validation

@pytest.mark.parametrize("call", ["checkout", "connection", "request"])
@pytest.mark.parametrize("timeout,exc", [("1", TypeError), (True, TypeError), (-1, ValueError),
                                         (float("inf"), ValueError),
                                         (float("nan"), ValueError)])
def test_pool_call_timeouts_are_validated_with_a_clear_message(call, timeout, exc):
    pool = ElevatorPool("127.0.0.1:1")  # never reached: the argument is refused first
    try:
        with pytest.raises(exc, match="timeout"):
            if call == "checkout":
                pool.checkout(timeout)
            elif call == "connection":
                with pool.connection(timeout):
                    pass
            else:
                pool.request(protocol.PING, [], timeout=timeout)
        assert pool.stats()["size"] == 0  # nothing was opened, nothing sent
    finally:
        pool.close()


def test_request_timeout_zero_is_refused_but_checkout_timeout_zero_is_allowed(server):
    pool = ElevatorPool(server.endpoint)
    try:
        with pytest.raises(ValueError, match="timeout"):
            pool.request(protocol.PING, [], timeout=0)
        conn = pool.checkout(timeout=0)
        pool.checkin(conn)
        assert pool.stats()["size"] == 1
    finally:
        pool.close()
