"""Defects found by a review of the server, each pinned by a test on the real server."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pyelevator_pool import CurveKeys, Elevator, protocol
from pyelevator_pool.security import generate_certificates
from pyelevator_pool.server import Config, Server
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient, wait_until

pytestmark = pytest.mark.timeout(120)


def _stream(raw: RawClient, timeout: float = 5.0) -> list:
    """The replies of one streamed request, up to the one without ``more``."""
    replies = []
    while True:
        frames = raw.recv_frames(timeout)
        head = protocol.decode_header(frames[0])
        replies.append(protocol.decode_reply(frames))
        if not head.get(protocol.MORE):
            return replies


# ------------------------------------------------ SIGHUP with a bad authorized key

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


