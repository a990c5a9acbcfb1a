"""Why a socket has no connection, from the monitor events libzmq sends for each connection
attempt (the sequences seen on Linux with libzmq 4.3): pure logic, no socket."""
import zmq

from pyelevator_pool.connection import ConnectAttempts, invalid_address

DELAYED, CONNECTED, CLOSED, RETRIED = (zmq.EVENT_CONNECT_DELAYED, zmq.EVENT_CONNECTED,
                                       zmq.EVENT_CLOSED, zmq.EVENT_CONNECT_RETRIED)
TCP = "tcp://127.0.0.1:4141"


def cause(*events, endpoint=TCP):
    attempts = ConnectAttempts()
    for event in events:
        attempts.event(event)
    return attempts.cause(endpoint)


def test_a_refused_connection():
    # a TCP connect in progress, closed without connecting, retried; then a new attempt
    assert cause(DELAYED, CLOSED, RETRIED, DELAYED).startswith("connection refused")
    assert "port" in cause(DELAYED, CLOSED, RETRIED)
    # IPC fails at once: no DELAYED
    assert "socket path" in cause(CLOSED, RETRIED, endpoint="ipc:///run/x.sock")


def test_a_host_that_does_not_resolve():
    # the attempt never got as far as a socket: only RETRIED
    assert "'db.example' does not resolve" in cause(RETRIED, RETRIED,
                                                    endpoint="tcp://db.example:4141")
    # an IP address always resolves: only the socket can have failed
    assert "does not resolve" not in cause(RETRIED)
    assert "no socket could be opened" in cause(RETRIED)


def test_accepted_but_no_handshake():
    assert "never answered the ZeroMQ handshake" in cause(DELAYED, CONNECTED)


def test_a_connect_that_gets_no_answer():
    assert "got no answer" in cause(DELAYED)


def test_nothing_yet():
    assert "no connection attempt completed" in cause()


def test_a_lost_connection_is_not_mistaken_for_a_resolution_failure():
    # connected, handshaken, lost, retried: the retry follows a DISCONNECTED
    assert "does not resolve" not in cause(DELAYED, CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED,
                                           zmq.EVENT_DISCONNECTED, RETRIED,
                                           endpoint="tcp://db.example:4141")
    # a refusal seen earlier is forgotten once a connection succeeded
    assert "refused" not in cause(DELAYED, CLOSED, RETRIED, DELAYED, CONNECTED,
                                  zmq.EVENT_HANDSHAKE_SUCCEEDED)


def test_invalid_address_names_the_host_or_the_port():
    exc = zmq.ZMQError(22)
    assert "host 'no_such-host!' does not resolve" in invalid_address(
        "tcp://no_such-host!:4141", exc)
    assert "port 'x'" in invalid_address("tcp://h:x", exc)
    assert "not a valid ZeroMQ address" in invalid_address("ipc://", exc)
