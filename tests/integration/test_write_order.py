"""A write is applied at most once, in the order received, and never once its client's
deadline (``meta.timeout``) passed before it could start (against a real server)."""
from __future__ import annotations

import msgpack
import pytest

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, Status
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient

N_BUSY = 150_000  # keys a RANGE reads, to keep the one worker busy for a while


def frame(cmd: str, args: list, uid, rid, **meta) -> bytes:
    meta["id"] = rid
    return msgpack.packb({"meta": meta, "uid": uid, "cmd": cmd, "args": args},
                         use_bin_type=True)


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    """One worker, and enough data that a RANGE over it keeps that worker busy."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("order")), args=["--workers", "1"])
    srv.start()
    with RawClient(srv.endpoint, timeout=30) as raw:
        uid = raw.uid()
        for start in range(0, N_BUSY, 50_000):
            ops = [[protocol.BATCH_PUT, b"busy/%07d" % i, b"v" * 64]
                   for i in range(start, min(start + 50_000, N_BUSY))]
            assert raw.call(protocol.BATCH, [ops], uid).status == Status.SUCCESS
    yield srv, uid
    srv.stop()


def _occupy_worker(raw: RawClient, uid: str, rid: int) -> None:
    raw.sock.send(frame(protocol.RANGE, [b"busy/", b"busy/\xff", True, True, None], uid, rid))


def test_a_cheap_put_after_a_queued_batch_of_the_same_key_is_applied_after_it(busy_server):
    """The batch was queued behind a busy worker; the PUT, sent after it, used to be
    answered at once by the loop and then overwritten when the batch ran."""
    srv, uid = busy_server
    with RawClient(srv.endpoint, timeout=30) as hog, RawClient(srv.endpoint, timeout=30) as c:
        for round_ in range(3):
            key = b"order/%d" % round_
            _occupy_worker(hog, uid, 1000 + round_)
            batch = [[protocol.BATCH_PUT, key, b"from-batch"]] + [
                [protocol.BATCH_PUT, b"order/filler/%04d" % i, b"x"] for i in range(500)]
            c.sock.send(frame(protocol.BATCH, [batch], uid, 1))
            c.sock.send(frame(protocol.PUT, [key, b"from-put"], uid, 2))
            replies = {c.recv().id: None for _ in range(2)}
            assert set(replies) == {1, 2}
            assert c.call(protocol.GET, [key], uid, id=3).datas == [b"from-put"]
            assert hog.recv().id == 1000 + round_


def test_a_request_whose_deadline_passed_while_queued_is_not_started(busy_server):
    """The late batch waits in its database's write lane behind a large batch sent just
    before it on the same socket, so its 1 ms budget has passed when its turn comes
    (another socket's RANGE would not do: its pages leave the worker free between them)."""
    srv, uid = busy_server
    with RawClient(srv.endpoint, timeout=30) as c:
        blocker = [[protocol.BATCH_PUT, b"blocker/%06d" % i, b"y" * 64] for i in range(50_000)]
        ops = [[protocol.BATCH_PUT, b"late/%04d" % i, b"x"] for i in range(500)]
        c.sock.send(frame(protocol.BATCH, [blocker], uid, 6, timeout=60_000))
        c.sock.send(frame(protocol.BATCH, [ops], uid, 7, timeout=1))
        replies = {r.id: r for r in (c.recv(), c.recv())}
        assert set(replies) == {6, 7}
        assert replies[6].status == Status.SUCCESS
        late = replies[7]
        assert late.status == Status.FAILURE and late.err_code == ErrorCode.TIMEOUT
        assert "nothing was done" in late.err_msg
        assert c.call(protocol.GET, [b"late/0000"], uid, id=8).err_code == ErrorCode.KEY
        # With time to spare, the same batch runs.
        c.sock.send(frame(protocol.BATCH, [ops], uid, 9, timeout=30_000))
        assert c.recv().status == Status.SUCCESS
        assert c.call(protocol.GET, [b"late/0000"], uid, id=10).datas == [b"x"]


def test_a_cheap_request_past_its_deadline_is_not_started_either(busy_server):
    srv, uid = busy_server
    with RawClient(srv.endpoint) as c:
        c.sock.send(frame(protocol.PUT, [b"zero-budget", b"x"], uid, 1, timeout=-1))
        reply = c.recv()
        assert reply.err_code == ErrorCode.TIMEOUT and reply.id == 1
        assert c.call(protocol.GET, [b"zero-budget"], uid, id=2).err_code == ErrorCode.KEY
