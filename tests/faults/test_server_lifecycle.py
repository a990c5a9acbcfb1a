"""Faults and lifecycle: restarts, SIGKILL durability, SIGTERM, the CLI, path confinement,
idle unmount. Each test that kills or reconfigures runs a server of its own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from rawclient import RawClient

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, Status
from pyelevator_pool.server import Config, Server
from pyelevator_pool.server.scheduler import Scheduler
from pyelevator_pool.testing import ServerProcess

pytestmark = pytest.mark.timeout(90)


def ok(reply):
    assert reply.status == Status.SUCCESS, reply
    return reply.datas


def own_server(data_dir, *args):
    """A ServerProcess of the test's own (ServerProcess wants its data dir to exist)."""
    os.makedirs(data_dir, exist_ok=True)
    return ServerProcess(str(data_dir), args=list(args))


def run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "pyelevator_pool.server", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ------------------------------------------------------------- persistence

def test_data_and_uids_survive_a_graceful_restart(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        uid = c.uid()
        ok(c.call("DBCREATE", [b"kept", {}], uid))
        kept = c.uid("kept")
        ok(c.call("PUT", [b"k", b"v"], kept))
    assert fresh_server.restart(kill=False)
    with RawClient(fresh_server.endpoint) as c:
        assert c.uid("default") == uid
        assert c.uid("kept") == kept
        assert ok(c.call("GET", [b"k"], kept)) == [b"v"]


def test_acknowledged_put_and_batch_survive_sigkill(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        uid = c.uid()
        ok(c.call("PUT", [b"acked", b"yes"], uid))
        ok(c.call("BATCH", [[[1, b"b%03d" % i, b"v"] for i in range(300)] + [[0, b"acked2"]]], uid))
    fresh_server.kill()
    fresh_server.start()
    with RawClient(fresh_server.endpoint) as c:
        assert c.uid() == uid
        assert ok(c.call("GET", [b"acked"], uid)) == [b"yes"]
        assert len(ok(c.call("RANGE", [b"b000", b"b999", True, False], uid))) == 300


def test_registry_is_json_name_to_path_uid_options(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        ok(c.call("DBCREATE", [b"reg", {b"block_size": 4096}], c.uid()))
    with open(os.path.join(fresh_server.data_dir, "store.json")) as f:
        entry = json.load(f)["databases"]["reg"]
    assert entry["options"] == {"block_size": 4096}
    assert entry["path"] == "dbs/reg"  # relative: a copied data dir serves its own files
    assert len(entry["uid"]) == 32


def test_sync_flag_server_writes_and_reads(tmp_path):
    with ServerProcess(str(tmp_path), args=["--sync"]) as srv, RawClient(srv.endpoint) as c:
        uid = c.uid()
        ok(c.call("PUT", [b"s", b"1"], uid))
        ok(c.call("BATCH", [[[1, b"t", b"2"]]], uid))
        assert ok(c.call("MGET", [[b"s", b"t"]], uid)) == [b"1", b"2"]


# ------------------------------------------------------------------ signals

def test_sigterm_stops_gracefully_with_exit_code_0(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        ok(c.call("PUT", [b"k", b"v"], c.uid()))
    assert fresh_server.terminate() == 0
    assert "stopped" in fresh_server.log_tail()


def test_sigterm_answers_requests_in_flight(fresh_server):
    with RawClient(fresh_server.endpoint) as c:
        uid = c.uid()
        ok(c.call("BATCH", [[[1, b"%06d" % i, b"x" * 32] for i in range(20000)]], uid))
        for i in range(5):
            c.sock.send(protocol.encode_request("RANGE", [None, None], uid, id=i))
        # One reply proves the pipelined requests reached the server (a request still
        # on its way when the listener closes is not "in flight" and is not answered).
        first = c.recv(timeout=15)
        fresh_server.proc.send_signal(signal.SIGTERM)
        replies = [first] + [c.recv(timeout=15) for _ in range(4)]
        assert sorted(r.id for r in replies) == list(range(5))
        assert all(len(r.datas) == 20000 for r in replies)
    assert fresh_server.proc.wait(15) == 0


def test_more_heavy_requests_than_the_workers_take_are_all_answered_then_drained(tmp_path):
    """With --workers 1 the loop stops reading once 8 heavy requests wait for the
    worker (backpressure instead of an unbounded queue): 60 pipelined RANGEs are still
    all answered, and so are 60 more still queued when SIGTERM arrives."""
    srv = ServerProcess(str(tmp_path), args=["--workers", "1"]).start()
    try:
        with RawClient(srv.endpoint) as c:
            uid = c.uid()
            ok(c.call("BATCH", [[[1, b"%05d" % i, b"x" * 32] for i in range(3000)]], uid))
            for i in range(60):
                c.sock.send(protocol.encode_request("RANGE", [None, None], uid, id=i))
            replies = [c.recv(timeout=30) for _ in range(60)]
            assert sorted(r.id for r in replies) == list(range(60))
            assert all(len(r.datas) == 3000 for r in replies)
            assert ok(c.call("GET", [b"00042"], uid)) == [b"x" * 32]
            for i in range(60, 120):
                c.sock.send(protocol.encode_request("RANGE", [None, None], uid, id=i))
            first = c.recv(timeout=30)  # the requests have reached the server
            srv.proc.send_signal(signal.SIGTERM)
            replies = [first] + [c.recv(timeout=30) for _ in range(59)]
            assert sorted(r.id for r in replies) == list(range(60, 120))
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()


def test_sigint_also_stops_with_exit_code_0(fresh_server):
    fresh_server.proc.send_signal(signal.SIGINT)
    assert fresh_server.proc.wait(15) == 0


# ---------------------------------------------------------------------- CLI

def test_bad_flag_is_one_line_error_and_exit_2(tmp_path):
    res = run_cli("--port", "notaport", "--data-dir", str(tmp_path))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert "--port" in res.stderr and "Traceback" not in res.stderr


def test_unknown_flag_is_one_line_error_and_exit_2():
    res = run_cli("--frobnicate")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_unusable_data_dir_is_one_line_error_and_exit_2(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a dir")
    res = run_cli("--data-dir", str(a_file / "sub"), "--port", "0")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_corrupt_registry_is_one_line_error_and_exit_2(tmp_path):
    (tmp_path / "store.json").write_text("{not json")
    res = run_cli("--data-dir", str(tmp_path), "--port", "0")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "error" in res.stderr.splitlines()[-1]


def test_help_names_the_default_data_dir():
    res = run_cli("--help")
    assert res.returncode == 0 and "elevator-data" in res.stdout


def test_ipc_transport_serves_on_a_socket_file(tmp_path):
    sock = tmp_path / "e.sock"
    srv = ServerProcess(str(tmp_path), args=["--transport", "ipc", "--socket", str(sock)])
    with srv, RawClient(srv.endpoint) as c:
        assert srv.endpoint == f"ipc://{sock}"
        assert ok(c.call("PING")) == [b"PONG"]


def test_start_logs_endpoint_and_data_dir(fresh_server):
    log = fresh_server.log_tail()
    assert fresh_server.endpoint in log and os.path.realpath(fresh_server.data_dir) in log


# --------------------------------------------------------- path confinement

def test_absolute_path_refused_without_allow_path_and_nothing_created(fresh_server, tmp_path):
    target = tmp_path / "outside" / "db"
    with RawClient(fresh_server.endpoint) as c:
        reply = c.call("DBCREATE", [str(target).encode(), {}], c.uid())
    assert reply.err_code == ErrorCode.DATABASE and "--allow-path" in reply.err_msg
    assert not (tmp_path / "outside").exists()


def test_absolute_path_accepted_under_allow_path_and_dropped_there(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    with own_server(tmp_path / "data", "--allow-path", str(root)) as srv, \
            RawClient(srv.endpoint) as c:
        uid = c.uid()
        name = str(root / "mydb").encode()
        ok(c.call("DBCREATE", [name, {}], uid))
        puid = c.uid(name.decode())
        ok(c.call("PUT", [b"k", b"v"], puid))
        assert (root / "mydb" / "CURRENT").exists()
        # A sibling of the allowed root and the root itself stay refused.
        assert c.call("DBCREATE", [str(tmp_path / "allowed2").encode(), {}], uid).err_code \
            == ErrorCode.DATABASE
        assert c.call("DBCREATE", [str(root).encode(), {}], uid).err_code == ErrorCode.DATABASE
        escape = str(root / ".." / "escape").encode()
        assert c.call("DBCREATE", [escape, {}], uid).err_code == ErrorCode.DATABASE
        assert not (tmp_path / "escape").exists()
        ok(c.call("DBDROP", [name], uid))
        assert not (root / "mydb").exists() and root.exists()


def test_preexisting_leveldb_under_allowed_root_is_registered_as_is(tmp_path):
    import plyvel
    root = tmp_path / "allowed"
    root.mkdir()
    db = plyvel.DB(str(root / "existing"), create_if_missing=True)
    db.put(b"was", b"here")
    db.close()
    with own_server(tmp_path / "data", "--allow-path", str(root)) as srv, \
            RawClient(srv.endpoint) as c:
        name = str(root / "existing").encode()
        ok(c.call("DBCREATE", [name, {}], c.uid()))
        assert ok(c.call("GET", [b"was"], c.uid(name.decode()))) == [b"here"]


def test_symlink_out_of_allowed_root_is_refused(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "link")
    with own_server(tmp_path / "data", "--allow-path", str(root)) as srv, \
            RawClient(srv.endpoint) as c:
        reply = c.call("DBCREATE", [str(root / "link" / "db").encode(), {}], c.uid())
        assert reply.err_code == ErrorCode.DATABASE
    assert os.listdir(tmp_path / "secret") == []


def test_dbdrop_never_deletes_outside_data_dir_and_allowed_roots(tmp_path):
    """A registry entry pointing outside (e.g. its root no longer allowed) is not deleted."""
    root = tmp_path / "allowed"
    root.mkdir()
    srv = own_server(tmp_path / "data", "--allow-path", str(root))
    with srv:
        with RawClient(srv.endpoint) as c:
            ok(c.call("DBCREATE", [str(root / "db").encode(), {}], c.uid()))
        srv.terminate()
        srv.args = []  # restart without --allow-path
        srv.start()
        with RawClient(srv.endpoint) as c:
            reply = c.call("DBDROP", [str(root / "db").encode()], c.uid())
            assert reply.err_code == ErrorCode.DATABASE
        assert (root / "db" / "CURRENT").exists()


# ------------------------------------------------------------ idle unmount

def test_idle_database_is_unmounted_and_remounted_on_use(tmp_path):
    srv = ServerProcess(str(tmp_path), args=["--unmount-after", "0.3", "--log-level", "DEBUG"])
    with srv, RawClient(srv.endpoint) as c:
        uid = c.uid()
        ok(c.call("DBCREATE", [b"idle", {}], uid))
        iuid = c.uid("idle")
        ok(c.call("PUT", [b"k", b"v"], iuid))
        deadline = time.monotonic() + 10
        while "idle database idle unmounted" not in srv.log_tail(200):
            assert time.monotonic() < deadline, srv.log_tail()
            time.sleep(0.05)
        # default is never unmounted, the idle one comes back on use
        assert "unmounted default" not in srv.log_tail(200)
        assert ok(c.call("GET", [b"k"], iuid)) == [b"v"]
        assert ok(c.call("PUT", [b"d", b"v"], uid)) is None
        # and the unmounter keeps ticking (the original's died on its first tick)
        n = srv.log_tail(400).count("idle database idle unmounted")
        while srv.log_tail(400).count("idle database idle unmounted") <= n:
            assert time.monotonic() < deadline + 10, srv.log_tail()
            time.sleep(0.05)


def test_unmount_after_zero_never_unmounts(tmp_path):
    srv = ServerProcess(str(tmp_path), args=["--unmount-after", "0", "--log-level", "DEBUG"])
    with srv, RawClient(srv.endpoint) as c:
        ok(c.call("DBCREATE", [b"stay", {}], c.uid()))
        ok(c.call("PUT", [b"k", b"v"], c.uid("stay")))
        time.sleep(0.5)  # nothing to poll for: we check that something does NOT happen
        assert "unmounted" not in srv.log_tail(200)


# ------------------------------------------------------------ concurrency

@pytest.mark.parametrize("workers", ["0", "3"])
def test_many_concurrent_clients_are_all_answered(tmp_path, workers):
    import threading
    srv = ServerProcess(str(tmp_path), args=["--workers", workers])
    errors = []
    with srv:
        with RawClient(srv.endpoint) as c:
            uid = c.uid()
            ok(c.call("BATCH", [[[1, b"c%03d" % i, b"v%d" % i] for i in range(500)]], uid))

        def run(n):
            try:
                with RawClient(srv.endpoint) as c:
                    for i in range(100):
                        k = (n * 7 + i) % 500
                        if i % 10 == 0:
                            assert len(ok(c.call("RANGE", [b"c000", b"c499"], uid))) == 500
                        assert ok(c.call("GET", [b"c%03d" % k], uid)) == [b"v%d" % k]
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors


def test_a_failing_worker_answers_with_the_request_id(tmp_path, monkeypatch):
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

    monkeypatch.setattr(Scheduler, "execute", lambda self, task: broken_execute(task))
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
