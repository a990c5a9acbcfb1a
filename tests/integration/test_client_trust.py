"""The client's trust guarantees: every answer is its own request's, a streamed reply is
complete or an error, meta.timeout and the TIMEOUT/AUTH codes, over-limit requests refused
before sending, a forked child's GC.

The real server is used where it can be provoked; otherwise a scripted ROUTER stub on a
loopback port sends exactly the frames a test needs (id-less failures, pages with gaps...).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import msgpack
import pytest
import zmq

from pyelevator_pool import (NO_RETRY, Elevator, ElevatorPool, ElevatorTimeout, RetryPolicy,
                             errors, protocol)
from pyelevator_pool.testing import ServerProcess

from rawclient import RawClient, wait_until

JOIN = 10.0
#: what a stub handler returns: (header, datas) pairs sent at once, in order
Frames = List[Tuple[dict, Any]]


class Stub:
    """A ROUTER on a loopback port. ``handle(request)`` returns the replies to send
    (headers are sent as given: the test chooses ids, seqs, codes). DBCONNECT, PING and
    CREDIT are answered (CREDIT: recorded, never answered) unless ``handle`` returns
    something for them. Records every request decoded."""

    def __init__(self, handle: Callable[[protocol.Request], Optional[Frames]]) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.handle = handle
        self.requests: List[protocol.Request] = []
        self.credits: List[list] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(5):
                continue
            ident, frame = self.sock.recv_multipart()
            req = protocol.decode_request(frame)
            if req.cmd == protocol.CREDIT:
                self.credits.append(list(req.args))
                continue
            self.requests.append(req)
            out = self.handle(req)
            if out is None:
                out = self.default(req)
            for header, datas in out:
                self.sock.send_multipart([ident, msgpack.packb(header, use_bin_type=True),
                                          msgpack.packb({"datas": datas}, use_bin_type=True)])

    @staticmethod
    def default(req: protocol.Request) -> Frames:
        ok = {"status": 1, "err_code": None, "err_msg": None, "compression": False, "id": req.id}
        if req.cmd == protocol.DBCONNECT:
            return [(ok, ["uid-1"])]
        if req.cmd == protocol.PING:
            return [(ok, ["PONG"])]
        if req.cmd == protocol.LIMITS:
            return [(ok, {})]
        return [(ok, None)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(JOIN)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def stub():
    made: List[Stub] = []

    def make(handle: Callable[[protocol.Request], Optional[Frames]]) -> Stub:
        made.append(Stub(handle))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def closing():
    """Closes the clients a test registers, whatever its outcome."""
    items: List[Any] = []
    yield items.append
    for item in items:
        item.close()


def ok(req: protocol.Request, **extra: Any) -> dict:
    return {"status": 1, "err_code": None, "err_msg": None, "compression": False,
            "id": req.id, **extra}


def fail(code: int, msg: str, id: Any = None, **extra: Any) -> dict:
    header = {"status": -1, "err_code": code, "err_msg": msg, "compression": False, **extra}
    if id is not None:
        header["id"] = id
    return header


# ------------------------------------------- 1. every answer is its own request's

def test_a_late_idless_failure_is_never_the_answer_to_the_next_call(stub, closing):
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.GET:
            # an older server's refusal of an earlier, unreadable request, then the answer
            return [(fail(8, "request of 1548649 bytes exceeds the limit"), None),
                    (ok(req), [b"right"])]
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    for _ in range(3):
        assert E.Get("probe") == b"right"
    assert E.pool.stats()["stale_replies"] == 3


def test_decode_request_gives_an_oversize_frames_id():
    frame = protocol.encode_request(protocol.PUT, [b"k", b"x" * 200_000], "uid", id=41)
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.decode_request(frame, max_size=100_000)
    assert info.value.id == 41
    assert "exceeds the limit" in str(info.value)


@pytest.mark.parametrize("frame, expected", [
    (protocol.encode_request(protocol.GET, [b"k"], "u", id=7), 7),
    (protocol.encode_request(protocol.GET, [b"k"], "u", id="abc"), "abc"),
    (protocol.encode_request(protocol.GET, [b"k"], "u"), None),
    (protocol.encode_request(protocol.GET, [b"k"], "u", id=9)[:12], 9),  # truncated after id
    (msgpack.packb({"cmd": "GET", "args": [b"x" * 1000], "meta": {"id": 3}}), 3),
    (msgpack.packb({"meta": {"id": [1, 2]}}), None),
    (msgpack.packb({"meta": "nope"}), None),
    (msgpack.packb([1, 2, 3]), None),
    (b"", None), (b"\xc1", None), (b"\xdf\xff\xff\xff\xff", None), (None, None), (12, None),
])
def test_peek_id_reads_the_id_of_any_frame_and_never_raises(frame, expected):
    assert protocol.peek_id(frame) == expected


def test_peek_id_of_a_huge_frame_is_cheap():
    frame = protocol.encode_request(protocol.BATCH, [[[1, b"k%d" % i, b"v"] for i in range(200_000)]],
                                    "u", id=5)
    start = time.perf_counter()
    assert protocol.peek_id(frame) == 5
    assert time.perf_counter() - start < 0.05


def test_the_real_server_echoes_the_id_of_an_oversize_request(tmp_path):
    with ServerProcess(str(tmp_path), args=["--max-message-size", "1000000"]) as srv:
        with RawClient(srv.endpoint) as raw:
            uid = raw.uid()
            reply = raw.call(protocol.PUT, [b"k", b"x" * 1_200_000], uid, id=77, timeout=10.0)
            assert reply.status == protocol.Status.FAILURE
            assert reply.id == 77, reply


# ------------------------------------------ 2. a streamed reply is complete or an error

ITEMS = [[b"k%05d" % i, b"v"] for i in range(50)]


def paged(req: protocol.Request, order: List[int], pages: int = 5,
          seq: bool = True) -> Frames:
    size = len(ITEMS) // pages
    out = []
    for n in order:
        extra = {protocol.SEQ: n} if seq else {}
        if n < pages - 1:
            extra[protocol.MORE] = True
        out.append((ok(req, **extra), ITEMS[n * size:(n + 1) * size]))
    return out


def stream_stub(stub, order: List[int], seq: bool = True) -> Stub:
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.RANGE:
            return paged(req, order, seq=seq)
        return None
    return stub(handle)


def test_a_complete_stream_is_returned_credited_page_by_page(stub, closing):
    s = stream_stub(stub, [0, 1, 2, 3, 4])
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    assert E.Range() == ITEMS
    rng = [r for r in s.requests if r.cmd == protocol.RANGE][0]
    assert rng.meta[protocol.WINDOW] == protocol.DEFAULT_WINDOW
    assert wait_until(lambda: len(s.credits) == 4, timeout=5.0)
    assert s.credits == [[rng.id, 1]] * 4  # one per page taken, none after the last


@pytest.mark.parametrize("order, expected, got", [
    ([0, 1, 3, 4], 2, 3),        # a page dropped
    ([0, 1, 1, 2, 3, 4], 2, 1),  # a page repeated
    ([0, 2, 1, 3, 4], 1, 2),     # two pages swapped
    ([1, 2, 3, 4], 0, 1),        # the first page lost
    ([4], 0, 4),                 # only the last page arrived
])
def test_a_stream_with_a_gap_repeat_or_swap_raises(stub, closing, order, expected, got):
    s = stream_stub(stub, order)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    with pytest.raises(errors.ProtocolError, match=f"incomplete stream: expected page "
                                                   f"{expected}, got {got}"):
        E.Range()
    rng = [r for r in s.requests if r.cmd == protocol.RANGE][0]
    if len(order) > 1:  # abandoned mid-stream: the stream is closed
        assert wait_until(lambda: [rng.id, 0] in s.credits, timeout=5.0), s.credits


def test_a_page_without_seq_after_pages_with_one_raises(stub, closing):
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.RANGE:
            pages = paged(req, [0, 1, 2, 3, 4])
            del pages[2][0][protocol.SEQ]
            return pages
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    with pytest.raises(errors.ProtocolError, match="expected page 2, got a page without seq"):
        E.Range()


def test_a_stream_without_any_seq_from_an_older_server_is_taken_and_not_credited(stub, closing):
    s = stream_stub(stub, [0, 1, 2, 3, 4], seq=False)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    assert E.Range() == ITEMS
    E.Ping()  # the stub has read everything sent before it
    assert s.credits == []


def test_a_stream_given_up_on_timeout_is_closed(stub, closing):
    s = stream_stub(stub, [0, 1])  # then nothing: the reader times out
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    with pytest.raises(ElevatorTimeout):
        E.Range(timeout=0.5)
    rng = [r for r in s.requests if r.cmd == protocol.RANGE][0]
    assert wait_until(lambda: [rng.id, 0] in s.credits, timeout=5.0), s.credits


def test_a_range_of_more_pages_than_the_window_completes_on_the_real_server(server):
    E = Elevator(endpoint=server.endpoint, timeout=20.0)
    try:
        with E.WriteBatch() as batch:
            for i in range(60_000):
                batch.Put(b"win/%06d" % i, b"x")
        items = E.Range(b"win/", b"win/\xff")  # 6 pages of 10,000: more than the window
        assert [k for k, _ in items] == [b"win/%06d" % i for i in range(60_000)]
    finally:
        E.close()


# ----------------------------------------------------- 3. meta.timeout, TIMEOUT, AUTH

def test_every_request_carries_the_ms_left_of_its_deadline(stub, closing):
    s = stub(lambda req: None)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    E.Put("k", "v", timeout=2.0)
    put = [r for r in s.requests if r.cmd == protocol.PUT][0]
    assert 1000 < put.meta[protocol.TIMEOUT_MS] <= 2000
    assert all(isinstance(r.meta.get(protocol.TIMEOUT_MS), int) for r in s.requests)


def test_a_timeout_answer_is_an_elevator_timeout_never_applied(stub, closing):
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.PUT:
            return [(fail(protocol.ErrorCode.TIMEOUT, "not started in time", id=req.id), None)]
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    with pytest.raises(ElevatorTimeout) as info:
        E.Put("k", "v")
    assert info.value.request_sent is False


def test_an_auth_answer_raises_authentication_error_and_is_not_retried(stub, closing):
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.GET:
            return [(fail(protocol.ErrorCode.AUTH, "key revoked", id=req.id), None)]
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=RetryPolicy(), timeout=5.0)
    closing(E)
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError, match="key revoked"):
        E.Get("k")
    assert time.monotonic() - started < 2.0
    assert len([r for r in s.requests if r.cmd == protocol.GET]) == 1
    assert E.pool.stats()["retries"] == 0


# ----------------------------------------------- 6. over a limit: a clear error at once

def test_a_value_over_max_message_size_raises_before_sending(tmp_path):
    with ServerProcess(str(tmp_path), args=["--max-message-size", "1000000"]) as srv:
        E = Elevator(endpoint=srv.endpoint, timeout=10.0)
        try:
            started = time.monotonic()
            with pytest.raises(errors.LimitExceeded, match=r"5000\d+ bytes.*1000000") as info:
                E.Put("big", b"x" * 5_000_000)
            assert time.monotonic() - started < 1.0
            assert (info.value.limit, info.value.maximum) == ("max_message_size", 1_000_000)
            assert E.pool.stats()["retries"] == 0
            E.Put("small", b"x" * 900_000)  # under the limit: sent
            assert len(E.Get("small")) == 900_000
        finally:
            E.close()


def test_small_requests_never_fetch_the_limits(stub, closing):
    s = stub(lambda req: None)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    E.Put("k", b"x" * (protocol.MIN_MAX_MESSAGE_SIZE - 100))
    assert protocol.LIMITS not in [r.cmd for r in s.requests]
    E.Put("k", b"x" * (protocol.MIN_MAX_MESSAGE_SIZE + 1))
    E.Put("k", b"x" * (protocol.MIN_MAX_MESSAGE_SIZE + 1))
    assert [r.cmd for r in s.requests].count(protocol.LIMITS) == 1  # once per pool


def test_a_servers_over_limit_answer_with_detail_is_a_limit_error_sent_once(stub, closing):
    detail = {"limit": "max_message_size", "maximum": 1000, "value": 5000}

    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.PUT:
            return [(fail(8, "request too large", id=req.id, **{protocol.ERR_DETAIL: detail}),
                     None)]
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=RetryPolicy(), timeout=5.0)
    closing(E)
    with pytest.raises(errors.LimitExceeded) as info:
        E.Put("k", "v")
    assert (info.value.limit, info.value.maximum, info.value.value) == ("max_message_size",
                                                                        1000, 5000)
    assert isinstance(info.value, errors.RequestError)
    assert [r.cmd for r in s.requests].count(protocol.PUT) == 1


def test_mget_splits_on_the_err_detail_not_the_message_text(stub, closing):
    def handle(req: protocol.Request) -> Optional[Frames]:
        if req.cmd == protocol.MGET:
            keys = req.args[0]
            if len(keys) > 2:
                return [(fail(2, "too many keys", id=req.id, **{protocol.ERR_DETAIL: {
                    "limit": "max_keys", "maximum": 2, "value": len(keys)}}), None)]
            return [(ok(req), list(keys))]
        if req.cmd == protocol.LIMITS:
            return [(ok(req), {"max_keys": 2})]
        return None

    s = stub(handle)
    E = Elevator(endpoint=s.endpoint, retry=NO_RETRY, timeout=5.0)
    closing(E)
    E.pool.facts.set_limits({})  # stale: the client believes there is no limit
    keys = [b"k%d" % i for i in range(1001)]
    assert E.MGet(keys) == keys


# ------------------------------------------- reconnect interval vs connect_timeout

def test_the_reconnect_interval_fits_within_the_connect_timeout(server):
    pool = ElevatorPool(server.endpoint, connect_timeout=0.2)
    try:
        conn = pool.checkout()
        try:
            assert conn.socket.getsockopt(zmq.RECONNECT_IVL_MAX) <= 100
        finally:
            pool.checkin(conn)
    finally:
        pool.close()


def test_stale_cached_limits_do_not_resend_a_frame_the_server_drops(tmp_path):
    with ServerProcess(str(tmp_path), args=["--max-message-size", "1000000"]) as srv:
        E = Elevator(endpoint=srv.endpoint, timeout=10.0)
        try:
            # limits cached from before a restart with a lower --max-message-size
            E.pool.facts.set_limits({"max_message_size": protocol.DEFAULT_MAX_MESSAGE_SIZE})
            started = time.monotonic()
            with pytest.raises(errors.LimitExceeded, match="1000000"):
                E.Put("big", b"x" * 5_000_000)
            assert time.monotonic() - started < 5.0
            assert E.pool.stats()["retries"] <= 1
        finally:
            E.close()
