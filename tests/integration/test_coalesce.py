"""Coalescing against the real server: each rule a merged caller keeps.

A merge is made certain, not hoped for: the server is stopped (SIGSTOP), so the calls
sent on their own stay in flight and the next ones queue; the test waits until the
pool reports them queued, then lets the server go on (SIGCONT).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List

import pytest

from pyelevator_pool import Elevator, ElevatorPool, errors
from pyelevator_pool.pool import ALONE_IN_FLIGHT
from pyelevator_pool.protocol import PING
from rawclient import run_forked, wait_until

FAR = 60.0


@pytest.fixture
def pool(fresh_server):
    # no heartbeats: a stopped server would miss them, and its connections be dropped
    p = ElevatorPool(fresh_server.endpoint, coalesce=True, heartbeat_interval=0)
    # Open and handshake enough sockets now: a stopped server cannot accept new ones.
    conns = [p.checkout() for _ in range(ALONE_IN_FLIGHT + 4)]
    for conn in conns:
        assert conn.request(PING, [], None, timeout=10.0).datas == [b"PONG"]
    for conn in conns:
        p.checkin(conn)
    yield p
    p.close()


@contextmanager
def stopped(server) -> Iterator[None]:
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


class Calls:
    """Calls run in threads; each result (or exception) kept under its name."""

    def __init__(self) -> None:
        self.results: Dict[str, Any] = {}
        self.threads: List[threading.Thread] = []

    def start(self, name: str, call: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                self.results[name] = call()
            except Exception as exc:  # the test inspects it
                self.results[name] = exc

        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def join(self) -> None:
        for t in self.threads:
            t.join(FAR)
            assert not t.is_alive(), f"{t.name} did not finish"


def fill_the_pipe(calls: Calls, pool: ElevatorPool, call: Callable[[], Any]) -> None:
    """As many lone calls in flight as go before callers queue (the server is stopped)."""
    for i in range(ALONE_IN_FLIGHT):
        calls.start(f"alone{i}", call)
    assert wait_until(lambda: pool.stats()["in_use"] >= ALONE_IN_FLIGHT, timeout=30.0)


def queue(calls: Calls, pool: ElevatorPool, name: str, call: Callable[[], Any]) -> None:
    """Start ``call`` and wait until it is queued (so queue order is the start order)."""
    before = pool.stats()["queued"]
    calls.start(name, call)
    assert wait_until(lambda: pool.stats()["queued"] == before + 1, timeout=30.0), name


def test_concurrent_reads_merge_and_each_caller_gets_its_own_answer(fresh_server, pool):
    E = Elevator(pool=pool)
    text = Elevator(pool=pool, decode_responses=True)  # same database: same merges
    for k in ("a", "b", "c"):
        E.Put(k, k * 3)
    calls = Calls()
    with stopped(fresh_server):
        fill_the_pipe(calls, pool, lambda: E.Get("a"))
        queue(calls, pool, "get", lambda: E.Get("b"))
        queue(calls, pool, "missing", lambda: E.Get("nope"))
        queue(calls, pool, "exists", lambda: E.Exists("c"))
        queue(calls, pool, "not_exists", lambda: E.Exists("nope"))
        # a small MGet joins the Gets when it reads with the same fill_cache (GET's)
        queue(calls, pool, "mget", lambda: E.MGet(["c", "nope", "a"], fill_cache=True))
        queue(calls, pool, "text", lambda: text.Get("b"))
    calls.join()
    r = calls.results
    assert [r[f"alone{i}"] for i in range(ALONE_IN_FLIGHT)] == [b"aaa"] * ALONE_IN_FLIGHT
    assert r["get"] == b"bbb" and r["text"] == "bbb"
    assert isinstance(r["missing"], errors.ElevatorKeyError) and isinstance(r["missing"], KeyError)
    assert "nope" in str(r["missing"]) and "GET" in str(r["missing"])
    assert r["exists"] is True and r["not_exists"] is False
    assert r["mget"] == [b"ccc", None, b"aaa"]
    stats = pool.stats()
    assert stats["merged_calls"] >= 6 and 1 <= stats["merged_requests"] < stats["merged_calls"]
    assert stats["queued"] == 0


def test_a_write_queued_past_its_deadline_is_never_sent(fresh_server, pool):
    E = Elevator(pool=pool)
    E.Put("here", "1")
    calls = Calls()
    with stopped(fresh_server):
        fill_the_pipe(calls, pool, lambda: E.Put("here", "2"))
        started = time.monotonic()
        with pytest.raises(errors.ElevatorTimeout) as info:
            E.Put("queued", "x", timeout=0.5)
        waited = time.monotonic() - started
    calls.join()
    assert info.value.request_sent is False and "never sent" in str(info.value)
    assert 0.4 < waited < 20.0
    with pytest.raises(KeyError):
        E.Get("queued")  # nothing was written, not even later
    assert pool.stats()["timeouts"] >= 1


def test_a_merged_caller_past_its_deadline_stops_waiting_and_the_others_are_answered(
        fresh_server, pool):
    E = Elevator(pool=pool)
    E.Put("k", "v")
    calls = Calls()
    with stopped(fresh_server):
        # the lone calls time out first, which sends the queued two as one MGET
        fill_the_pipe(calls, pool, lambda: E.Get("k", timeout=1.0))
        queue(calls, pool, "impatient", lambda: E.Get("k", timeout=6.0))
        queue(calls, pool, "patient", lambda: E.Get("k", timeout=FAR))
        for t in calls.threads[:ALONE_IN_FLIGHT + 1]:
            t.join(FAR)
    calls.join()
    impatient = calls.results["impatient"]
    assert isinstance(impatient, errors.ElevatorTimeout), impatient
    assert impatient.request_sent is True  # it was in the merged request
    assert calls.results["patient"] == b"v"
    assert pool.stats()["merged_requests"] >= 1


def test_a_bad_argument_is_refused_before_it_can_spoil_a_merged_batch(fresh_server, pool):
    E = Elevator(pool=pool)
    calls = Calls()
    with stopped(fresh_server):
        fill_the_pipe(calls, pool, lambda: E.Put("first", "1"))
        for i in range(3):
            queue(calls, pool, f"good{i}", lambda i=i: E.Put(f"good{i}", f"v{i}"))
        # refused at once, while the server cannot answer anything
        with pytest.raises(TypeError, match="value"):
            E.Put("bad", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key"):
            E.Delete(None)  # type: ignore[arg-type]
        assert pool.stats()["queued"] == 3
    calls.join()
    assert all(calls.results[f"good{i}"] is None for i in range(3))
    assert E.MGet(["good0", "good1", "good2", "bad"]) == [b"v0", b"v1", b"v2", None]


def test_concurrent_writes_to_one_key_apply_in_queue_order(fresh_server, pool):
    E = Elevator(pool=pool)
    calls = Calls()
    with stopped(fresh_server):
        fill_the_pipe(calls, pool, lambda: E.Put("other", "x"))
        queue(calls, pool, "w0", lambda: E.Put("k", "0"))
        queue(calls, pool, "d", lambda: E.Delete("k"))
        for i in range(1, 6):
            queue(calls, pool, f"w{i}", lambda i=i: E.Put("k", str(i)))
        queue(calls, pool, "gone", lambda: E.Put("gone", "x"))
        queue(calls, pool, "gone_d", lambda: E.Delete("gone"))
    calls.join()
    assert all(v is None for v in calls.results.values()), calls.results
    assert E.Get("k") == b"5"
    assert E.Exists("gone") is False
    assert pool.stats()["merged_calls"] >= 9


def test_no_merging_when_coalesce_is_off(fresh_server, pool):
    plain = Elevator(pool=pool, coalesce=False)
    plain.Put("k", "v")
    calls = Calls()
    with stopped(fresh_server):
        for i in range(ALONE_IN_FLIGHT + 3):
            calls.start(f"c{i}", lambda: plain.Get("k"))
        # every one of them is out on a socket of its own, none queued
        assert wait_until(lambda: pool.stats()["in_use"] == ALONE_IN_FLIGHT + 3, timeout=30.0)
        assert pool.stats()["queued"] == 0
    calls.join()
    assert set(calls.results.values()) == {b"v"}
    assert pool.stats()["merged_calls"] == 0


def test_coalesce_is_a_pool_option_its_clients_follow(fresh_server):
    with ElevatorPool(fresh_server.endpoint, coalesce=False) as p:
        assert Elevator(pool=p).coalesce is False
        assert Elevator(pool=p, coalesce=True).coalesce is True
        assert p.derive().coalesce is False
    with Elevator(endpoint=fresh_server.endpoint, coalesce=False) as E:
        assert E.coalesce is False
    with pytest.raises(TypeError, match="coalesce"):
        ElevatorPool(fresh_server.endpoint, coalesce="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coalesce"):
        Elevator(endpoint=fresh_server.endpoint, coalesce=1)  # type: ignore[arg-type]


def test_a_forked_child_does_not_wait_behind_its_parents_queue(fresh_server, pool):
    E = Elevator(pool=pool)
    E.Put("k", "v")
    calls = Calls()
    os.kill(fresh_server.pid, signal.SIGSTOP)
    try:
        fill_the_pipe(calls, pool, lambda: E.Get("k"))
        queue(calls, pool, "queued", lambda: E.Get("k"))

        def child() -> Dict[str, Any]:
            os.kill(fresh_server.pid, signal.SIGCONT)
            # inherited: four calls in flight and one queued, of threads the child lacks
            return {"value": E.Get("k", timeout=10.0).decode(),
                    "queued": pool.stats()["queued"]}

        report, code = run_forked(child, timeout=30.0)
    finally:
        os.kill(fresh_server.pid, signal.SIGCONT)
    calls.join()
    assert code == 0 and report == {"value": "v", "queued": 0}, report
    assert set(calls.results.values()) == {b"v"}


def test_merged_calls_ride_out_a_server_kill_with_no_wrong_answer(fresh_server):
    """16 threads of Gets and Puts through one coalescing client while the server is
    SIGKILLed and restarted: every answer right, every acknowledged write kept, and the
    only errors transport errors of calls the retries could not save."""
    E = Elevator(endpoint=fresh_server.endpoint, timeout=30.0)
    E.Put("fixed", "value")
    threads, per_thread = 16, 150
    acked: Dict[int, int] = {}
    wrong: List[Any] = []
    unexpected: List[BaseException] = []
    done = [0]
    stop_at = time.monotonic() + 120.0

    def worker(t: int) -> None:
        key = f"w{t}"
        for j in range(per_thread):
            if time.monotonic() > stop_at:
                return
            try:
                E.Put(key, str(j))
                acked[t] = j
                if E.Get("fixed") != b"value":
                    wrong.append(("fixed", t, j))
                got = int(E.Get(key))
                if got < j:  # our own acknowledged write, or nothing older
                    wrong.append((key, got, j))
            except errors.TransportError:
                pass
            except Exception as exc:  # anything else is a defect
                unexpected.append(exc)
            done[0] += 1

    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    assert wait_until(lambda: done[0] >= threads * per_thread // 4, timeout=120.0)
    fresh_server.restart(kill=True)
    for t in ts:
        t.join(180.0)
        assert not t.is_alive()
    assert not wrong and not unexpected, (wrong, unexpected)
    for t, j in acked.items():
        assert int(E.Get(f"w{t}")) >= j  # no acknowledged write lost
    assert E.pool.stats()["merged_calls"] > 0
    E.close()
