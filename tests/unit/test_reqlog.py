"""The request log's choices as pure logic: threshold, causes, what is never logged."""
from __future__ import annotations

import logging
import math

import pytest

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, encode_error_reply, encode_reply
from pyelevator_pool.server.peers import PeerBook
from pyelevator_pool.server.ratelog import RateLimitedLog
from pyelevator_pool.server.reqlog import RequestLog, slow_threshold


def test_slow_threshold_in_seconds_and_zero_is_never():
    assert slow_threshold(100) == 0.1
    assert slow_threshold(0.5) == 0.0005
    assert math.isinf(slow_threshold(0))
    for bad in (-1, float("nan"), float("inf"), "100", True):
        with pytest.raises(ValueError):
            slow_threshold(bad)  # type: ignore[arg-type]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


@pytest.fixture
def made():
    logger = logging.getLogger("elevator.server")
    cap = Lines()
    logger.addHandler(cap)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    clock = [0.0]
    rl = RateLimitedLog(1.0, clock=lambda: clock[0])
    names = {"u1": "my db"}
    reqlog = RequestLog(100, name_of=names.get, peers=PeerBook(), rate_log=rl)
    yield reqlog, cap.lines
    logger.removeHandler(cap)
    logger.setLevel(old)


def test_a_slow_success_is_one_warning_with_every_field(made):
    reqlog, lines = made
    reply = encode_reply([b"v"])
    reqlog.answered(b"\x00\x01", protocol.GET, "u1", 40, reply, 0.25, None)
    assert lines == [(logging.WARNING, "slow request: cmd=GET db=\"my db\" ms=250.0 "
                      f"request_bytes=40 reply_bytes={sum(map(len, reply))} status=ok "
                      "peer=? conn=0001")]


def test_a_miss_is_not_logged_but_an_unknown_uid_is(made):
    reqlog, lines = made
    miss = encode_error_reply(ErrorCode.KEY, "Key b'k' does not exist")
    reqlog.answered(b"a", protocol.GET, "u1", 10, miss, 0.0, ErrorCode.KEY)
    assert lines == []
    gone = encode_error_reply(ErrorCode.RUNTIME, "Database zz doesn't exist",
                              detail={"unknown_uid": "zz"})
    reqlog.answered(b"a", protocol.GET, "zz", 10, gone, 0.0, ErrorCode.RUNTIME)
    assert lines == [(logging.INFO, "request failed: unknown database: cmd=GET db=uid:zz "
                      "peer=? conn=61: Database zz doesn't exist")]


def test_causes_and_levels(made):
    reqlog, lines = made
    over = encode_error_reply(ErrorCode.VALUE, "MGET: too many", detail={"limit": "max_keys"})
    reqlog.failed(b"a", protocol.MGET, "u1", over, ErrorCode.VALUE)
    fault = encode_error_reply(ErrorCode.DATABASE, "corrupt\nfile")
    reqlog.failed(b"a", protocol.GET, "u1", fault, ErrorCode.DATABASE)
    auth = encode_error_reply(ErrorCode.AUTH, "revoked")
    reqlog.failed(b"a", None, None, auth, ErrorCode.AUTH)
    reqlog.failed(b"a", "NOSUCH\nCMD", None, encode_error_reply(ErrorCode.KEY, "x"),
                  ErrorCode.KEY)
    assert [level for level, _ in lines] == [logging.INFO, logging.ERROR, logging.WARNING,
                                             logging.INFO]
    assert "over the limit max_keys: cmd=MGET" in lines[0][1]
    assert "server error DATABASE" in lines[1][1] and "\n" not in lines[1][1]
    assert "refused: CURVE key not authorized" in lines[2][1]
    assert "unknown command: cmd=? " in lines[3][1]  # a client's text is not a cause


def test_a_flood_of_one_cause_is_held(made):
    reqlog, lines = made
    bad = encode_error_reply(ErrorCode.REQUEST, "not msgpack")
    for _ in range(1000):
        reqlog.failed(b"a", None, None, bad, ErrorCode.REQUEST)
    assert len(lines) == 1


def test_name_of_must_be_callable():
    with pytest.raises(TypeError):
        RequestLog(100, name_of=None, peers=PeerBook(), rate_log=RateLimitedLog())  # type: ignore


def test_peer_book_arguments_are_checked():
    with pytest.raises(ValueError):
        PeerBook(0)
