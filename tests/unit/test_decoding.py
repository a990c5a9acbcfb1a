"""decode_responses' decoding and the endpoint-as-database-name check: pure, no socket."""
import pytest

from pyelevator_pool.args import looks_like_endpoint
from pyelevator_pool.decoding import check_errors, decode
from pyelevator_pool.errors import ElevatorDecodeError, ElevatorError


def test_strict_failure_is_both_error_kinds_and_locates_the_bytes():
    with pytest.raises(ElevatorDecodeError) as info:
        decode(b"ab\xffcd")
    exc = info.value
    assert isinstance(exc, ElevatorError) and isinstance(exc, UnicodeDecodeError)
    assert (exc.encoding, exc.object, exc.start, exc.end) == ("utf-8", b"ab\xffcd", 2, 3)
    assert "decode_responses=False" in str(exc) and "encoding_errors=" in str(exc)


def test_handlers():
    assert decode("é".encode()) == "é"
    assert decode(b"a\xff", "replace") == "a\ufffd"
    assert decode(b"a\xff", "surrogateescape").encode("utf-8", "surrogateescape") == b"a\xff"


def test_check_errors():
    assert check_errors("replace") == "replace"
    with pytest.raises(ValueError, match="encoding_errors.*'utf8'"):
        check_errors("utf8")
    with pytest.raises(TypeError, match="encoding_errors must be a str, not NoneType"):
        check_errors(None)


@pytest.mark.parametrize("name", ["127.0.0.1:4141", "localhost:4141", "tcp://h:1",
                                  "ipc:///run/e.sock", "[::1]:4141"])
def test_endpoints_look_like_endpoints(name):
    assert looks_like_endpoint(name)


@pytest.mark.parametrize("name", ["default", "mydb", "/srv/leveldb/x", "a:b", "users.v2"])
def test_database_names_do_not(name):
    assert not looks_like_endpoint(name)
