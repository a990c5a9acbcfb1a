"""Defects found by a review of the client side, each pinned by a test against the real
server: a monitor socket leaked by a socket that failed to connect, a bulk load in a forked
child on the parent's context, RangeIter/dump over the server's max_items, and a pinned
socket whose failed replacement gave its slot back twice.
"""
from __future__ import annotations

import errno
import gc
import os
import threading
from typing import List

import pytest
import tenacity
import zmq

from pyelevator_pool import Elevator, ElevatorPool, PoolTimeout, RetryPolicy, bulk, errors, protocol
from pyelevator_pool.server.handlers import MIN_LIMIT
from pyelevator_pool.testing import ServerProcess
from rawclient import run_forked

pytestmark = pytest.mark.timeout(120)


def _open_sockets(ctx: zmq.Context) -> List[zmq.Socket]:
    return [s for s in gc.get_objects()
            if isinstance(s, zmq.Socket) and s.context is ctx and not s.closed]


# -------------------------------------------------------- connection that cannot connect

def test_a_socket_that_cannot_connect_leaves_no_socket_open_and_close_does_not_hang():
    pool = ElevatorPool("tcp://127.0.0.1:notaport")  # HOST:PORT in form, refused by connect()
    with pytest.raises(errors.ConnectionError) as info:
        pool.checkout()
    kept = info.value  # a caller keeps the error (to log it later): its frames stay alive
    ctx = pool._context
    leaked = _open_sockets(ctx)
    closer = threading.Thread(target=pool.close, daemon=True)
    closer.start()
    closer.join(10.0)
    hung = closer.is_alive()
    for sock in leaked:  # let the hung term() finish whatever the outcome
        sock.close(0)
    closer.join(10.0)
    assert leaked == [], f"sockets left open by a failed Connection: {leaked} ({kept})"
    assert not hung, "pool.close() hung on a socket the failed Connection left open"


# ------------------------------------------------------------------- fork and bulk.load

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_bulk_load_in_a_forked_child_writes_through_the_childs_own_context(server):
    keys = [b"review:fork:%02d" % i for i in range(20)]
    with Elevator(endpoint=server.endpoint, timeout=3.0) as e:
        e.Put(b"review:fork:parent", b"p")  # the parent's pool and context are in use
        def child() -> dict:
            report = bulk.load(e, [(k, k + b"=v") for k in keys], timeout=3.0)
            return {"pairs": report.pairs}

        report, code = run_forked(child, timeout=30.0)
        assert report == {"pairs": len(keys)}
        assert code == 0
        assert e.MGet(keys) == [k + b"=v" for k in keys]
        assert e.Get(b"review:fork:parent") == b"p"  # the parent's pool still works


# --------------------------------------------------------------- RangeIter over max_items

LIMITED_N = MIN_LIMIT + MIN_LIMIT // 2  # more items than the server sends in one reply


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    srv = ServerProcess(str(tmp_path_factory.mktemp("review-limits")),
                        args=["--max-items", str(MIN_LIMIT)])
    srv.start()
    with Elevator(endpoint=srv.endpoint) as e:
        for lo in range(0, LIMITED_N, 500):
            with e.WriteBatch() as wb:
                for i in range(lo, min(LIMITED_N, lo + 500)):
                    wb.Put(b"it:%05d" % i, b"v%d" % i)
    yield srv
    srv.stop()


def test_rangeiter_with_its_default_page_over_max_items_pages_within_the_limit(limited):
    with Elevator(endpoint=limited.endpoint) as e:
        assert e.pool.facts.cached_limits() is None  # nothing cached yet
        got = list(e.RangeIter(b"it:", b"it:99999"))
    assert got == [[b"it:%05d" % i, b"v%d" % i] for i in range(LIMITED_N)]


def test_rangeiter_pages_within_max_items_even_when_cached_limits_were_stale(limited):
    with Elevator(endpoint=limited.endpoint, decode_responses=True) as e:
        e.pool.facts.set_limits({})  # as cached from a server that had no limit then
        got = list(e.RangeIter(b"it:", include_value=False, page_size=5 * MIN_LIMIT))
    assert got == ["it:%05d" % i for i in range(LIMITED_N)]


def test_dump_over_max_items_with_the_default_page_size(limited):
    with Elevator(endpoint=limited.endpoint) as e:
        got = list(bulk.dump(e, prefix=b"it:"))
    assert got == [(b"it:%05d" % i, b"v%d" % i) for i in range(LIMITED_N)]


# ------------------------------------------------------------ pinned socket replacement

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


# ------------------------------------------------------------ argument validation

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
