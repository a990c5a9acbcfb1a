"""Errors that name their cause: a value that is not UTF-8 under decode_responses, and
an endpoint passed where the database name goes."""
import logging
import os
import subprocess
import sys

import pytest

from pyelevator_pool import Elevator, ElevatorDecodeError, ElevatorError, ElevatorPool


@pytest.fixture
def raw(db):
    db.Put(b"bad", b"caf\xe9")
    db.Put(b"good", "café".encode())
    return db


def decoding(raw, **options):
    return Elevator(raw.db_name, pool=raw.pool, decode_responses=True, **options)


def test_non_utf8_value_is_an_elevator_error_and_a_unicode_error(raw):
    E = decoding(raw)
    with pytest.raises(ElevatorDecodeError) as info:
        E.Get("bad")
    assert isinstance(info.value, ElevatorError)
    assert isinstance(info.value, UnicodeDecodeError)
    assert info.value.object == b"caf\xe9" and info.value.start == 3
    assert "encoding_errors=" in str(info.value)
    assert E.Get("good") == "café"


@pytest.mark.parametrize("mode, expected", [("replace", "caf\ufffd"),
                                            ("surrogateescape", "caf\udce9")])
def test_encoding_errors_chooses(raw, mode, expected):
    E = decoding(raw, encoding_errors=mode)
    assert E.Get("bad") == expected
    assert E.MGet(["bad", "good"]) == [expected, "café"]
    assert list(E.RangeIter(include_value=True)) == [["bad", expected], ["good", "café"]]
    assert list(E.RangeIter(include_value=False)) == ["bad", "good"]


def test_every_read_path_raises_the_decode_error(raw):
    E = decoding(raw)
    with pytest.raises(ElevatorDecodeError):
        E.MGet(["good", "bad"])
    with pytest.raises(ElevatorDecodeError):
        list(E.RangeIter(include_value=True))


def test_encoding_errors_is_checked():
    # checked before any I/O: no server is needed
    with pytest.raises(ValueError, match="encoding_errors"):
        Elevator(encoding_errors="bogus")
    with pytest.raises(TypeError, match="encoding_errors"):
        Elevator(encoding_errors=1)


def test_endpoint_given_as_database_name_hints_at_endpoint(server, admin):
    with pytest.raises(ElevatorError, match=r"endpoint="):
        Elevator(server.endpoint, pool=admin.pool)


def test_package_logger_has_a_null_handler():
    handlers = logging.getLogger("pyelevator_pool").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_from_url_binds_the_database_and_sets_options(server, admin):
    admin.createdb("urldb")
    try:
        url = server.endpoint.replace("tcp://", "elevator://") + "/urldb?timeout=5&max_size=3"
        with Elevator.from_url(url, decode_responses=True) as E:
            assert (E.db_name, E.pool.max_size, E.decode_responses) == ("urldb", 3, True)
            E.Put("k", "v")
            assert E.Get("k") == "v"
        pool = ElevatorPool.from_url(url.split("/urldb")[0] + "?max_size=2")
        try:
            assert pool.max_size == 2 and pool.endpoint == server.endpoint
        finally:
            pool.close()
        with pytest.raises(ValueError, match="database"):
            ElevatorPool.from_url(url)
    finally:
        admin.dropdb("urldb")


def test_elevator_url_is_the_default_endpoint(server, admin, monkeypatch):
    admin.createdb("envdb")
    try:
        url = server.endpoint.replace("tcp://", "elevator://") + "/envdb?max_size=2"
        monkeypatch.setenv("ELEVATOR_URL", url)
        with Elevator() as E:
            assert (E.db_name, E.pool.max_size) == ("envdb", 2)
            assert E.pool.endpoint == server.endpoint
        with Elevator("default") as E:
            assert E.db_name == "default"
        monkeypatch.setenv("ELEVATOR_URL", url + "&decode_responses=1")
        with pytest.raises(ValueError, match="ELEVATOR_URL.*decode_responses"):
            Elevator()
    finally:
        admin.dropdb("envdb")


def _cli(*args, env_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEVATOR_")}
    env["ELEVATOR_URL"] = env_url
    proc = subprocess.run([sys.executable, "-m", "pyelevator_pool.cli", *args],
                          capture_output=True, timeout=60, env=env)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def test_cli_reads_elevator_url(server, admin):
    admin.createdb("clidb")
    try:
        with Elevator("clidb", pool=admin.pool) as E:
            E.Put(b"k", b"from-url")
        url = server.endpoint.replace("tcp://", "elevator://") + "/clidb?timeout=5"
        code, out, err = _cli("get", "k", env_url=url)
        assert (code, out.strip(), err) == (0, b"from-url", "")
        code, out, err = _cli("get", "k", env_url=url + "&bogus=1")
        assert code == 2 and "ELEVATOR_URL" in err and "'bogus'" in err
    finally:
        admin.dropdb("clidb")


def test_client_bound_to_a_dropped_database(server, admin):
    admin.createdb("gone")
    with Elevator("gone", pool=admin.pool) as E:
        E.Put(b"k", b"v")
        E.dropdb("gone")
        # management commands that need no database still work
        assert "gone" not in E.listdb()
        E.createdb("other")
        E.dropdb("other")
        assert E.Ping() is True
        with pytest.raises(ElevatorError, match=r"'gone'.*was dropped: rebind with E.connect"):
            E.Get(b"k")
