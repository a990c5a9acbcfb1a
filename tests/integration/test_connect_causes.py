"""A call that finds no server says why, with the endpoint and the call's whole timeout:
a refused connection, a host that does not resolve, a listener that accepts TCP but never
answers ZeroMQ, a ZeroMQ peer that never replies. Each a real socket on loopback."""
import socket
import time

import pytest
import zmq

from pyelevator_pool import AddressError, ConnectionError, Elevator, ElevatorPool, ElevatorTimeout

#: an upper bound on a 1-2 s call on a loaded machine (never a speed assertion)
GENEROUS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fails(call):
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        call()
    assert time.monotonic() - started < GENEROUS
    return info.value


def test_a_refused_connection_says_refused():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    exc = fails(lambda: Elevator(endpoint=endpoint, timeout=1))
    assert isinstance(exc, ElevatorTimeout) and not exc.request_sent
    assert str(exc) == (f"DBCONNECT: no connection to {endpoint} within 1s: connection "
                        "refused (nothing listens on that port: is the server running?)")


def test_the_message_names_the_calls_whole_timeout_not_what_was_left():
    # attempts of 0.2 s each, retried: the message is about the call's 1.5 s
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Elevator(endpoint=endpoint, timeout=1.5, connect_timeout=0.2, open=False) as E:
        exc = fails(lambda: E.Get(b"k"))
    # The last attempt either had the rest of the call to wait (within the call's 1.5 s)
    # or its 0.2 s, the deadline then passing in the retry's sleep: both name the 1.5 s.
    assert str(exc).endswith("connection refused (nothing listens on that port: "
                             "is the server running?)")
    assert (f"no connection to {endpoint} within 1.5s: " in str(exc)
            or f"no connection to {endpoint} after 0.2s (connect_timeout; the call's "
               "timeout is 1.5s): " in str(exc)), str(exc)


def test_a_host_that_does_not_resolve_fails_at_once():
    # a name the resolver rejects (never sent to DNS): libzmq refuses it at connect
    endpoint = "tcp://no_such-host!.invalid:4141"
    exc = fails(lambda: Elevator(endpoint=endpoint, timeout=60))
    assert isinstance(exc, AddressError) and isinstance(exc, ConnectionError)
    assert str(exc) == (f"cannot connect to {endpoint}: the host 'no_such-host!.invalid' "
                        "does not resolve (it is not a valid host name)")
    # never retried: a 60 s call fails well before its deadline, again on the next call
    with ElevatorPool(endpoint, timeout=60) as pool:
        started = time.monotonic()
        with pytest.raises(AddressError):
            pool.request("PING", [])
        with pytest.raises(AddressError):
            pool.request("PING", [])
        assert time.monotonic() - started < GENEROUS


def test_a_listener_that_accepts_tcp_but_never_speaks_zeromq():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel accepts into the backlog; nothing is ever written
        endpoint = "tcp://127.0.0.1:%d" % listener.getsockname()[1]
        exc = fails(lambda: Elevator(endpoint=endpoint, timeout=1))
    assert isinstance(exc, ElevatorTimeout) and not exc.request_sent
    assert str(exc) == (f"DBCONNECT: no connection to {endpoint} within 1s: the port accepts "
                        "connections, but no ZeroMQ handshake completed (is an Elevator server "
                        "listening there?)")


def test_an_ipc_path_where_no_server_listens(tmp_path):
    endpoint = f"ipc://{tmp_path}/absent.sock"
    exc = fails(lambda: Elevator(endpoint=endpoint, timeout=1))
    assert str(exc) == (f"DBCONNECT: no connection to {endpoint} within 1s: no socket file at "
                        "that path (is the server running?)")


def test_a_zeromq_peer_that_never_replies():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    try:
        endpoint = "tcp://127.0.0.1:%d" % router.bind_to_random_port("tcp://127.0.0.1")
        exc = fails(lambda: Elevator(endpoint=endpoint, timeout=1))
        assert router.poll(10_000), "the request reached the peer"
    finally:
        router.close(0)
        ctx.term()
    assert isinstance(exc, ElevatorTimeout) and exc.request_sent
    assert str(exc) == (f"DBCONNECT: connected to {endpoint} and sent the request, but no "
                        "reply came within 1s")

