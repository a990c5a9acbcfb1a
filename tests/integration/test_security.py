"""CURVE security on the real server: keygen, authorized and refused clients, encryption
checked on the wire (through a loopback TCP relay that records every byte), fast and clear
failures, key reload on SIGHUP, and the CLI's checks."""
from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import zmq

from pyelevator_pool import (AuthenticationError, ConnectionError, CurveKeys, Elevator,
                             ElevatorPool, protocol)
from pyelevator_pool.security import generate_certificates, load_key_pair, load_public_key
from pyelevator_pool.testing import ServerProcess
from rawclient import wait_until

pytestmark = pytest.mark.timeout(120)

#: a call timeout far above what a refused handshake takes: failing "fast" means well
#: under it (no hang until the deadline), not a measured speed.
LONG = 20.0


def keygen(directory, name) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "keygen",
                           str(directory), "--name", name],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs made by the keygen command: the server's, an authorized client's, an intruder's."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "client", "intruder"):
        assert keygen(root / "pairs", name).returncode == 0
    authorized = root / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((root / "pairs" / "client.key").read_bytes())
    pairs = root / "pairs"
    return {
        "dir": root, "authorized": authorized, "server_secret": pairs / "server.key_secret",
        "client": CurveKeys.from_files(pairs / "server.key", pairs / "client.key_secret"),
        "intruder": CurveKeys.from_files(pairs / "server.key", pairs / "intruder.key_secret"),
        "wrong_server": CurveKeys.from_files(pairs / "intruder.key", pairs / "client.key_secret"),
    }


def curve_args(keys, authorized=None):
    return ["--curve-secret-key", str(keys["server_secret"]),
            "--curve-authorized-keys", str(authorized or keys["authorized"])]


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory, keys):
    srv = ServerProcess(str(tmp_path_factory.mktemp("curve")), args=curve_args(keys),
                        security=keys["client"])
    srv.start()
    yield srv
    srv.stop()


