"""Faults: the server killed (SIGKILL) and restarted under load, late (stale) replies, a peer
without request ids (the Lazy Pirate fallback), health checks, fork.

Every test runs the real server, except the Lazy Pirate ones: they need a peer that behaves
like the original Elevator server (no ``id`` echoed, a reply that comes too late), which
this project's server never does, so a tiny scripted ROUTER plays it.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Callable, Dict, List, Tuple

import pytest
import tenacity
import zmq

from pyelevator_pool import NO_RETRY, Elevator, ElevatorPool, ElevatorTimeout, RetryPolicy, protocol
from pyelevator_pool.connection import Connection

from rawclient import run_forked, wait_until

JOIN = 30.0  # seconds: the longest any test thread may take


@pytest.fixture
def make_pool():
    """ElevatorPool factory; every pool is closed afterwards, whatever the test's outcome."""
    pools: List[ElevatorPool] = []

    def make(endpoint: str, **kwargs) -> ElevatorPool:
        pools.append(ElevatorPool(endpoint, **kwargs))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


# ------------------------------------------------------------ kill and restart

def test_server_sigkill_and_restart_under_16_threads_no_wrong_answer_no_lost_write(fresh_server,
                                                                                   make_pool):
    srv = fresh_server
    # The default policy (jittered backoff, stop_never) within a 30 s deadline per call:
    # far more than the outage (a server restart takes about a second here).
    pool = make_pool(srv.endpoint, max_size=16, timeout=30.0, retry=RetryPolicy())
    E = Elevator(pool=pool)
    known = {b"known/%03d" % i: b"value-%03d" % i for i in range(200)}
    with E.WriteBatch() as batch:
        for k, v in known.items():
            batch.Put(k, v)
    known_keys = sorted(known)

    nthreads = 16
    ops = [0] * nthreads
    acked: List[List[Tuple[bytes, bytes]]] = [[] for _ in range(nthreads)]
    wrong: List[str] = []
    escaped: List[BaseException] = []
    stop = threading.Event()

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        try:
            for n in range(20_000):
                if stop.is_set():
                    return
                if n % 2 == 0:
                    key, value = b"w/%02d/%06d" % (tid, n), b"v%d.%d" % (tid, n)
                    E.Put(key, value)
                    acked[tid].append((key, value))  # acknowledged: must survive
                else:
                    if acked[tid] and rng.random() < 0.5:
                        key, expected = rng.choice(acked[tid])
                    else:
                        key = rng.choice(known_keys)
                        expected = known[key]
                    got = E.Get(key)
                    if got != expected:
                        wrong.append(f"thread {tid}: Get({key!r}) = {got!r}, expected {expected!r}")
                ops[tid] += 1
        except BaseException as exc:  # noqa: BLE001 - no error may escape: reported below
            escaped.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    outages: List[float] = []
    try:
        assert wait_until(lambda: min(ops) >= 30 or bool(escaped), timeout=JOIN)
        ops_before = sum(ops)
        for cycle in range(2):
            mark = list(ops)
            srv.kill()
            killed = time.monotonic()
            srv.start()  # same port, same data dir
            outages.append(time.monotonic() - killed)
            # every thread goes on working after the restart
            assert wait_until(lambda: all(o - m >= 40 for o, m in zip(ops, mark)) or bool(escaped),
                              timeout=JOIN), (cycle, ops, mark, escaped[:3])
    finally:
        stop.set()
        for t in threads:
            t.join(JOIN)
    assert not any(t.is_alive() for t in threads)

    written = [kv for per_thread in acked for kv in per_thread]
    lost: List[bytes] = []
    for i in range(0, len(written), 5000):
        chunk = written[i:i + 5000]
        values = E.MGet([k for k, _ in chunk])
        lost.extend(k for (k, v), got in zip(chunk, values) if got != v)
    stats = pool.stats()
    print(f"\nkill -9 and restart (x2) under {nthreads} threads: outages "
          f"{', '.join(f'{o:.2f}s' for o in outages)}, "
          f"{sum(ops)} operations ({ops_before} before the kill), {len(written)} acknowledged "
          f"writes, retries {stats['retries']}, wrong answers {len(wrong)}, "
          f"lost writes {len(lost)}, errors escaped {len(escaped)}; pool {stats}")
    assert escaped == [], escaped[:3]
    assert wrong == [], wrong[:10]
    assert lost == [], lost[:10]
    assert stats["in_use"] == 0 and stats["size"] <= 16
    pool.close()


