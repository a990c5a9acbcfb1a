"""The socket pool's accounting (pyelevator_pool/slots.py) with a fake socket factory: no
socket, no server. Threads are used only where a checkout must block, and the test waits
for the pool to report the waiter, never for a time to pass."""
from __future__ import annotations

import os
import threading
import time
from typing import List

import pytest

from pyelevator_pool.errors import PoolClosed, PoolTimeout
from pyelevator_pool.slots import SocketPool

JOIN = 30.0


class FakeConn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.pid = os.getpid()
        self.is_tainted = False
        self.last_used = time.monotonic()
        self.closed = False
        self.ping_ok = True
        self.pings = 0
        self.stale_replies = n  # something to tally

    def ping(self, timeout: float) -> bool:
        self.pings += 1
        return self.ping_ok

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConn {self.n}>"


class Factory:
    def __init__(self) -> None:
        self.made: List[FakeConn] = []
        self.fail_next = 0

    def __call__(self) -> FakeConn:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("cannot open")
        conn = FakeConn(len(self.made))
        self.made.append(conn)
        return conn


def make(max_size: int = 2, **kw) -> "tuple[SocketPool, Factory, List[int]]":
    factory = Factory()
    drained: List[int] = []
    kw.setdefault("checkout_timeout", JOIN)
    pool = SocketPool(factory, name="fake", max_size=max_size,
                      on_drained=lambda: drained.append(1), tally=("stale_replies",), **kw)
    return pool, factory, drained


def until(predicate, timeout: float = JOIN) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0)  # yield to the other threads: the condition is reached by them
    return predicate()


def blocked_checkout(pool: SocketPool, got: list, waiting: int) -> threading.Thread:
    """A thread whose checkout waits; returns once the pool counts it among ``waiting``."""
    def run() -> None:
        try:
            got.append(pool.checkout())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            got.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert until(lambda: pool.stats()["waiting"] == waiting)
    return t


def test_never_more_than_max_size_and_a_full_pool_times_out():
    pool, factory, _ = make(max_size=2)
    a, b = pool.checkout(), pool.checkout()
    assert a is not b and len(factory.made) == 2
    with pytest.raises(PoolTimeout, match="max_size=2"):
        pool.checkout(timeout=0)
    s = pool.stats()
    assert (s["size"], s["in_use"], s["idle"], s["waiting"]) == (2, 2, 0, 0)
    assert s["checkout_timeouts"] == 1 and s["checkouts"] == 2


def test_a_thread_gets_back_the_socket_it_used_last():
    pool, factory, _ = make(max_size=3)
    a = pool.checkout()
    b_holder: list = []
    t = threading.Thread(target=lambda: b_holder.append(pool.checkout()))
    t.start()
    t.join(JOIN)
    pool.checkin(b_holder[0])
    pool.checkin(a)  # both idle now; b was given back first
    assert pool.checkout() is a
    assert len(factory.made) == 2


def test_waiters_are_served_in_arrival_order():
    pool, _, _ = make(max_size=1)
    held = pool.checkout()
    results: List[list] = [[], [], []]
    threads = [blocked_checkout(pool, results[i], waiting=i + 1) for i in range(3)]
    for i, t in enumerate(threads):
        pool.checkin(held)
        t.join(JOIN)
        assert results[i] == [held], f"waiter {i} was not served next"
        assert all(not r for r in results[i + 1:])
        assert pool.stats()["waiting"] == 2 - i
    assert pool.stats()["checkouts"] == 4


def test_a_failed_open_gives_the_slot_back_to_the_next_waiter():
    pool, factory, _ = make(max_size=1)
    factory.fail_next = 1
    with pytest.raises(OSError):
        pool.checkout()
    assert pool.stats()["in_use"] == 0 and pool.stats()["size"] == 0
    conn = pool.checkout()
    assert conn is factory.made[0] and pool.stats()["in_use"] == 1


def test_a_tainted_socket_is_closed_at_checkin_and_its_slot_reused():
    pool, factory, _ = make(max_size=1)
    conn = pool.checkout()
    got: list = []
    t = blocked_checkout(pool, got, waiting=1)
    conn.is_tainted = True
    pool.checkin(conn)
    t.join(JOIN)
    assert conn.closed and got == [factory.made[1]]
    s = pool.stats()
    assert s["replaced"] == 1 and s["size"] == 1
    assert s["stale_replies"] == 0 + 1  # the closed socket's count is kept, plus the new one's


