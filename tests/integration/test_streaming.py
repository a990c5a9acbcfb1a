"""Streamed RANGE/SLICE replies (extension ``meta.stream``): pages from one iterator, every
reply but the last marked ``more``; the client decodes them as they arrive. Real server."""
from __future__ import annotations

import time

import pytest

from pyelevator_pool import Elevator, protocol
from pyelevator_pool.client import STREAM_PAGE
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient

N = 2 * STREAM_PAGE + 123  # three pages, the last one partial


@pytest.fixture(scope="module")
def loaded(server):
    """(client, expected pairs) on a database of this module's own."""
    with Elevator(endpoint=server.endpoint) as admin:
        admin.createdb("streaming")
    client = Elevator("streaming", endpoint=server.endpoint)
    pairs = [[b"k%07d" % i, b"v%d" % i] for i in range(N)]
    wb = client.WriteBatch()
    for k, v in pairs:
        wb.Put(k, v)
    wb.Write()
    yield client, pairs
    client.close()


def _stream(raw: RawClient, cmd: str, args: list, uid: str, page: int, rid: int = 7,
            late: float = 0.0) -> list:
    """(header, reply) of each page of one streamed request, each page credited once read;
    ``late``: seconds the reader waits before it reads the first page."""
    raw.sock.send(protocol.encode_request(cmd, args, uid, id=rid, stream=page))
    time.sleep(late)
    replies = []
    while True:
        reply_frames = raw.recv_frames()
        head = protocol.decode_header(reply_frames[0])
        if protocol.SEQ in head:
            assert head[protocol.SEQ] == len(replies), head  # pages in order, none missing
        replies.append((head, protocol.decode_reply(reply_frames)))
        if not head.get(protocol.MORE):
            return replies
        raw.sock.send(protocol.encode_request(protocol.CREDIT, [rid, 1]))  # one page taken


def test_range_and_slice_of_several_pages_equal_the_data_in_order(loaded):
    client, pairs = loaded
    assert client.Range() == pairs
    assert client.Slice(None, N) == pairs
    assert client.Slice(pairs[5][0], STREAM_PAGE + 1) == pairs[5:STREAM_PAGE + 6]
    assert client.Range(pairs[10][0], pairs[-10][0]) == pairs[10:-9]
    assert client.Range(include_value=False) == [k for k, _ in pairs]


def test_server_sends_pages_of_at_most_the_size_asked_all_but_the_last_marked_more(server, loaded):
    _, pairs = loaded
    with RawClient(server.endpoint) as raw:
        uid = raw.uid("streaming")
        replies = _stream(raw, protocol.RANGE, [None, None, True, True, None], uid, 1000)
    heads = [h for h, _ in replies]
    assert len(replies) == N // 1000 + 1
    assert all(h.get(protocol.MORE) is True for h in heads[:-1])
    assert not heads[-1].get(protocol.MORE)
    assert all(h["id"] == 7 and h["status"] == 1 for h in heads)
    assert all(len(r.datas) == 1000 for _, r in replies[:-1])
    assert [item for _, r in replies for item in r.datas] == pairs


def test_slice_of_an_exact_number_of_pages_ends_with_an_empty_last_page(server, loaded):
    _, pairs = loaded
    with RawClient(server.endpoint) as raw:
        uid = raw.uid("streaming")
        replies = _stream(raw, protocol.SLICE, [None, 3000, True, True], uid, 1000)
    assert [len(r.datas) for _, r in replies] == [1000, 1000, 1000]
    assert [item for _, r in replies for item in r.datas] == pairs[:3000]


def test_without_an_id_or_for_other_commands_the_reply_is_one_reply(server, loaded):
    with RawClient(server.endpoint) as raw:
        uid = raw.uid("streaming")
        raw.sock.send(protocol.encode_request(protocol.SLICE, [None, 2500], uid, stream=1000))
        frames = raw.recv_frames()
        assert not protocol.decode_header(frames[0]).get(protocol.MORE)
        assert len(protocol.decode_reply(frames).datas) == 2500
        replies = _stream(raw, protocol.MGET, [[b"k0000001"]], uid, 1)
        assert len(replies) == 1 and replies[0][1].datas == [b"v1"]


