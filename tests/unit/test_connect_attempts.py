"""Why no connection was made, where no socket is needed: an address ZeroMQ refuses at
once, and a host name the resolver rejects or is slow to answer (getaddrinfo replaced)."""
import socket
import threading

import zmq

from pyelevator_pool.connection import invalid_address
from pyelevator_pool.reachability import Probe


def test_invalid_address_names_the_host_or_the_port():
    exc = zmq.ZMQError(22)
    assert "host 'no_such-host!' does not resolve" in invalid_address(
        "tcp://no_such-host!:4141", exc)
    assert "port 'x'" in invalid_address("tcp://h:x", exc)
    assert "not a valid ZeroMQ address" in invalid_address("ipc://", exc)


def test_a_host_the_resolver_rejects(monkeypatch):
    def rejects(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", rejects)
    assert Probe("tcp://db.example:4141", 1.0).cause(grace=30) == (
        "the host 'db.example' does not resolve (Name or service not known)")


def test_a_resolver_slower_than_the_probe(monkeypatch):
    release = threading.Event()

    def hangs(host, port, *args, **kwargs):
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hangs)
    try:
        cause = Probe("tcp://db.example:4141", 0.1).cause(grace=30)
    finally:
        release.set()
    assert cause == "the host 'db.example' did not resolve within 0.05s (is a DNS server reachable?)"


def test_a_port_out_of_range():
    # ZeroMQ takes tcp://h:99999 (and connects to another port): the probe says why not
    assert Probe("tcp://127.0.0.1:99999", 1.0).cause(grace=30) == (
        "the port '99999' is not a number from 1 to 65535")


def test_the_monitor_is_not_subscribed_to_events_that_repeat_during_an_outage():
    # an idle socket's unread monitor would fill with them and block the I/O thread
    from pyelevator_pool import connection
    repeating = (zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CLOSED
                 | zmq.EVENT_CONNECTED)
    assert connection._MONITOR_EVENTS & repeating == 0
