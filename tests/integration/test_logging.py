"""The server's operator logs, read from a real server's log file: slow requests, failures
rate-limited per cause under a flood, connection lines at DEBUG."""
from __future__ import annotations

import re
import time

import pytest

from pyelevator_pool import protocol
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient, wait_until


def _log(server: ServerProcess) -> str:
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _lines(server: ServerProcess, pattern: str):
    return [line for line in _log(server).splitlines() if re.search(pattern, line)]


@pytest.fixture
def slow_server(tmp_path):
    # 0.001 ms: every request is "slow", deterministically (0 would turn the log off)
    with ServerProcess(str(tmp_path), args=["--slow-log-ms", "0.001"]) as srv:
        yield srv


def test_a_slow_request_is_one_line_with_command_db_sizes_duration_and_peer(slow_server):
    with RawClient(slow_server.endpoint) as c:
        assert c.call(protocol.DBCREATE, ["slowdb"]).status == protocol.Status.SUCCESS
        uid = c.uid("slowdb")
        assert c.call(protocol.PUT, [b"k", b"v" * 1000], uid).status == protocol.Status.SUCCESS
        for i in range(300):
            c.call(protocol.PUT, [b"r%05d" % i, b"x" * 100], uid)
        reply = c.call(protocol.RANGE, [b"r", b"s"], uid)  # heavy: run by a worker
        assert len(reply.datas) == 300
        assert c.call(protocol.GET, [b"k"], uid).datas == [b"v" * 1000]  # the GET fast path
    pattern = r"slow request: cmd=PUT db=slowdb ms=[0-9.]+ request_bytes=(\d+) " \
              r"reply_bytes=(\d+) status=ok peer=127\.0\.0\.1 conn=[0-9a-f]+"
    assert wait_until(lambda: _lines(slow_server, pattern), timeout=10)
    line = _lines(slow_server, pattern)[0]
    request_bytes, reply_bytes = map(int, re.search(pattern, line).groups())  # type: ignore
    assert request_bytes > 1000 and reply_bytes > 0
    assert "WARNING" in line
    admin = r"slow request: cmd=DBCREATE db=- ms=[0-9.]+ request_bytes=(\d+) "
    assert int(re.search(admin, _lines(slow_server, admin)[0]).group(1)) > 0  # type: ignore
    gets = r"slow request: cmd=GET db=slowdb ms=[0-9.]+ request_bytes=\d+ reply_bytes=\d+ status=ok"
    assert wait_until(lambda: _lines(slow_server, gets), timeout=10)
    ranges = r"slow request: cmd=RANGE db=slowdb ms=[0-9.]+ request_bytes=\d+ " \
             r"reply_bytes=(\d+) status=ok peer=127\.0\.0\.1"
    assert wait_until(lambda: _lines(slow_server, ranges), timeout=10)
    reply_size = int(re.search(ranges, _lines(slow_server, ranges)[0]).group(1))  # type: ignore
    assert reply_size > 300 * 100  # the worker's reply, measured


def test_a_flood_of_malformed_requests_logs_a_few_lines_not_one_each(fresh_server):
    start = time.monotonic()
    n = 2000
    with RawClient(fresh_server.endpoint) as c:
        answered = 0
        for chunk in range(0, n, 100):  # bounded: 2000 requests, 100 in flight at most
            for _ in range(100):
                c.sock.send(b"\xc1 not msgpack")
            for _ in range(100):
                reply = protocol.decode_reply(c.recv_frames(timeout=30))
                assert reply.err_code == protocol.ErrorCode.REQUEST
                answered += 1
        assert answered == n
        elapsed = time.monotonic() - start
        lines = _lines(fresh_server, "malformed request")
        assert 1 <= len(lines) <= int(elapsed) + 2, lines
        assert c.call(protocol.PING).status == protocol.Status.SUCCESS  # still serving
    # the tail of the flood is reported with its count once its second is over
    assert wait_until(lambda: any("more in the last" in line for line in
                                  _lines(fresh_server, "malformed request")), timeout=10)


def test_an_unknown_database_is_logged_with_its_cause(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        reply = c.call(protocol.GET, [b"k"], "no-such-uid")
        assert reply.status == protocol.Status.FAILURE
    assert wait_until(lambda: _lines(
        fresh_server, r"request failed: unknown database: cmd=GET db=uid:no-such-uid "
                      r"peer=127\.0\.0\.1"), timeout=10)


def test_a_missing_key_is_an_answer_not_a_logged_failure(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        uid = c.uid("default")
        assert c.call(protocol.GET, [b"absent"], uid).err_code == protocol.ErrorCode.KEY
        c.call(protocol.GET, [b"k"], "no-such-uid")  # a logged one, as a marker
    assert wait_until(lambda: _lines(fresh_server, "unknown database"), timeout=10)
    assert not _lines(fresh_server, "request failed.*cmd=GET db=default")


def test_slow_log_zero_logs_no_slow_request(tmp_path):
    with ServerProcess(str(tmp_path), args=["--slow-log-ms", "0"]) as srv:
        with RawClient(srv.endpoint) as c:
            for _ in range(20):
                assert c.call(protocol.PING).status == protocol.Status.SUCCESS
            c.call(protocol.GET, [b"k"], "no-such-uid")  # a marker that the log is written
        assert wait_until(lambda: _lines(srv, "unknown database"), timeout=10)
        assert not _lines(srv, "slow request")


def test_connections_opened_and_closed_at_debug(tmp_path):
    with ServerProcess(str(tmp_path), args=["--log-level", "debug"]) as srv:
        opened = r"DEBUG .*connection opened: peer=127\.0\.0\.1:(\d+) fd=(\d+)"
        with RawClient(srv.endpoint) as c:
            assert c.call(protocol.PING).status == protocol.Status.SUCCESS
            # still connected: the monitor is read every 0.1 s, and the peer's name is read
            # from the descriptor then (a connection already closed is logged as peer=?)
            assert wait_until(lambda: _lines(srv, opened), timeout=10)
        closed = r"DEBUG .*connection closed: peer=127\.0\.0\.1:\d+ fd=\d+"
        assert wait_until(lambda: _lines(srv, closed), timeout=10)
        # one line per connection, not per request
        with RawClient(srv.endpoint) as c:
            for _ in range(50):
                c.call(protocol.PING)
        assert wait_until(lambda: len(_lines(srv, "connection closed")) >= 3, timeout=10)
        assert len(_lines(srv, "connection opened")) <= 3 + 1  # readiness pings, two clients


def test_connection_lines_are_off_at_info(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        assert c.call(protocol.PING).status == protocol.Status.SUCCESS
        c.call(protocol.GET, [b"k"], "no-such-uid")
    assert wait_until(lambda: _lines(fresh_server, "unknown database"), timeout=10)
    assert not _lines(fresh_server, "connection (opened|closed)")