def test_an_error_ends_the_stream_with_a_failure_reply(server, loaded):
    with RawClient(server.endpoint) as raw:
        uid = raw.uid("streaming")
        replies = _stream(raw, protocol.RANGE, [5, None, True, True, None], uid, 1000)
    assert len(replies) == 1
    assert replies[0][1].status == protocol.Status.FAILURE
    assert replies[0][1].err_code == protocol.ErrorCode.TYPE


def test_a_stream_over_max_items_fails_as_the_single_reply_would(tmp_path):
    with ServerProcess(str(tmp_path), args=["--max-items", "1000"]) as srv, \
            RawClient(srv.endpoint) as raw:
        uid = raw.uid()
        ops = [[1, b"%05d" % i, b"x"] for i in range(2500)]
        assert raw.call(protocol.BATCH, [ops], uid).status == 1
        single = raw.call(protocol.RANGE, [None, None], uid, id=1)
        replies = _stream(raw, protocol.RANGE, [None, None, True, True, None], uid, 400)
    last = replies[-1][1]
    assert single.status == last.status == protocol.Status.FAILURE
    assert last.err_code == single.err_code


def test_a_late_stream_is_not_taken_for_the_next_reply(server, loaded):
    client, pairs = loaded
    with RawClient(server.endpoint) as raw:
        uid = raw.uid("streaming")
    conn = client.pool.checkout()
    try:
        with pytest.raises(TimeoutError):
            conn.request(protocol.RANGE, [None, None, True, True, None], uid,
                         timeout=0.0005, stream=100)
        reply = conn.request(protocol.GET, [pairs[3][0]], uid, timeout=10)
        assert reply.datas == [pairs[3][1]]
    finally:
        client.pool.checkin(conn)


def test_a_page_over_max_reply_size_ends_the_stream_with_the_limit_error(tmp_path):
    with ServerProcess(str(tmp_path), args=["--max-reply-size", "20000"]) as srv, \
            RawClient(srv.endpoint) as raw:
        uid = raw.uid()
        ops = [[1, b"%05d" % i, b"x" * 100] for i in range(1000)]
        assert raw.call(protocol.BATCH, [ops], uid).status == 1
        single = raw.call(protocol.RANGE, [None, None], uid, id=1)
        small = _stream(raw, protocol.RANGE, [None, None, True, True, None], uid, 50)
        big = _stream(raw, protocol.RANGE, [None, None, True, True, None], uid, 500)
    assert single.status == protocol.Status.FAILURE
    assert [r.status for _, r in small] == [1] * len(small)  # 50 items of ~110 bytes fit
    assert sum(len(r.datas) for _, r in small) == 1000
    assert len(big) == 1 and big[0][1].status == protocol.Status.FAILURE
    assert big[0][1].err_code == single.err_code


# ------------------------------------------------- a streamed reply to a slow reader

def test_a_stream_of_more_pages_than_the_socket_holds_reaches_a_slow_reader(server):
    """A stream of many small pages used to overflow the ROUTER's send queue (1000
    messages), which drops what does not fit: the end of the stream was lost and the
    client waited for it forever. Now the server sends a page only on credit."""
    n, value = 4000, b"v" * 8192  # more pages than the send queue and TCP buffers hold
    with RawClient(server.endpoint) as raw:
        raw.sock.rcvhwm = 100
        uid = raw.uid()
        keys = [b"slow:%06d" % i for i in range(n)]
        for i in range(0, n, 1000):
            ops = [[1, k, value] for k in keys[i:i + 1000]]
            assert raw.call(protocol.BATCH, [ops], uid).status == 1
        # a reader that is late: the old server produced all pages meanwhile
        replies = [r for _, r in _stream(raw, protocol.RANGE, [None, None, True, True, b"slow:"],
                                         uid, 1, rid=11, late=1.0)]
    assert all(r.status == protocol.Status.SUCCESS and r.id == 11 for r in replies)
    assert [k for r in replies for k, _ in r.datas] == keys
