"""Running out of file descriptors on the real server: its soft limit is raised to the hard
one, failed accepts are logged (rate-limited) while existing clients are still served, new
clients get in again once descriptors are freed; heartbeats drop silent peers."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import zmq

from pyelevator_pool import protocol
from pyelevator_pool.server.__main__ import build_parser
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient, wait_until

pytestmark = pytest.mark.timeout(180)

MARKER = "cannot accept new connections"


def limited_python(tmp_path, soft: int, hard: int) -> str:
    """A python that starts with these open-files limits (ServerProcess runs PYTHON -m ...)."""
    wrapper = tmp_path / "python-limited"
    wrapper.write_text(f"#!/bin/sh\nulimit -S -n {soft} && ulimit -H -n {hard} || exit 99\n"
                       f'exec "{sys.executable}" "$@"\n')
    os.chmod(wrapper, 0o755)
    return str(wrapper)


def open_files_limits(pid: int):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return tuple(int(v) for v in line.split()[3:5])
    raise AssertionError("no open files line in /proc/PID/limits")


def start(tmp_path, python: str, *args: str) -> ServerProcess:
    (tmp_path / "data").mkdir(exist_ok=True)
    return ServerProcess(str(tmp_path / "data"), python=python,
                         args=["--log-level", "DEBUG", *args]).start()


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="needs /proc")
def test_the_soft_open_files_limit_is_raised_to_the_hard_one(tmp_path):
    srv = start(tmp_path, limited_python(tmp_path, 64, 256))
    try:
        assert open_files_limits(srv.pid) == (256, 256)
        assert "open files limit raised from 64 to 256" in srv.log_tail(lines=100000)
    finally:
        srv.stop()


def test_out_of_descriptors_the_server_logs_serves_its_clients_and_recovers(tmp_path):
    srv = start(tmp_path, limited_python(tmp_path, 64, 64))
    existing = RawClient(srv.endpoint, timeout=10)
    extra = []
    try:
        assert existing.call(protocol.PING).status == protocol.Status.SUCCESS
        started = time.monotonic()
        for _ in range(30):  # at most 300 connections; 64 descriptors run out long before
            for _ in range(10):
                sock = zmq.Context.instance().socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(srv.endpoint)
                sock.send(protocol.encode_request(protocol.PING, []))
                extra.append(sock)
            if wait_until(lambda: MARKER in srv.log_tail(lines=100000), timeout=0.5):
                break
        log = srv.log_tail(lines=100000)
        assert MARKER in log, log
        assert "Too many open files" in log and "open files limit 64" in log
        # The clients it already has are still answered.
        for _ in range(3):
            assert existing.call(protocol.PING).status == protocol.Status.SUCCESS
        assert srv.is_running()
        # One line a second at most, however fast the listener fails.
        time.sleep(1.5)  # lets the failures go on: what is measured is the logging rate
        lines = [ln for ln in srv.log_tail(lines=100000).splitlines() if MARKER in ln]
        assert len(lines) <= time.monotonic() - started + 2, lines
        for sock in extra:
            sock.close(0)
        extra.clear()
        # Descriptors freed: a new client gets in (its connection waits in the backlog
        # until the server can accept it).
        with RawClient(srv.endpoint, timeout=30) as fresh:
            assert fresh.call(protocol.PING).status == protocol.Status.SUCCESS
        assert existing.call(protocol.PING).status == protocol.Status.SUCCESS
        assert "Traceback" not in srv.log_tail(lines=100000)
    finally:
        for sock in extra:
            sock.close(0)
        existing.close()
        srv.stop()


def zmtp_null_dealer_handshake() -> bytes:
    """A ZMTP 3.1 greeting (NULL mechanism) and READY command of a DEALER peer."""
    greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00")
                + b"\x00" + b"\x00" * 31)
    body = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    return greeting + b"\x04" + bytes([len(body)]) + body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and ignore: PINGs among them) until the server closes, or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


def test_heartbeats_drop_a_peer_that_went_silent(tmp_path):
    srv = start(tmp_path, sys.executable, "--heartbeat-interval", "0.2")
    port = int(srv.endpoint.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            silent.sendall(zmtp_null_dealer_handshake())  # then never answers a PING
            assert closed_by_server(silent, timeout=15), "the silent peer was never dropped"
        with RawClient(srv.endpoint) as live:  # a live peer answers PINGs: it stays
            assert live.call(protocol.PING).status == protocol.Status.SUCCESS
            time.sleep(1.0)  # five heartbeat intervals
            assert live.call(protocol.PING, timeout=10).status == protocol.Status.SUCCESS
    finally:
        srv.stop()


def test_heartbeat_interval_flag():
    assert build_parser().parse_args([]).heartbeat_interval == 5.0
    assert build_parser().parse_args(["--heartbeat-interval", "0"]).heartbeat_interval == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--heartbeat-interval", "-1"])


def test_a_graceful_stop_works_while_out_of_descriptors(tmp_path):
    srv = start(tmp_path, limited_python(tmp_path, 64, 64))
    extra = []
    try:
        for _ in range(30):
            for _ in range(10):
                sock = zmq.Context.instance().socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(srv.endpoint)
                extra.append(sock)
            if wait_until(lambda: MARKER in srv.log_tail(lines=100000), timeout=0.5):
                break
        assert MARKER in srv.log_tail(lines=100000)
        began = time.monotonic()
        assert srv.terminate(timeout=30) == 0, srv.log_tail()
        assert time.monotonic() - began < 15, "the stop hung on the event monitor"
        assert "elevator-server stopped" in srv.log_tail()
    finally:
        for sock in extra:
            sock.close(0)
        srv.stop()