def test_an_idle_socket_is_health_checked_and_replaced_when_its_ping_fails():
    pool, factory, _ = make(max_size=1, health_check_interval=0.5)
    conn = pool.checkout()
    pool.checkin(conn)
    conn.last_used -= 1.0
    conn.ping_ok = False
    fresh = pool.checkout()
    assert conn.pings == 1 and conn.closed and fresh is factory.made[1]
    s = pool.stats()
    assert s["health_checks"] == 1 and s["replaced"] == 1 and s["size"] == 1 and s["in_use"] == 1


def test_no_health_check_when_disabled():
    pool, _, _ = make(max_size=1, health_check_interval=None)
    conn = pool.checkout()
    pool.checkin(conn)
    conn.last_used -= 3600
    assert pool.checkout() is conn and conn.pings == 0


def test_close_wakes_waiters_closes_idle_now_and_in_use_at_checkin_then_drains_once():
    pool, factory, drained = make(max_size=2)
    a, b = pool.checkout(), pool.checkout()
    pool.checkin(a)
    pool.checkout()  # a again
    got: list = []
    t = blocked_checkout(pool, got, waiting=1)
    pool.checkin(a)  # goes to the waiter
    t.join(JOIN)
    assert got == [a]
    pool.checkin(a)
    waiter: list = []
    pool.checkout()  # a, so that b and a are both in use
    t = blocked_checkout(pool, waiter, waiting=1)
    pool.close()
    t.join(JOIN)
    assert isinstance(waiter[0], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.checkout()
    assert not a.closed and not b.closed and drained == []
    pool.checkin(a)
    assert a.closed and drained == []
    pool.checkin(b)
    assert b.closed and drained == [1]
    pool.close()
    assert drained == [1] and pool.stats()["size"] == 0 and pool.is_closed


def test_close_with_only_idle_sockets_drains_at_once():
    pool, _, drained = make(max_size=2)
    a = pool.checkout()
    pool.checkin(a)
    pool.close()
    assert a.closed and drained == [1]


def test_pinning_is_reentrant_and_gives_the_socket_back_at_the_end():
    pool, _, _ = make(max_size=1)
    with pool.pin() as conn:
        assert pool.pinned() is conn
        with pool.pin() as inner:
            assert inner is conn
        assert pool.pinned() is conn
        assert pool.stats()["in_use"] == 1
    assert pool.pinned() is None and pool.stats()["idle"] == 1


def test_replacing_a_pinned_socket_keeps_its_slot():
    pool, factory, _ = make(max_size=1)
    with pool.pin() as conn:
        fresh = pool.replace(conn)
        pool.repin(fresh)
        assert conn.closed and pool.pinned() is fresh
        assert pool.stats()["size"] == 1 and pool.stats()["in_use"] == 1
    assert pool.stats()["idle"] == 1


def test_a_failed_replacement_then_takes_a_new_slot_not_an_extra_one():
    pool, factory, _ = make(max_size=1)
    conn = pool.checkout()
    factory.fail_next = 1
    with pytest.raises(OSError):
        pool.replace(conn)
    assert pool.stats()["size"] == 0 and pool.stats()["in_use"] == 0
    again = pool.replace(conn)  # its slot was given back: a plain checkout
    assert again is factory.made[1] and pool.stats()["in_use"] == 1
    with pytest.raises(PoolTimeout):
        pool.checkout(timeout=0)


def test_a_forked_child_starts_afresh_and_never_closes_the_parents_sockets():
    forks: List[int] = []
    pool, factory, _ = make(max_size=1, on_fork=lambda: forks.append(os.getpid()))
    parent_conn = pool.checkout()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanups
        try:
            child_conn = pool.checkout(timeout=0)  # the parent's slot is not the child's
            pool.checkin(parent_conn)  # from before the fork: ignored
            report = (f"{child_conn is not parent_conn} {parent_conn.closed} "
                      f"{pool.stats()['size']} {len(forks)}")
        except BaseException as exc:  # noqa: BLE001
            report = repr(exc)
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = os.read(read, 1000).decode()
    os.close(read)
    assert report == "True False 1 1"
    assert forks == [] and not parent_conn.closed and pool.stats()["in_use"] == 1


def test_a_replacement_that_must_take_a_new_slot_waits_no_longer_than_its_timeout():
    pool, factory, _ = make(max_size=1)  # checkout_timeout is 30 s
    conn = pool.checkout()
    factory.fail_next = 1
    with pytest.raises(OSError):
        pool.replace(conn)
    other = pool.checkout()  # the slot given back is taken by another checkout
    with pytest.raises(PoolTimeout, match="within 0s"):
        pool.replace(conn, timeout=0)  # the caller's budget, not the pool's 30 s
    assert pool.stats()["in_use"] == 1 and other is factory.made[1]
