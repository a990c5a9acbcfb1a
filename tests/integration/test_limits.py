"""Server limits (--max-keys, --max-items, --max-reply-size) and how the client lives with them:
MGet split into chunks, Range/Slice paged, a WriteBatch refused before it is sent."""
from __future__ import annotations

import subprocess
import sys

import pytest
from rawclient import RawClient

from pyelevator_pool import Elevator, ElevatorValueError, LimitExceeded, bulk, protocol
from pyelevator_pool.protocol import ErrorCode, Status
from pyelevator_pool.server.handlers import MIN_LIMIT
from pyelevator_pool.testing import ServerProcess

pytestmark = pytest.mark.timeout(120)

MAX_KEYS = MAX_ITEMS = MIN_LIMIT        # the smallest limits the server accepts
MAX_REPLY = 200_000                     # bytes
N = MAX_ITEMS + MAX_ITEMS // 2          # items under the prefix lim: (more than one reply holds)
VALUE = b"v" * 100


def key(i: int) -> bytes:
    return b"lim:%06d" % i


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    srv = ServerProcess(str(tmp_path_factory.mktemp("limits")),
                        args=["--max-keys", str(MAX_KEYS), "--max-items", str(MAX_ITEMS),
                              "--max-reply-size", str(MAX_REPLY)])
    srv.start()
    with Elevator(endpoint=srv.endpoint) as e:
        for lo in range(0, N, MAX_KEYS):
            with e.WriteBatch() as wb:
                for i in range(lo, min(N, lo + MAX_KEYS)):
                    wb.Put(key(i), VALUE + b"%d" % i)
        with e.WriteBatch() as wb:
            for i in range(300):
                wb.Put(b"big:%03d" % i, b"x" * 1000)  # 300 kB: over the reply size limit
    yield srv
    srv.stop()


@pytest.fixture
def client(limited):
    with Elevator(endpoint=limited.endpoint) as e:
        yield e


@pytest.fixture(scope="module")
def raw(limited):
    with RawClient(limited.endpoint) as c:
        yield c


def expected(lo: int, hi: int):
    return [[key(i), VALUE + b"%d" % i] for i in range(lo, hi)]


# ------------------------------------------------------------------ server side

def test_limits_command_reports_the_configured_limits(raw):
    reply = raw.call(protocol.LIMITS, [])
    assert reply.status == Status.SUCCESS
    assert reply.datas == {b"max_keys": MAX_KEYS, b"max_items": MAX_ITEMS,
                           b"max_reply_size": MAX_REPLY,
                           b"max_message_size": protocol.DEFAULT_MAX_MESSAGE_SIZE,
                           b"stream_iter": 1,
                           # the streamed WriteBatch, with the default idle time in ms
                           b"stream_batch": 60_000}
    bad = raw.call(protocol.LIMITS, [1])
    assert bad.status == Status.FAILURE and bad.err_code == ErrorCode.REQUEST


def test_default_limits_are_reported(server):
    with RawClient(server.endpoint) as c:
        datas = c.call(protocol.LIMITS, []).datas
    assert datas[b"max_keys"] == datas[b"max_items"] == 1_000_000
    assert datas[b"max_reply_size"] == 256 * 1024 * 1024


def over_limit(reply, name: str) -> None:
    assert reply.status == Status.FAILURE and reply.err_code == ErrorCode.VALUE, reply
    assert f"({name})" in reply.err_msg and "limit" in reply.err_msg


def test_mget_over_max_keys_is_refused_and_at_the_limit_answered(raw):
    uid = raw.uid()
    over_limit(raw.call(protocol.MGET, [[key(i) for i in range(MAX_KEYS + 1)]], uid), "max_keys")
    at = raw.call(protocol.MGET, [[key(i) for i in range(MAX_KEYS)]], uid)
    assert at.status == Status.SUCCESS and len(at.datas) == MAX_KEYS


