"""errors.py: each exception class exists once (protocol.py and the server use errors.py's
ProtocolError and CompressionUnavailable), and ZeroMQ failures become TransportErrors in one
place (errors.from_zmq). No sockets."""
from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest
import zmq

import pyelevator_pool
from pyelevator_pool import errors, protocol

PACKAGE = Path(pyelevator_pool.__file__).resolve().parent


def _classes_defined() -> dict:
    """class name -> the package's files that define a class of that name (any level)."""
    found: dict = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    return found


def test_every_exception_class_of_errors_is_defined_once_in_the_package():
    defined = _classes_defined()
    names = [n for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert "ProtocolError" in names and "CompressionUnavailable" in names
    for name in names:
        assert defined.get(name) == ["errors.py"], (name, defined.get(name))


def test_one_argument_parser_class():
    parsers = [path for path in sorted(PACKAGE.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef)
               and any(ast.unparse(b) in ("argparse.ArgumentParser", "ArgumentParser")
                       for b in node.bases)]
    assert [p.name for p in parsers] == ["argparsing.py"]


def test_protocol_names_are_errors_classes():
    assert protocol.ProtocolError is errors.ProtocolError is pyelevator_pool.ProtocolError
    assert (protocol.CompressionUnavailable is errors.CompressionUnavailable
            is pyelevator_pool.CompressionUnavailable)
    assert protocol.ErrorCode is errors.ErrorCode


def test_protocol_error_is_an_elevator_error_a_value_error_and_carries_code_and_id():
    exc = errors.ProtocolError("bad frame")
    assert isinstance(exc, errors.ElevatorError) and isinstance(exc, ValueError)
    assert (exc.code, exc.id, str(exc)) == (errors.ErrorCode.REQUEST, None, "bad frame")
    exc = errors.ProtocolError("too big", errors.ErrorCode.VALUE, id=7)
    assert (exc.code, exc.id) == (errors.ErrorCode.VALUE, 7)


def test_what_the_server_raises_for_a_bad_request_is_what_a_user_catches():
    frame = protocol.encode_request(protocol.PUT, [b"k", b"x" * 2000], "uid", id=41)
    with pytest.raises(pyelevator_pool.ProtocolError) as info:
        protocol.decode_request(frame, max_size=1000)
    assert isinstance(info.value, pyelevator_pool.ElevatorError)
    assert info.value.id == 41 and info.value.code == errors.ErrorCode.REQUEST


def test_compression_unavailable_is_an_elevator_error_and_a_runtime_error():
    exc = errors.CompressionUnavailable("no lz4")
    assert isinstance(exc, errors.ElevatorError) and isinstance(exc, RuntimeError)


# ------------------------------------------------------------------- from_zmq

def test_a_zmq_again_is_a_timeout():
    exc = errors.from_zmq(zmq.Again(), "GET to tcp://h:1", request_sent=False)
    assert type(exc) is errors.ElevatorTimeout and isinstance(exc, TimeoutError)
    assert exc.request_sent is False
    assert str(exc).startswith("GET to tcp://h:1: the queue is full")


@pytest.mark.parametrize("sent", [True, False])
def test_any_other_zmq_error_is_a_connection_error(sent):
    cause = zmq.ZMQError(errno.EMFILE)
    exc = errors.from_zmq(cause, "cannot open a socket to tcp://h:1", request_sent=sent)
    assert type(exc) is errors.ConnectionError and isinstance(exc, OSError)
    assert exc.request_sent is sent
    assert str(exc) == f"cannot open a socket to tcp://h:1: {cause}"


def test_from_zmq_returns_the_error_for_the_caller_to_raise_from_the_cause():
    cause = zmq.ZMQError(errno.ENOTSOCK)
    with pytest.raises(errors.ConnectionError) as info:
        try:
            raise cause
        except zmq.ZMQError as exc:
            raise errors.from_zmq(exc, "PING to tcp://h:1", request_sent=True) from exc
    assert info.value.__cause__ is cause


# ---------------------------------------------------------- error_from_reply

@pytest.mark.parametrize("code, cls", [
    (errors.ErrorCode.KEY, errors.ElevatorKeyError),
    (errors.ErrorCode.TYPE, errors.ElevatorTypeError),
    (errors.ErrorCode.DATABASE, errors.DatabaseError), (None, errors.ServerError),
    (99, errors.ServerError)])
def test_error_from_reply_maps_codes_to_classes(code, cls):
    exc = errors.error_from_reply(code, "m", command="GET", db="d")
    assert type(exc) is cls and str(exc) == "m (GET db='d')"


def test_error_from_reply_over_a_limit_is_also_a_limit_exceeded():
    exc = errors.error_from_reply(errors.ErrorCode.REQUEST, "big", detail={
        "limit": "max_keys", "maximum": 10, "value": 11})
    assert isinstance(exc, errors.RequestError) and isinstance(exc, errors.LimitExceeded)
    assert (exc.limit, exc.maximum, exc.value) == ("max_keys", 10, 11)
