"""Elevator URLs to constructor options: pure, no socket."""
import pytest

from pyelevator_pool.urls import parse


def test_tcp_url_with_database_and_options():
    assert parse("elevator://host:4141/mydb?timeout=5&max_size=16") == (
        "tcp://host:4141", "mydb", {"timeout": 5.0, "max_size": 16}, {})


def test_defaults_port_and_no_database():
    assert parse("elevator://localhost") == ("tcp://localhost:4141", None, {}, {})
    assert parse("elevator+tcp://[::1]:5000/") == ("tcp://[::1]:5000", None, {}, {})


def test_ipc_url_takes_the_database_as_a_parameter():
    assert parse("elevator+ipc:///run/elevator.sock?db=mydb&decode_responses=true") == (
        "ipc:///run/elevator.sock", "mydb", {}, {"decode_responses": True})


def test_optional_and_client_options():
    _, _, pool, client = parse("elevator://h/d?health_check_interval=none"
                               "&compression=0&encoding_errors=replace")
    assert pool == {"health_check_interval": None}
    assert client == {"compression": False, "encoding_errors": "replace"}


@pytest.mark.parametrize("url, message", [
    ("elevator://h/d?bogus=1", r"unknown parameter 'bogus'"),
    ("elevator://h/d?max_size=big", r"parameter 'max_size': 'big' is not a valid int"),
    ("elevator://h/d?timeout=soon", r"parameter 'timeout'"),
    ("elevator://h/d?decode_responses=maybe", r"parameter 'decode_responses'"),
    ("elevator://h/d?timeout=1&timeout=2", r"'timeout' given twice"),
    ("redis://h/d", r"scheme must be one of"),
    ("elevator://h:99999/d", r"port"),
    ("elevator:///d", r"needs a host"),
    ("elevator://h/d?db=e", r"named twice"),
    ("elevator+ipc://host/x", r"no host"),
    ("elevator+ipc://", r"socket path"),
])
def test_bad_urls_name_the_problem(url, message):
    with pytest.raises(ValueError, match=message):
        parse(url)


def test_url_must_be_a_str():
    with pytest.raises(TypeError, match="url must be a str, not bytes"):
        parse(b"elevator://h")


def test_open_is_a_client_option():
    assert parse("elevator://h/d?open=false")[3] == {"open": False}
    with pytest.raises(ValueError, match="parameter 'open'"):
        parse("elevator://h/d?open=later")


def test_open_in_the_environment_is_refused_with_the_way_out():
    from pyelevator_pool.urls import from_environment
    with pytest.raises(ValueError, match=r"ELEVATOR_URL: open: client options.*from_url"):
        from_environment({"ELEVATOR_URL": "elevator://h/d?open=false"})