def test_batch_over_max_keys_is_refused_and_writes_nothing(raw):
    uid = raw.uid()
    ops = [[1, b"limbatch:%d" % i, b"x"] for i in range(MAX_KEYS + 1)]
    over_limit(raw.call(protocol.BATCH, [ops], uid), "max_keys")
    assert raw.call(protocol.EXISTS, [b"limbatch:0"], uid).datas == [False]


@pytest.mark.parametrize("include_key,include_value", [(True, True), (True, False), (False, True)])
def test_range_and_slice_over_max_items_are_refused(raw, include_key, include_value):
    uid = raw.uid()
    over_limit(raw.call(protocol.RANGE, [key(0), key(N), include_key, include_value, None], uid),
               "max_items")
    over_limit(raw.call(protocol.SLICE, [key(0), MAX_ITEMS + 1, include_key, include_value], uid),
               "max_items")
    at = raw.call(protocol.RANGE, [key(0), key(MAX_ITEMS - 1), include_key, include_value, None],
                  uid)
    assert at.status == Status.SUCCESS and len(at.datas) == MAX_ITEMS


def test_slice_counts_the_items_it_finds_not_the_count_asked(raw):
    # A huge count near the end of the database is answered: the reply is small.
    reply = raw.call(protocol.SLICE, [key(N - 5), 10**12, True, True], raw.uid())
    assert reply.status == Status.SUCCESS and [k for k, _ in reply.datas][:5] == \
        [key(i) for i in range(N - 5, N)]


def test_replies_over_max_reply_size_are_refused(raw):
    uid = raw.uid()
    over_limit(raw.call(protocol.MGET, [[b"big:%03d" % i for i in range(300)]], uid),
               "max_reply_size")
    over_limit(raw.call(protocol.RANGE, [None, None, True, True, b"big:"], uid), "max_reply_size")
    small = raw.call(protocol.MGET, [[b"big:%03d" % i for i in range(100)]], uid)
    assert small.status == Status.SUCCESS and len(small.datas) == 100
    assert raw.call(protocol.PING, []).datas == [b"PONG"]


@pytest.mark.parametrize("flag", ["--max-keys", "--max-items", "--max-reply-size"])
def test_limits_below_the_minimum_are_refused_at_startup(tmp_path, flag):
    done = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--port", "0",
                           "--data-dir", str(tmp_path), flag, str(MIN_LIMIT - 1)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and f"must be >= {MIN_LIMIT}" in done.stderr


# ------------------------------------------------------------------ client side

def test_small_calls_never_fetch_the_limits(client):
    client.MGet([key(i) for i in range(10)])
    client.Range(key(0), key(20))
    assert client.pool.facts.cached_limits() is None


def test_mget_over_max_keys_is_split_in_order(client):
    keys = [key(i) for i in range(N)] + [b"lim:missing"] + [key(3)] * 5
    values = client.MGet(keys)
    assert values == [VALUE + b"%d" % i for i in range(N)] + [None] + [VALUE + b"3"] * 5
    assert client.pool.facts.cached_limits()["max_keys"] == MAX_KEYS
    fetched = client.pool.facts.cached_limits()
    assert client.MGet(keys[:MAX_KEYS + 1])[-1] == VALUE + b"%d" % MAX_KEYS
    assert client.pool.facts.cached_limits() is fetched  # fetched once per pool


def test_mget_splits_even_when_the_cached_limits_were_stale(client):
    client.pool.facts.set_limits({})  # as if fetched from a server restarted since
    assert len(client.MGet([key(i) for i in range(N)])) == N
    assert client.pool.facts.cached_limits()["max_keys"] == MAX_KEYS


def test_range_over_max_items_is_paged_transparently(client):
    assert client.Range(key(0), key(N - 1)) == expected(0, N)
    assert client.Range(key(10), key(N - 10), include_value=False) == \
        [key(i) for i in range(10, N - 9)]
    assert client.Range(None, None, prefix=b"lim:", include_key=False) == \
        [VALUE + b"%d" % i for i in range(N)]


