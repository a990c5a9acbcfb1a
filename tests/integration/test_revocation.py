"""Revoking a CURVE key on the real server: the revoked client's open connection is refused
at its next request after SIGHUP; start-time warnings about key file permissions; clear
errors for malformed keys."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import zmq

from pyelevator_pool import AuthenticationError, CurveKeys, Elevator, protocol
from pyelevator_pool.security import load_public_key
from pyelevator_pool.testing import ServerProcess
from rawclient import wait_until

pytestmark = pytest.mark.timeout(120)

LONG = 20.0


def keygen(directory, name) -> None:
    done = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "keygen",
                           str(directory), "--name", name],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for name in ("server", "alice", "mallory"):
        keygen(root, name)
    return root


def curve(pairs, name) -> CurveKeys:
    return CurveKeys.from_files(pairs / "server.key", pairs / f"{name}.key_secret")


def authorize(directory, pairs, *names) -> None:
    directory.mkdir(exist_ok=True)
    for name in names:
        (directory / f"{name}.key").write_bytes((pairs / f"{name}.key").read_bytes())


def start_server(tmp_path, pairs, authorized, secret=None) -> ServerProcess:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    srv = ServerProcess(str(data), security=curve(pairs, "alice"),
                        args=["--curve-secret-key", str(secret or pairs / "server.key_secret"),
                              "--curve-authorized-keys", str(authorized)])
    return srv.start()


class CurveDealer:
    """A raw DEALER with a client's CURVE keys; every receive bounded."""

    def __init__(self, endpoint: str, keys: CurveKeys) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        keys(self.sock)
        self.sock.connect(endpoint)

    def ping(self, timeout: float = 5.0) -> protocol.Reply:
        self.sock.send(protocol.encode_request(protocol.PING, [], id=7))
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply within {timeout}s")
        return protocol.decode_reply(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close(0)


def reloaded(srv: ServerProcess, count: int, before: int) -> bool:
    """True once the server logged a reload that left ``count`` keys, after ``before`` lines."""
    lines = srv.log_tail(lines=100000).splitlines()[before:]
    return any(f"CURVE: {count} authorized client keys" in line for line in lines)


def log_lines(srv: ServerProcess) -> int:
    return len(srv.log_tail(lines=100000).splitlines())


def test_revoked_key_is_refused_on_its_open_connection(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice", "mallory")
    srv = start_server(tmp_path, pairs, authorized)
    mallory = CurveDealer(srv.endpoint, curve(pairs, "mallory"))
    alice = CurveDealer(srv.endpoint, curve(pairs, "alice"))
    try:
        assert mallory.ping().status == protocol.Status.SUCCESS
        before = log_lines(srv)
        (authorized / "mallory.key").unlink()
        os.kill(srv.pid, signal.SIGHUP)
        assert wait_until(lambda: reloaded(srv, 1, before), timeout=10), srv.log_tail()
        reply = mallory.ping()
        assert reply.status == protocol.Status.FAILURE, reply
        assert reply.err_code == protocol.ErrorCode.AUTH == 10
        assert "no longer authorized" in reply.err_msg
        assert reply.id == 7  # the client can match the refusal to its request
        assert alice.ping().status == protocol.Status.SUCCESS  # the others are untouched
        # Authorized again: the same open connection is served again.
        before = log_lines(srv)
        authorize(authorized, pairs, "mallory")
        os.kill(srv.pid, signal.SIGHUP)
        assert wait_until(lambda: reloaded(srv, 2, before), timeout=10), srv.log_tail()
        assert mallory.ping().status == protocol.Status.SUCCESS
        assert "Traceback" not in srv.log_tail(lines=100000)
    finally:
        mallory.close()
        alice.close()
        srv.stop()


def test_a_revoked_key_raises_authentication_error_in_the_client(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice", "mallory")
    srv = start_server(tmp_path, pairs, authorized)
    try:
        with Elevator(endpoint=srv.endpoint, curve=curve(pairs, "mallory"), timeout=LONG) as e:
            assert e.Ping()  # its pooled connection is open and authenticated
            before = log_lines(srv)
            (authorized / "mallory.key").unlink()
            os.kill(srv.pid, signal.SIGHUP)
            assert wait_until(lambda: reloaded(srv, 1, before), timeout=10), srv.log_tail()
            with pytest.raises(AuthenticationError, match="no longer authorized"):
                e.Ping()
    finally:
        srv.stop()


def test_a_failed_reload_keeps_the_old_keys_for_the_open_connections(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice")
    srv = start_server(tmp_path, pairs, authorized)
    alice = CurveDealer(srv.endpoint, curve(pairs, "alice"))
    try:
        assert alice.ping().status == protocol.Status.SUCCESS
        (authorized / "broken.key").write_text(
            'metadata\ncurve\n    public-key = "tooshort"\n')
        os.kill(srv.pid, signal.SIGHUP)
        assert wait_until(lambda: "keeping the old ones" in srv.log_tail(), timeout=10), \
            srv.log_tail()
        assert "broken.key" in srv.log_tail()
        assert alice.ping().status == protocol.Status.SUCCESS
    finally:
        alice.close()
        srv.stop()


def test_loose_key_permissions_are_warned_about_at_start(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice")
    secret = tmp_path / "server.key_secret"
    secret.write_bytes((pairs / "server.key_secret").read_bytes())
    os.chmod(secret, 0o644)
    os.chmod(authorized, 0o777)
    srv = start_server(tmp_path, pairs, authorized, secret=secret)
    try:
        log = srv.log_tail(lines=100000)
        assert any("WARNING" in line and str(secret) in line and "readable" in line
                   for line in log.splitlines()), log
        assert any("WARNING" in line and str(authorized) in line and "writable" in line
                   for line in log.splitlines()), log
    finally:
        srv.stop()


def test_private_key_files_get_no_permission_warning(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice")
    os.chmod(authorized, 0o755)
    srv = start_server(tmp_path, pairs, authorized)  # keygen made the secret file 0600
    try:
        log = srv.log_tail(lines=100000)
        assert "readable by" not in log and "writable by" not in log, log
    finally:
        srv.stop()


def test_a_malformed_authorized_key_stops_the_start_with_its_file_name(tmp_path, pairs):
    authorized = tmp_path / "authorized"
    authorize(authorized, pairs, "alice")
    (authorized / "broken.key").write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    (tmp_path / "data").mkdir()
    done = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--port", "0",
                           "--data-dir", str(tmp_path / "data"),
                           "--curve-secret-key", str(pairs / "server.key_secret"),
                           "--curve-authorized-keys", str(authorized)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "broken.key" in done.stderr and "40-character" in done.stderr


def test_load_authorized_keys_reads_the_public_keys_and_refuses_bad_ones(tmp_path, pairs):
    from pyelevator_pool.security import load_authorized_keys

    authorize(tmp_path / "ok", pairs, "alice", "mallory")
    (tmp_path / "ok" / "notes.txt").write_text("not a key")
    assert load_authorized_keys(tmp_path / "ok") == {
        load_public_key(pairs / "alice.key"), load_public_key(pairs / "mallory.key")}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.key").write_bytes(b'metadata\ncurve\n    public-key = "' + b"\xe9" * 40 + b'"\n')
    with pytest.raises(ValueError, match="x.key"):
        load_authorized_keys(bad)
    with pytest.raises(OSError):
        load_authorized_keys(tmp_path / "missing")


def test_curve_keys_refuse_non_ascii_and_wrong_lengths(pairs):
    good = curve(pairs, "alice")
    public = good.public_key.decode()
    # "é" used to become "?", a valid Z85 character: a silently different key.
    with pytest.raises(ValueError, match="ASCII"):
        CurveKeys(good.server_public_key, "\xe9" + public[1:], public)
    with pytest.raises(ValueError, match="ASCII|Z85"):
        CurveKeys(good.server_public_key, b"\xe9" + good.public_key[1:], public)
    with pytest.raises(ValueError, match="40-character"):
        CurveKeys(good.server_public_key, public + "\n", public)
    with pytest.raises(ValueError, match="40-character"):
        CurveKeys(good.server_public_key[:39], public, public)
