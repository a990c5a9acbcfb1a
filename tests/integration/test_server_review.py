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
        assert head[protocol.SEQ] == len(replies)
        replies.append(protocol.decode_reply(frames))
        if not head.get(protocol.MORE):
            return replies
        raw.sock.send(protocol.encode_credit(head["id"], 1))


# ------------------------------------------------- a streamed reply to a slow reader

def test_a_stream_of_more_pages_than_the_socket_holds_reaches_a_slow_reader(server):
    """A stream of many small pages used to overflow the ROUTER's send queue (1000
    messages), which drops what does not fit: the end of the stream was lost and the
    client waited for it forever. Now the server sends a page only on credit."""
    n, value = 4000, b"v" * 8192  # more pages than the send queue and TCP buffers hold
    with RawClient(server.endpoint) as raw:
        raw.sock.rcvhwm = 100
        uid = raw.uid()
        keys = [b"slow:%06d" % i for i in range(n)]
        for i in range(0, n, 1000):
            ops = [[1, k, value] for k in keys[i:i + 1000]]
            assert raw.call(protocol.BATCH, [ops], uid).status == 1
        raw.sock.send(protocol.encode_request(
            protocol.RANGE, [None, None, True, True, b"slow:"], uid, id=11, stream=1))
        time.sleep(1.0)  # a reader that is late: the old server produced all pages meanwhile
        replies = _stream(raw)
    assert all(r.status == protocol.Status.SUCCESS and r.id == 11 for r in replies)
    assert [k for r in replies for k, _ in r.datas] == keys


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


# ---------------------------------------------- path databases overlapping others

@pytest.fixture
def rooted(tmp_path):
    """A server whose data dir lies inside the root it allows for path databases."""
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    with ServerProcess(str(root / "data"), args=["--allow-path", str(root)]) as srv, \
            RawClient(srv.endpoint) as raw:
        yield srv, raw, root


def test_a_path_database_may_not_be_the_data_dir_or_inside_it(rooted):
    """DBCREATE of the data dir (or a directory in it) under an allowed root used to
    succeed, and its DBDROP then deleted the data dir: every database and the registry."""
    srv, raw, root = rooted
    uid = raw.uid()
    assert raw.call(protocol.PUT, [b"k", b"v"], uid).status == 1
    for path in (root / "data", root / "data" / "dbs", root / "data" / "dbs" / "other"):
        reply = raw.call(protocol.DBCREATE, [str(path).encode()], uid)
        assert reply.status == protocol.Status.FAILURE, path
        assert reply.err_code == protocol.ErrorCode.DATABASE
        raw.call(protocol.DBDROP, [str(path).encode()], uid)
    assert os.path.exists(os.path.join(srv.data_dir, "store.json"))
    assert raw.call(protocol.GET, [b"k"], uid).datas == [b"v"]


def test_a_path_database_may_not_overlap_another_database(rooted):
    """Two names for the same files (or one database inside another) used to be
    accepted: dropping one then deleted the other's data."""
    srv, raw, root = rooted
    uid = raw.uid()
    first = str(root / "db")
    assert raw.call(protocol.DBCREATE, [first.encode()], uid).status == 1
    assert raw.call(protocol.DBUMOUNT, [first.encode()], uid).status == 1
    for other in (f"{root}/./db", str(root / "db" / "inner"), str(root)):
        reply = raw.call(protocol.DBCREATE, [other.encode()], uid)
        assert reply.status == protocol.Status.FAILURE, other
        assert reply.err_code == protocol.ErrorCode.DATABASE
    assert raw.call(protocol.DBLIST, [], uid).datas == [b"default", first.encode()]


# ---------------------------------------------- a worker that fails unexpectedly

def test_a_failing_worker_answers_with_the_request_id(tmp_path):
    """The worker's last-resort error reply had no id: a client matching replies by id
    (and every streamed reply) could not recognise it and waited until its timeout."""
    server = Server(Config(data_dir=str(tmp_path), port=0, workers=1, unmount_after=0))
    server.start()
    loop = threading.Thread(target=server.serve, daemon=True)
    loop.start()
    raw = RawClient(server.endpoint)
    uid = raw.uid()  # DBCONNECT runs on the worker: before the fault is injected

    def broken_execute(task):
        raise MemoryError("injected")

    server._scheduler.execute = broken_execute  # type: ignore[method-assign,union-attr]
    try:
        with raw:
            reply = raw.call(protocol.SLICE, [None, 1000], uid, id=42)  # heavy: a worker's
            assert reply.status == protocol.Status.FAILURE
            assert reply.err_code == protocol.ErrorCode.RUNTIME
            assert reply.id == 42
            assert raw.call(protocol.PING, [], id=43).id == 43  # and the server goes on
    finally:
        server.stop()
        loop.join(30)
    assert not loop.is_alive()