def test_retry_stop_is_honoured_while_the_server_is_down(fresh_server, make_pool):
    """stop_after_delay(0.3) gives up within about connect_timeout of 0.3 s, counted
    from the call's start, even though the call's own timeout is 10 s."""
    pool = make_pool(fresh_server.endpoint, timeout=10.0, connect_timeout=0.2,
                     retry=RetryPolicy(stop=tenacity.stop_after_delay(0.3)))
    E = Elevator(pool=pool)
    E.Put("stop/k", "v")
    fresh_server.kill()
    started = time.monotonic()
    with pytest.raises(ElevatorTimeout) as info:
        E.Put("stop/k2", "v")
    elapsed = time.monotonic() - started
    assert info.value.request_sent is False
    assert elapsed < 0.3 + 0.2 + 0.5 + 1.0  # stop + one connect wait + one backoff + slack
    assert pool.stats()["retries"] >= 1
    fresh_server.start()
    E.Put("stop/k3", "v")
    assert E.MGet(["stop/k", "stop/k3"]) == [b"v", b"v"]


def test_after_a_long_outage_a_short_retry_stop_still_reconnects(fresh_server, make_pool):
    """An outage long enough for libzmq's reconnect backoff to reach its cap: once the
    server is back, a call with stop_after_delay(0.3) must see a reconnect (the cap fits
    within connect_timeout; at 1 s it did not, and the call failed)."""
    pool = make_pool(fresh_server.endpoint, timeout=10.0, connect_timeout=0.2,
                     retry=RetryPolicy(stop=tenacity.stop_after_delay(0.3)))
    E = Elevator(pool=pool)
    E.Put("outage/k", "v")
    fresh_server.kill()
    for _ in range(6):  # about 2 s down; each call fails as never sent
        with pytest.raises(ElevatorTimeout):
            E.Put("outage/k2", "v")
    fresh_server.start()
    for i in range(3):
        E.Put(b"outage/after/%d" % i, b"v")  # within 0.3 s + connect_timeout each
    assert E.Get("outage/k") == b"v"


def test_request_slower_than_fast_poll_after_a_reconnect_is_not_reported_lost(fresh_server,
                                                                               make_pool):
    # A disconnect noticed (by the socket monitor) before a request was sent belongs to
    # an earlier connection: it must not fail a later request that is merely slow.
    srv = fresh_server
    pool = make_pool(srv.endpoint, max_size=1, retry=NO_RETRY, timeout=20.0)
    E = Elevator(pool=pool)
    with E.WriteBatch() as batch:
        for i in range(60_000):
            batch.Put(b"slow/%06d" % i, b"x" * 32)
    srv.kill()
    srv.start()
    assert wait_until(lambda: E.Ping(timeout=5.0), timeout=20.0)  # reconnected
    start = time.monotonic()
    items = E.Range(b"slow/", b"slow/\xff")  # slower than the 20 ms fast poll
    assert len(items) == 60_000, f"took {time.monotonic() - start:.3f}s"
    E.createdb("after_reconnect")  # not retried: a spurious failure would escape
    assert "after_reconnect" in E.listdb()
    assert pool.stats()["replaced"] == 0
    pool.close()


# ------------------------------------------------------------------ stale replies

BIG = [b"stale/big/%06d" % i for i in range(100_000)]


