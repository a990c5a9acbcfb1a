"""The server's scheduler as pure logic: a fake dispatcher and outbox, no socket, no sleep."""
from __future__ import annotations

from typing import Any, List

import msgpack

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, Request
from pyelevator_pool.server import scheduler as sched
from pyelevator_pool.server.outbox import RateLimitedLog
from pyelevator_pool.server.scheduler import Scheduler


class FakeOutbox:
    def __init__(self) -> None:
        self.sent: List[tuple] = []

    def send(self, ident: bytes, frames: Any) -> None:
        self.sent.append((ident, frames))

    def backlog_bytes(self, ident: bytes) -> int:
        return 0

    def headers(self) -> List[dict]:
        return [msgpack.unpackb(frames[0]) for _, frames in self.sent]


class FakeDispatcher:
    """Answers a request with its id; streams of ``n`` pages when meta.stream is set."""

    def __init__(self, pages: int = 10) -> None:
        self.pages = pages
        self.closed = 0

    def stream_page(self, request: Request) -> int:
        return request.meta.get("stream", 0)

    def run(self, request: Request, peer: bytes = b"") -> List[bytes]:
        return protocol.encode_reply(None, id=request.id)

    def run_stream(self, request: Request, page: int):
        try:
            for seq in range(self.pages):
                last = seq == self.pages - 1
                yield protocol.encode_reply([seq], id=request.id, more=not last, seq=seq), last
        finally:
            self.closed += 1


def req(cmd: str, rid: int, uid: str = "u", **meta: Any) -> Request:
    return Request(cmd, uid, [], dict(meta, id=rid), rid, False)


def run_all(s: Scheduler) -> List[Any]:
    """Run every runnable task in the scheduler's order; the ids of the replies."""
    order = []
    while True:
        task = s.next_task()
        if task is None:
            return order
        s.complete(task, s.execute(task))
        order.append(task.rid)


def make(pages: int = 10) -> tuple:
    outbox, dispatcher = FakeOutbox(), FakeDispatcher(pages)
    return Scheduler(dispatcher, outbox, RateLimitedLog()), outbox, dispatcher  # type: ignore[arg-type]


def test_clients_take_turns_whatever_one_of_them_queued():
    s, outbox, _ = make()
    for i in range(10):
        s.submit(b"hog", 0.0, request=req(protocol.RANGE, 100 + i))
    s.submit(b"other", 0.0, request=req(protocol.RANGE, 1))
    first, second = s.next_task(), s.next_task()
    assert {first.ident, second.ident} == {b"hog", b"other"}


def test_writes_to_one_database_run_one_at_a_time_in_receipt_order():
    s, outbox, _ = make()
    s.submit(b"a", 0.0, request=req(protocol.BATCH, 1))
    s.submit(b"b", 0.0, request=req(protocol.BATCH, 2))
    assert s.write_must_wait(protocol.PUT, "u") and not s.write_must_wait(protocol.PUT, "v")
    assert not s.write_must_wait(protocol.GET, "u")
    s.submit(b"c", 0.0, request=req(protocol.PUT, 3))
    running = s.next_task()
    assert running.rid == 1
    assert s.next_task() is None  # the lane is busy: the next write waits
    s.complete(running, s.execute(running))
    assert run_all(s) == [2, 3]
    assert not s.write_must_wait(protocol.PUT, "u")


def test_a_client_with_too_much_waiting_is_refused_at_once_and_others_are_not():
    s, outbox, _ = make()
    for i in range(sched.PEER_PENDING_MAX + 3):
        s.submit(b"hog", 0.0, request=req(protocol.RANGE, i))
    refused = [h for h in outbox.headers() if h["status"] == -1]
    assert len(refused) == 3 and all(h["err_detail"]["busy"] for h in refused)
    assert refused[0]["err_code"] == ErrorCode.RUNTIME and refused[0]["id"] == sched.PEER_PENDING_MAX
    s.submit(b"other", 0.0, request=req(protocol.RANGE, 999))
    assert len([h for h in outbox.headers() if h["status"] == -1]) == 3


def test_a_request_past_its_deadline_is_answered_timeout_and_not_run():
    s, outbox, _ = make()
    s.submit(b"a", 0.0, request=req(protocol.BATCH, 5, timeout=10))  # received at t=0
    task = s.next_task()
    header = msgpack.unpackb(s.execute(task)[0])
    assert header["err_code"] == ErrorCode.TIMEOUT and header["id"] == 5


def test_a_stream_sends_only_what_its_reader_credited_and_closes_when_told():
    s, outbox, dispatcher = make(pages=10)
    s.submit(b"r", 0.0, request=req(protocol.RANGE, 7, stream=1, window=3))
    run_all(s)
    assert [h["seq"] for h in outbox.headers()] == [0, 1, 2]
    s.credit(b"r", [7, 2])
    run_all(s)
    assert [h["seq"] for h in outbox.headers()] == [0, 1, 2, 3, 4]
    assert s.open_streams() == 1 and dispatcher.closed == 0
    s.credit(b"r", [7, 0])
    assert s.open_streams() == 0 and dispatcher.closed == 1
    s.credit(b"r", [7, 5])  # a credit crossing the close is ignored
    assert run_all(s) == []


def test_a_stream_ends_at_its_last_page_and_releases_its_iterator():
    s, outbox, dispatcher = make(pages=2)
    s.submit(b"r", 0.0, request=req(protocol.RANGE, 8, stream=1))
    run_all(s)
    headers = outbox.headers()
    assert [h["seq"] for h in headers] == [0, 1] and "more" not in headers[-1]
    assert s.open_streams() == 0 and dispatcher.closed == 1


def test_an_idle_stream_and_a_departed_reader_release_their_iterators():
    s, outbox, dispatcher = make(pages=10)
    s.submit(b"idle", 0.0, request=req(protocol.RANGE, 1, stream=1, window=1))
    s.submit(b"gone", 0.0, request=req(protocol.RANGE, 2, stream=1, window=1))
    run_all(s)
    assert s.open_streams() == 2
    s.peer_gone(b"gone")
    assert s.open_streams() == 1 and dispatcher.closed == 1
    assert s.close_idle_streams(idle=-1.0) == 1
    assert s.open_streams() == 0 and dispatcher.closed == 2


def test_malformed_credits_are_ignored_and_never_answered():
    s, outbox, _ = make()
    for args in ([], [1], [1, -1], [1, True], [1, "x"], "junk"):
        s.credit(b"r", args)
    assert outbox.sent == []