def test_slice_over_max_items_is_paged_transparently(client):
    assert client.Slice(key(5), MAX_ITEMS + 7) == expected(5, MAX_ITEMS + 12)
    assert client.Range(key(0), N - 3) == expected(0, N - 3)  # an int limit is a Slice
    assert client.Slice(key(5), MAX_ITEMS + 7, include_value=False) == \
        [key(i) for i in range(5, MAX_ITEMS + 12)]


def test_decoded_responses_survive_paging(limited):
    with Elevator(endpoint=limited.endpoint, decode_responses=True) as e:
        items = e.Range(key(0), key(N - 1))
        assert items[-1] == [key(N - 1).decode(), (VALUE + b"%d" % (N - 1)).decode()]
        assert len(e.MGet([key(i) for i in range(N)])) == N


def test_write_batch_over_max_keys_is_refused_before_sending(client):
    wb = client.WriteBatch()
    for i in range(MAX_KEYS + 1):
        wb.Put(b"limwb:%d" % i, b"x")
    with pytest.raises(LimitExceeded) as info:
        wb.Write()
    exc = info.value
    assert isinstance(exc, ValueError)
    assert (exc.limit, exc.value, exc.maximum) == ("max_keys", MAX_KEYS + 1, MAX_KEYS)
    assert str(MAX_KEYS + 1) in str(exc) and str(MAX_KEYS) in str(exc)
    assert "cannot be split" in str(exc)
    assert client.Exists(b"limwb:0") is False


def test_write_batch_at_the_limit_is_written(client):
    with client.WriteBatch() as wb:
        for i in range(MAX_KEYS):
            wb.Put(b"limok:%d" % i, b"y")
    assert client.Get(b"limok:%d" % (MAX_KEYS - 1)) == b"y"


def test_server_without_known_limits_still_answers_clearly(client):
    client.pool.facts.set_limits({})  # an original server: no LIMITS command
    wb = client.WriteBatch()
    for i in range(MAX_KEYS + 1):
        wb.Put(b"limwb2:%d" % i, b"x")
    with pytest.raises(ElevatorValueError, match=r"\(max_keys\)"):
        wb.Write()


def test_reply_size_limit_reaches_the_user_as_a_clear_error(client):
    with pytest.raises(ElevatorValueError, match=r"\(max_reply_size\)"):
        client.MGet([b"big:%03d" % i for i in range(300)])


# ------------------------------------------- RangeIter and dump over max_items

LIMITED_N = MIN_LIMIT + MIN_LIMIT // 2  # more items than the server sends in one reply


@pytest.fixture(scope="module")
def limited_items(tmp_path_factory):
    srv = ServerProcess(str(tmp_path_factory.mktemp("items-limit")),
                        args=["--max-items", str(MIN_LIMIT)])
    srv.start()
    with Elevator(endpoint=srv.endpoint) as e:
        for lo in range(0, LIMITED_N, 500):
            with e.WriteBatch() as wb:
                for i in range(lo, min(LIMITED_N, lo + 500)):
                    wb.Put(b"it:%05d" % i, b"v%d" % i)
    yield srv
    srv.stop()


def test_rangeiter_with_its_default_page_over_max_items_pages_within_the_limit(limited_items):
    with Elevator(endpoint=limited_items.endpoint) as e:
        assert e.pool.facts.cached_limits() is None  # nothing cached yet
        got = list(e.RangeIter(b"it:", b"it:99999"))
    assert got == [[b"it:%05d" % i, b"v%d" % i] for i in range(LIMITED_N)]


def test_rangeiter_pages_within_max_items_even_when_cached_limits_were_stale(limited_items):
    with Elevator(endpoint=limited_items.endpoint, decode_responses=True) as e:
        e.pool.facts.set_limits({})  # as cached from a server that had no limit then
        got = list(e.RangeIter(b"it:", include_value=False, page_size=5 * MIN_LIMIT))
    assert got == ["it:%05d" % i for i in range(LIMITED_N)]


def test_dump_over_max_items_with_the_default_page_size(limited_items):
    with Elevator(endpoint=limited_items.endpoint) as e:
        got = list(bulk.dump(e, prefix=b"it:"))
    assert got == [(b"it:%05d" % i, b"v%d" % i) for i in range(LIMITED_N)]