@pytest.mark.parametrize("mode,nthreads,max_size", [
    ("affinity", 1, 1),   # one socket, reused by affinity for every call
    ("affinity", 4, 4),   # each thread's own socket, reused by affinity
    ("pinned", 2, 2),     # `with pool.connection()`: the same socket, explicitly
])
def test_stale_reply_probe_huge_mget_times_out_then_get_returns_its_own_value(
        server, make_pool, mode, nthreads, max_size):
    pool = make_pool(server.endpoint, max_size=max_size, checkout_timeout=JOIN)
    E = Elevator(pool=pool)
    total = 20
    rounds = total // nthreads
    # one huge MGet with time enough first: whatever a first big call of a pool fetches
    # (the server's limits) is fetched here, so each probe below times out in its MGet
    assert E.MGet(BIG[:1] + BIG, timeout=JOIN)[:1] == [None]
    # every socket the probes may use is open and has seen the server echo an id: a
    # socket whose very first request times out cannot know yet that a late reply will
    # be recognised, so it is replaced (and its late reply lost with it); thread
    # affinity does not keep a thread off a socket it never used when threads start
    # together (seen under load)
    assert ping_every_socket(pool, opening=max_size)
    wrong: List[str] = []
    sockets: Dict[int, set] = {}
    # a timeout whose request was sent leaves a late reply; one that was not (the server's
    # TIMEOUT answer, or a socket opened by this call that had not connected yet) leaves none
    sent_timeouts: List[int] = []

    def probe(tid: int) -> None:
        own = set()
        for i in range(rounds):
            key, value = b"stale/own/%d/%d" % (tid, i), b"%s-%d-%d" % (mode.encode(), tid, i)
            E.Put(key, value)
            if mode == "pinned":
                with pool.connection() as conn:
                    own.add(conn)
                    with pytest.raises(ElevatorTimeout) as info:
                        E.MGet(BIG, timeout=0.002)
                    got = E.Get(key)
            else:
                with pytest.raises(ElevatorTimeout) as info:
                    E.MGet(BIG, timeout=0.002)
                got = E.Get(key)
            if info.value.request_sent:
                sent_timeouts.append(tid)
            if got != value:
                wrong.append(f"round {i}: Get({key!r}) = {got!r}")
        sockets[tid] = own

    errs: List[BaseException] = []

    def body(tid: int) -> None:
        try:
            probe(tid)
        except BaseException as exc:  # noqa: BLE001
            errs.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN * 2)
    assert not any(t.is_alive() for t in threads)
    assert errs == [], errs[:3]
    assert wrong == []
    if mode == "pinned":  # each thread's pinned blocks got its own socket back every time
        assert all(len(s) == 1 for s in sockets.values())
    assert pool.stats()["timeouts"] == total
    timeouts = len(sent_timeouts)
    # the server's TIMEOUT answers (meta.timeout: not started) are among those not sent
    assert pool.stats()["server_timeouts"] <= total - timeouts
    # every late MGET reply is recognised by its id and dropped, on sockets kept open
    assert wait_until(lambda: ping_every_socket(pool)
                      and pool.stats()["stale_replies"] >= timeouts, timeout=JOIN, step=0.05)
    stats = pool.stats()
    print(f"\nstale-reply probe ({mode}, {nthreads} threads, max_size={max_size}): "
          f"{total} MGET timeouts ({timeouts} sent, {stats['server_timeouts']} answered "
          f"TIMEOUT), {stats['stale_replies']} stale replies dropped, "
          f"{len(wrong)} wrong answers, {stats['replaced']} sockets replaced")
    assert stats["stale_replies"] == timeouts
    assert stats["replaced"] == 0 and stats["size"] <= max_size


def ping_every_socket(pool: ElevatorPool, opening: int = 0) -> bool:
    """PING on every open socket of ``pool`` (reading the late replies queued on each),
    opening sockets first until it has ``opening``."""
    conns = [pool.checkout(timeout=JOIN)
             for _ in range(max(opening, pool.stats()["size"]))]
    try:
        return all(conn.ping(timeout=5.0) for conn in conns)
    finally:
        for conn in conns:
            pool.checkin(conn)


# ---------------------------------------------- a peer without ids (Lazy Pirate)