class Relay:
    """A loopback TCP relay that records every byte going either way."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pairs = {}
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener, *pairs], [], [], 0.05)
            for s in ready:
                if s is self.listener:
                    a, _ = self.listener.accept()
                    b = socket.create_connection(self.target, timeout=5)
                    pairs[a], pairs[b] = b, a
                    continue
                data = s.recv(65536) if s in pairs else b""
                if not data:
                    other = pairs.pop(s, None)
                    if other is not None:
                        pairs.pop(other, None)
                        other.close()
                    s.close()
                    continue
                self.seen += data
                pairs[s].sendall(data)
        for s in pairs:
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def secret_traffic(port: int, curve) -> bytes:
    """Everything on the wire while a client writes and reads a recognisable value."""
    relay = Relay(port)
    try:
        with Elevator(endpoint=f"tcp://127.0.0.1:{relay.port}", curve=curve, timeout=LONG) as e:
            e.Put(b"wire:key", b"the-secret-value-0123456789")
            assert e.Get(b"wire:key") == b"the-secret-value-0123456789"
    finally:
        relay.close()
    assert len(relay.seen) > 0
    return bytes(relay.seen)


# ------------------------------------------------------------------ keygen

def test_keygen_writes_a_usable_pair_with_a_private_secret_file(tmp_path):
    done = keygen(tmp_path / "new", "alice")
    assert done.returncode == 0, done.stderr
    public_file, secret_file = tmp_path / "new" / "alice.key", tmp_path / "new" / "alice.key_secret"
    assert str(public_file) in done.stdout and str(secret_file) in done.stdout
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    public, secret = load_key_pair(secret_file)
    assert load_public_key(public_file) == public
    assert b"secret-key" not in public_file.read_bytes()
    assert zmq.curve_public(secret) == public  # a real pair: the public key derives from the secret


def test_keygen_never_overwrites_a_key(tmp_path):
    assert keygen(tmp_path, "bob").returncode == 0
    before = (tmp_path / "bob.key_secret").read_bytes()
    again = keygen(tmp_path, "bob")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (tmp_path / "bob.key_secret").read_bytes() == before


def test_generate_certificates_refuses_a_path_as_name(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        generate_certificates(tmp_path, "../escape")


# ---------------------------------------------------------------- access

def test_authorized_client_works_over_curve(curve_server, keys):
    with Elevator(endpoint=curve_server.endpoint, curve=keys["client"], timeout=LONG) as e:
        e.Put(b"sec:a", b"1")
        assert e.Get(b"sec:a") == b"1"
        with e.pool.connection() as conn:
            assert conn.socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
            assert conn.socket.getsockopt(zmq.CURVE_SERVER) == 0  # the client side of CURVE


def test_traffic_is_encrypted_on_the_wire(curve_server, server, keys):
    # Control: without CURVE the value is plainly visible to anyone on the path.
    plain = secret_traffic(server.port, None)
    assert b"the-secret-value-0123456789" in plain
    encrypted = secret_traffic(curve_server.port, keys["client"])
    assert b"the-secret-value-0123456789" not in encrypted
    assert b"wire:key" not in encrypted and b"CURVE" in encrypted  # the greeting names it


def test_unauthorized_key_gets_authentication_error_at_once(curve_server, keys):
    pool = ElevatorPool(curve_server.endpoint, curve=keys["intruder"], timeout=LONG)
    try:
        start = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            pool.request(protocol.PING, [])
        elapsed = time.monotonic() - start
        assert elapsed < LONG / 4, f"took {elapsed:.2f}s: waited for the deadline"
        assert "refused this client's CURVE key" in str(info.value)
        assert "--curve-authorized-keys" in str(info.value)
        assert isinstance(info.value, ConnectionError) and info.value.request_sent is False
        assert pool.stats()["retries"] == 0
    finally:
        pool.close()


def test_unauthorized_key_fails_in_the_elevator_constructor(curve_server, keys):
    start = time.monotonic()
    with pytest.raises(AuthenticationError):
        Elevator(endpoint=curve_server.endpoint, curve=keys["intruder"], timeout=LONG)
    assert time.monotonic() - start < LONG / 4


def test_client_without_keys_gets_a_clear_error_not_a_hang(curve_server):
    start = time.monotonic()
    # A mechanism mismatch, or (when the server hangs up first) a failure without detail:
    # either way the message says what to do.
    with pytest.raises(AuthenticationError, match=r"curve=CurveKeys\(\.\.\.\)"):
        Elevator(endpoint=curve_server.endpoint, timeout=LONG)
    assert time.monotonic() - start < LONG / 4


def test_wrong_server_public_key_gets_a_clear_error(curve_server, keys):
    start = time.monotonic()
    with pytest.raises(AuthenticationError, match="server's public key"):
        Elevator(endpoint=curve_server.endpoint, curve=keys["wrong_server"], timeout=LONG)
    assert time.monotonic() - start < LONG / 4


def test_curve_client_against_a_plain_server_gets_a_clear_error(server, keys):
    with pytest.raises(AuthenticationError, match="CURVE"):
        Elevator(endpoint=server.endpoint, curve=keys["client"], timeout=LONG)


def test_server_keeps_serving_authorized_clients_after_refusals(curve_server, keys):
    for curve in (keys["intruder"], None, keys["intruder"]):
        with pytest.raises(AuthenticationError):
            Elevator(endpoint=curve_server.endpoint, curve=curve, timeout=LONG)
    with Elevator(endpoint=curve_server.endpoint, curve=keys["client"], timeout=LONG) as e:
        assert e.Ping()
    assert "Traceback" not in curve_server.log_tail(lines=100000)


def test_authorized_keys_are_reloaded_on_sighup(tmp_path, keys):
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((keys["dir"] / "pairs" / "client.key").read_bytes())
    (tmp_path / "data").mkdir()
    with ServerProcess(str(tmp_path / "data"), args=curve_args(keys, authorized),
                       security=keys["client"]) as srv:
        with pytest.raises(AuthenticationError):
            Elevator(endpoint=srv.endpoint, curve=keys["intruder"], timeout=LONG)
        (authorized / "intruder.key").write_bytes(
            (keys["dir"] / "pairs" / "intruder.key").read_bytes())
        os.kill(srv.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:  # the loop reloads within one tick: poll, with a deadline
            try:
                with Elevator(endpoint=srv.endpoint, curve=keys["intruder"], timeout=LONG) as e:
                    assert e.Ping()
                break
            except AuthenticationError:
                assert time.monotonic() < deadline, "keys not reloaded after SIGHUP"
                time.sleep(0.05)
        assert "2 authorized client keys" in srv.log_tail(lines=100)


# ------------------------------------------------------------ configuration

@pytest.mark.parametrize("flags,words", [
    (["--curve-secret-key", "{secret}"], "needs --curve-authorized-keys"),
    (["--curve-authorized-keys", "{authorized}"], "needs --curve-secret-key"),
    (["--curve-secret-key", "{public}", "--curve-authorized-keys", "{authorized}"],
     "holds no secret key"),
    (["--curve-secret-key", "{secret}", "--curve-authorized-keys", "{missing}"],
     "is not a directory"),
])
def test_server_refuses_incomplete_curve_flags(tmp_path, keys, flags, words):
    values = {"secret": keys["server_secret"], "public": keys["dir"] / "pairs" / "server.key",
              "authorized": keys["authorized"], "missing": tmp_path / "nope"}
    done = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--port", "0",
                           "--data-dir", str(tmp_path / "data"),
                           *[f.format(**values) for f in flags]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and words in done.stderr


def test_curve_keys_validate_and_hide_the_secret(keys):
    good = keys["client"]
    with pytest.raises(ValueError, match="40-character"):
        CurveKeys(good.server_public_key, good.public_key, b"short")
    with pytest.raises(TypeError):
        CurveKeys(good.server_public_key, 42, good.public_key)  # type: ignore[arg-type]
    secret = load_key_pair(keys["dir"] / "pairs" / "client.key_secret")[1]
    assert secret.decode() not in repr(good) and "<hidden>" in repr(good)
    assert CurveKeys(good.server_public_key.decode(), good.public_key.decode(),
                     secret.decode()) == good
    with pytest.raises(ValueError, match="holds no secret key"):
        CurveKeys.from_files(keys["dir"] / "pairs" / "server.key",
                             keys["dir"] / "pairs" / "client.key")


def test_pool_curve_argument_validation(keys):
    with pytest.raises(TypeError, match="CurveKeys"):
        ElevatorPool(curve="not keys")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        ElevatorPool(curve=keys["client"], security=lambda sock: None)


def test_cli_reaches_a_curve_server_with_key_files_and_refuses_half_a_pair(curve_server, keys):
    pairs = keys["dir"] / "pairs"
    base = [sys.executable, "-m", "pyelevator_pool.cli", "--endpoint", curve_server.endpoint,
            "--timeout", str(LONG)]
    with_keys = base + ["--curve-server-key", str(pairs / "server.key"),
                        "--curve-client-key", str(pairs / "client.key_secret")]
    put = subprocess.run(with_keys + ["put", "cli:sec", "v"], capture_output=True, timeout=60)
    assert put.returncode == 0, put.stderr
    get = subprocess.run(with_keys + ["get", "cli:sec"], capture_output=True, timeout=60)
    assert get.returncode == 0 and get.stdout.strip() == b"v", get.stderr
    half = subprocess.run(base + ["--curve-server-key", str(pairs / "server.key"), "ping"],
                          capture_output=True, timeout=60)
    assert half.returncode == 2 and b"go together" in half.stderr
    intruder = subprocess.run(base + ["--curve-server-key", str(pairs / "server.key"),
                                      "--curve-client-key", str(pairs / "intruder.key_secret"),
                                      "ping"], capture_output=True, timeout=60)
    assert intruder.returncode == 1 and b"CURVE key" in intruder.stderr
    assert intruder.stderr.count(b"\n") == 1  # one line


def test_sighup_with_a_malformed_key_file_keeps_the_server_and_the_old_keys(tmp_path):
    """A *.key file without a public key made the reload raise ValueError, which is not
    an OSError: it escaped the loop and the server died."""
    keys = tmp_path / "keys"
    generate_certificates(str(keys), "server")
    generate_certificates(str(keys), "client")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((keys / "client.key").read_bytes())
    curve = CurveKeys.from_files(keys / "server.key", keys / "client.key_secret")
    (tmp_path / "data").mkdir()
    args = ["--curve-secret-key", str(keys / "server.key_secret"),
            "--curve-authorized-keys", str(authorized)]
    with ServerProcess(str(tmp_path / "data"), args=args, security=curve) as srv:
        (authorized / "broken.key").write_text("# not a certificate\n")
        os.kill(srv.pid, signal.SIGHUP)
        assert wait_until(lambda: not srv.is_running()
                          or "keeping the old ones" in srv.log_tail(lines=100), timeout=10)
        assert srv.is_running(), srv.log_tail()
        with Elevator(endpoint=srv.endpoint, curve=curve, timeout=10) as e:
            assert e.Ping()
        assert "Traceback" not in srv.log_tail(lines=1000)
