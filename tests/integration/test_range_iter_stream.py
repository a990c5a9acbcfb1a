"""RangeIter streamed from one server-side iterator: one snapshot, credits, a socket held
for the iteration and given back when it ends, is closed or is collected, at most half
the pool's sockets so held, and a lost stream resumed after its last key."""
from __future__ import annotations

import gc
import os
import time

import pytest

from pyelevator_pool import Elevator, RetryPolicy, protocol, streams
from pyelevator_pool.testing import ServerProcess

N = 12_000
PAGE = 1000  # the smallest max_items a server takes: many pages, past the window


def key(i: int) -> bytes:
    return b"k%06d" % i


def until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """max_items 1000: a Range of N items is refused, an iteration is not."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("iter")), args=["--max-items", "1000"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def filled(small_server):
    with Elevator(endpoint=small_server.endpoint) as admin:
        admin.createdb("iter")
        admin.connect("iter")
        with admin.WriteBatch() as b:
            for i in range(N):
                b.Put(key(i), b"v%d" % i)
    return small_server


@pytest.fixture
def E(filled):
    with Elevator("iter", endpoint=filled.endpoint, max_size=4) as e:
        yield e


def expected(lo: int = 0, hi: int = N):
    return [[key(i), b"v%d" % i] for i in range(lo, hi)]


def test_an_iteration_over_more_than_max_items_is_one_stream_with_every_item_once(E):
    assert list(E.RangeIter(page_size=PAGE)) == expected()
    stats = E.pool.stats()
    assert stats["iterations_opened"] == 1
    assert stats["iterations"] == 0 and stats["in_use"] == 0


def test_the_shapes_bounds_and_prefix_are_the_servers(E):
    assert list(E.RangeIter(key(10), key(2500), page_size=PAGE, include_value=False)) == \
        [key(i) for i in range(10, 2501)]
    assert list(E.RangeIter(key(10), key(12), include_key=False)) == [b"v10", b"v11", b"v12"]
    assert list(E.RangeIter(prefix=b"k001", page_size=PAGE)) == expected(1000, 2000)
    assert list(E.RangeIter(b"zzz")) == []


def test_the_iteration_reads_one_snapshot_while_others_write(E, filled):
    it = E.RangeIter(page_size=PAGE)
    first = next(it)
    with Elevator("iter", endpoint=filled.endpoint) as other:
        # far past the pages read ahead (window 4): a SLICE per page would see these
        for i in range(N // 2, N, 7):
            other.Delete(key(i))
        other.Put(key(N // 2) + b"-new", b"x")
        try:
            rest = list(it)
        finally:
            with other.WriteBatch() as b:
                for i in range(N // 2, N, 7):
                    b.Put(key(i), b"v%d" % i)
                b.Delete(key(N // 2) + b"-new")
    assert [first] + rest == expected()


def test_closing_or_dropping_the_iterator_gives_the_socket_back_and_closes_the_stream(E):
    for drop in ("close", "collect"):
        it = E.RangeIter(page_size=PAGE)
        assert next(it) == [key(0), b"v0"]
        assert E.pool.stats()["iterations"] == 1
        if drop == "close":
            it.close()
        else:
            del it
            gc.collect()
        stats = E.pool.stats()
        assert stats["iterations"] == 0 and stats["in_use"] == 0, drop
        # the socket serves the next calls right; the pages sent ahead are dropped
        stale = E.pool.stats()["stale_replies"]
        assert E.Get(key(5)) == b"v5"
        assert list(E.RangeIter(key(0), key(2))) == expected(0, 3)
        assert E.pool.stats()["stale_replies"] - stale <= protocol.DEFAULT_WINDOW


def test_at_most_half_the_sockets_stream_and_the_others_page(E):
    its = [E.RangeIter(page_size=PAGE) for _ in range(3)]
    firsts = [next(it) for it in its]
    assert E.pool.stats()["iterations"] == 2  # max_size 4: the third pages with SLICE
    assert all(f == [key(0), b"v0"] for f in firsts)
    for first, it in zip(firsts, its):
        assert [first] + list(it) == expected()
    assert E.pool.stats()["iterations"] == 0


def test_a_one_socket_pool_iterates_while_the_thread_writes(filled):
    with Elevator("iter", endpoint=filled.endpoint, max_size=1, checkout_timeout=2) as e:
        for k, v in e.RangeIter(key(0), key(1500), page_size=PAGE):
            e.Put(k, v)  # would wait for the socket an iteration held
        assert e.pool.stats()["iterations_opened"] == 0


def test_a_stream_left_idle_resumes_after_its_last_key(E, monkeypatch):
    it = E.RangeIter(page_size=PAGE)
    got = [next(it) for _ in range(1500)]
    monkeypatch.setattr(streams, "RESUME_IDLE", 0.0)
    time.sleep(0.01)
    got.extend(it)
    assert got == expected()
    assert E.pool.stats()["iterations_opened"] >= 2  # a new stream for every late page
    assert E.Get(key(1)) == b"v1"  # the socket the old stream left is still good


def test_a_server_killed_mid_iteration_is_resumed_after_the_last_key(tmp_path):
    (tmp_path / "data").mkdir()
    with ServerProcess(str(tmp_path / "data"), args=["--max-items", "1000"]) as srv:
        with Elevator(endpoint=srv.endpoint, retry=RetryPolicy(), timeout=30) as e:
            with e.WriteBatch() as b:
                for i in range(N):
                    b.Put(key(i), b"v%d" % i)
            it = e.RangeIter(page_size=PAGE)
            got = [next(it) for _ in range(2500)]
            srv.restart(kill=True)
            got.extend(it)
            assert got == expected()
            assert e.pool.stats()["iterations_opened"] >= 2


def test_an_original_server_without_streamed_iterations_is_paged(filled):
    with Elevator("iter", endpoint=filled.endpoint) as e:
        e.pool.facts.set_limits({"max_items": 1000})  # no stream_iter: SLICE pages
        assert list(e.RangeIter(key(0), key(2999), page_size=PAGE)) == expected(0, 3000)
        assert e.pool.stats()["iterations_opened"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_goes_on_with_its_own_socket(E):
    it = E.RangeIter(page_size=PAGE)
    first = next(it)
    pid = os.fork()
    if pid == 0:  # the child: never touches the parent's socket or stream
        code = 1
        try:
            code = 0 if [first] + list(it) == expected() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert [first] + list(it) == expected()