class ScriptedRouter:
    """A ROUTER answering like the original Elevator server: ``reply(request)`` returns
    ``(delay_seconds, [header_dict, datas])`` pairs to send for each request (none: no
    answer). Records which peer identity sent each request."""

    def __init__(self, reply: Callable[[protocol.Request], List[Tuple[float, dict, object]]]) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.reply = reply
        self.seen: List[Tuple[bytes, protocol.Request]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending: List[Tuple[float, List[bytes]]] = []
        while not self._stop.is_set():
            if self.sock.poll(5):
                ident, frame = self.sock.recv_multipart()
                req = protocol.decode_request(frame)
                self.seen.append((ident, req))
                for delay, header, datas in self.reply(req):
                    frames = [ident, protocol.msgpack.packb(header, use_bin_type=True),
                              protocol.msgpack.packb({"datas": datas}, use_bin_type=True)]
                    pending.append((time.monotonic() + delay, frames))
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                self.sock.send_multipart(item[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(JOIN)
        self.sock.close(0)
        self.ctx.term()


def header(**extra) -> dict:
    return {"status": 1, "err_code": None, "err_msg": None, "compression": False, **extra}


@pytest.fixture
def router_factory():
    routers: List[ScriptedRouter] = []

    def make(reply) -> ScriptedRouter:
        routers.append(ScriptedRouter(reply))
        return routers[-1]

    yield make
    for r in routers:
        r.close()


@pytest.fixture
def connect():
    """Open a bare Connection; every one is closed, and the context terminated, afterwards."""
    ctx = zmq.Context()
    conns: List[Connection] = []

    def make(endpoint: str) -> Connection:
        conns.append(Connection(ctx, endpoint, heartbeat_interval=0))
        return conns[-1]

    yield make
    for conn in conns:
        conn.close()
    ctx.term()


def original_server(req: protocol.Request):
    """No ids; GET 'slow' answered after 0.3 s; other GETs echo their key as the value."""
    if req.cmd == protocol.PING:
        return [(0, header(), ["PONG"])]
    if req.cmd == protocol.GET:
        key = req.args[0]
        return [(0.3 if key == b"slow" else 0, header(), [b"value of " + key])]
    return [(0, header(), None)]


def test_connection_without_echoed_ids_is_tainted_after_a_timeout(router_factory, connect):
    router = router_factory(original_server)
    conn = connect(router.endpoint)
    reply = conn.request(protocol.PING, [], timeout=5.0)
    assert reply.datas == [b"PONG"] and conn.ids_echoed is False and not conn.is_tainted
    with pytest.raises(ElevatorTimeout):
        conn.request(protocol.GET, [b"slow"], "uid", timeout=0.05)
    assert conn.is_tainted  # its late reply could not be told from the next one's


def test_pool_replaces_a_socket_without_ids_after_timeout_so_late_reply_is_never_taken(
        router_factory, make_pool):
    router = router_factory(original_server)
    pool = make_pool(router.endpoint, max_size=1, retry=NO_RETRY, heartbeat_interval=0)
    try:
        assert pool.request(protocol.GET, [b"a"], "uid", timeout=5.0).datas == [b"value of a"]
        with pytest.raises(ElevatorTimeout):
            pool.request(protocol.GET, [b"slow"], "uid", timeout=0.05)
        assert pool.stats()["replaced"] == 1 and pool.stats()["size"] == 0
        # The late reply to 'slow' arrives 0.3 s later, on the closed socket: the next
        # request, on a new socket, gets its own answer.
        start = time.monotonic()
        for key in (b"b", b"c"):
            assert pool.request(protocol.GET, [key], "uid", timeout=5.0).datas == [b"value of " + key]
        assert time.monotonic() - start < 5
        idents = [ident for ident, _ in router.seen]
        assert idents[0] == idents[1] and idents[2] != idents[1]  # a new socket after the timeout
        assert idents[3] == idents[2]
        assert pool.stats()["replaced"] == 1 and pool.stats()["size"] == 1
    finally:
        pool.close()


def test_connection_with_ids_drops_a_reply_carrying_another_id(router_factory, connect):
    def stale_then_right(req: protocol.Request):
        return [(0, header(id=req.id + 1000), [b"somebody else's"]),
                (0.01, header(id=req.id), [b"mine"])]

    router = router_factory(stale_then_right)
    conn = connect(router.endpoint)
    assert conn.request(protocol.GET, [b"k"], "uid", timeout=5.0).datas == [b"mine"]
    assert conn.stale_replies == 1 and conn.ids_echoed is True and not conn.is_tainted


def test_connection_with_echoed_ids_stays_clean_after_a_timeout(server, connect):
    conn = connect(server.endpoint)
    assert conn.request(protocol.PING, [], timeout=5.0).datas == [b"PONG"]
    assert conn.ids_echoed is True
    uid = conn.request(protocol.DBCONNECT, ["default"], timeout=5.0).datas[0].decode()
    # The server may answer TIMEOUT (not started) within the 2 ms: then no reply comes late.
    for _attempt in range(20):
        answered_timeouts = conn.server_timeouts
        with pytest.raises(ElevatorTimeout):
            conn.request(protocol.MGET, [BIG, False], uid, timeout=0.002)
        if conn.server_timeouts == answered_timeouts:
            break  # the client stopped waiting first: its reply is still to come
    else:
        pytest.fail("the server answered TIMEOUT within 2 ms every time")
    assert not conn.is_tainted  # the late reply will be recognised by its id
    assert conn.request(protocol.PING, [], timeout=5.0).datas == [b"PONG"]
    assert wait_until(lambda: conn.ping(timeout=5.0) and conn.stale_replies == 1,
                      timeout=JOIN, step=0.02)
    assert not conn.is_tainted


# ------------------------------------------------------------------- health

def test_health_check_replaces_an_idle_socket_whose_server_was_restarted(fresh_server, make_pool):
    srv = fresh_server
    interval = 0.05
    pool = make_pool(srv.endpoint, max_size=1, health_check_interval=interval, timeout=30.0)
    E = Elevator(pool=pool)
    E.Put("hc/k", "v")
    old = pool.checkout()
    pool.checkin(old)
    before = pool.stats()
    srv.kill()
    assert wait_until(lambda: time.monotonic() - old.last_used > interval)
    result: List[object] = []

    def call() -> None:
        try:
            result.append(E.Get("hc/k"))
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # the idle socket is PINGed while the server is down: no answer, so it is replaced
    assert wait_until(lambda: pool.stats()["replaced"] == 1, timeout=JOIN)
    srv.start()  # same port: the new socket connects, and the call goes through
    caller.join(JOIN)
    assert result == [b"v"]
    stats = pool.stats()
    assert stats["health_checks"] == before["health_checks"] + 1
    assert stats["replaced"] == 1 and stats["size"] == 1
    assert old.is_closed
    fresh = pool.checkout()
    assert fresh is not old
    pool.checkin(fresh)
    pool.close()


def test_health_check_of_an_idle_socket_stays_within_the_call_deadline(fresh_server, make_pool):
    srv = fresh_server
    pool = make_pool(srv.endpoint, max_size=1, health_check_interval=0.01, timeout=30.0)
    E = Elevator(pool=pool)
    E.Put("hc4/k", "v")
    conn = pool.checkout()
    pool.checkin(conn)
    srv.kill()
    assert wait_until(lambda: time.monotonic() - conn.last_used > 0.01)
    start = time.monotonic()
    with pytest.raises(ElevatorTimeout):
        E.Get("hc4/k", timeout=0.1)
    # the PING of the health check is part of the call: it may not outlast its deadline
    # (it used to wait its own 1 s)
    assert time.monotonic() - start < 0.8
    assert pool.stats()["health_checks"] == 1


def test_health_check_keeps_a_healthy_idle_socket(server, make_pool):
    pool = make_pool(server.endpoint, max_size=1, health_check_interval=0.02)
    E = Elevator(pool=pool)
    E.Put("hc2/k", "v")
    conn = pool.checkout()
    pool.checkin(conn)
    checks = pool.stats()["health_checks"]
    assert wait_until(lambda: time.monotonic() - conn.last_used > 0.02)
    assert E.Get("hc2/k") == b"v"
    again = pool.checkout()
    pool.checkin(again)
    assert again is conn
    assert pool.stats()["health_checks"] == checks + 1 and pool.stats()["replaced"] == 0
    pool.close()


def test_no_health_check_within_the_interval(server, make_pool):
    pool = make_pool(server.endpoint, max_size=1, health_check_interval=3600)
    E = Elevator(pool=pool)
    for _ in range(5):
        E.Put("hc3/k", "v")
    assert pool.stats()["health_checks"] == 0
    pool.close()


# ---------------------------------------------------------------------- fork

def test_fork_child_uses_a_fresh_pool_and_parent_still_works(server, make_pool):
    pool = make_pool(server.endpoint, max_size=2)
    E = Elevator(pool=pool)
    E.Put("fork/k", "from parent")
    parent_conn = pool.checkout()
    pool.checkin(parent_conn)
    parent_ctx = pool.context
    def child() -> dict:
        value = E.Get("fork/k", timeout=5.0)
        E.Put("fork/child", "child was here", timeout=5.0)
        conn = pool.checkout(timeout=5.0)
        fresh = conn is not parent_conn
        pool.checkin(conn)
        report = {"value": value.decode(), "fresh_socket": fresh,
                  "fresh_context": pool.context is not parent_ctx,
                  "size": pool.stats()["size"]}
        pool.close()  # terminates the child's own context, without hanging
        report["closed"] = pool.stats()["size"] == 0 and pool.context.closed
        return report

    report, code = run_forked(child, timeout=20.0)
    assert code == 0, report
    assert report == {"value": "from parent", "fresh_socket": True, "fresh_context": True,
                      "size": 1, "closed": True}
    # the parent's pool is unaffected: same socket, same context, and it sees the child's write
    assert E.Get("fork/child") == b"child was here"
    again = pool.checkout()
    pool.checkin(again)
    assert again is parent_conn and pool.context is parent_ctx
    assert pool.stats()["size"] == 1 and pool.stats()["replaced"] == 0
    pool.close()
