"""The database registry never creates a database except on DBCREATE, never deletes a file
that is not LevelDB's own, survives a crash at any instant of DBCREATE/DBDROP, keeps a data
dir self-contained (relative paths), validates store.json at start, and a slow DBREPAIR
holds only its own database.

Every test runs a real elevator-server process on a loopback port in a temporary dir.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from rawclient import RawClient, wait_until

from pyelevator_pool import Elevator, protocol
from pyelevator_pool.protocol import ErrorCode, Status
from pyelevator_pool.testing import ServerProcess


def tables(path: str):
    """(count, total size) of the LevelDB table files in ``path``."""
    files = glob.glob(os.path.join(path, "*.ldb")) + glob.glob(os.path.join(path, "*.sst"))
    return len(files), sum(os.path.getsize(f) for f in files)


def fill(endpoint: str, name: str, n: int, value: bytes = b"v" * 300,
         random_size: int = 0) -> None:
    """``n`` keys k0000000... through WriteBatches; values ``random_size`` random
    (incompressible) bytes when given, else ``value``."""
    client = Elevator(name, endpoint=endpoint)
    try:
        step = 20_000
        for start in range(0, n, step):
            with client.WriteBatch() as batch:
                for i in range(start, min(n, start + step)):
                    batch.Put(b"k%07d" % i, os.urandom(random_size) if random_size else value)
    finally:
        client.close()


def registry(data_dir: str) -> dict:
    with open(os.path.join(data_dir, "store.json"), encoding="utf-8") as f:
        return json.load(f)["databases"]


def write_registry(data_dir: str, entries: dict) -> None:
    with open(os.path.join(data_dir, "store.json"), "w", encoding="utf-8") as f:
        json.dump({"version": 1, "databases": entries}, f)


def ok(reply):
    assert reply.status == Status.SUCCESS, reply
    return reply.datas


def failed(reply, code=ErrorCode.DATABASE):
    assert reply.status == Status.FAILURE, reply
    assert reply.err_code == code, reply
    return reply.err_msg.decode() if isinstance(reply.err_msg, bytes) else reply.err_msg


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return str(d)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return str(r)


# ------------------------------------------------ guarantee 4: never an empty replacement

def _restart_without_current(srv: ServerProcess, data: str, name: str, n: int):
    """Fill database ``name`` with ``n`` keys, stop the server, delete its CURRENT file and
    start again; returns its path and its table files' (count, bytes) before."""
    fill(srv.endpoint, name, n)
    srv.terminate()
    path = os.path.join(data, "dbs", name)
    before = tables(path)
    assert before[0] > 0
    os.unlink(os.path.join(path, "CURRENT"))
    srv.start()
    return path, before


def test_missing_current_is_an_error_not_an_empty_database_and_repair_by_name_recovers(data):
    srv = ServerProcess(data).start()
    try:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, ["big"]))
        path, before = _restart_without_current(srv, data, "big", 60_000)
        with RawClient(srv.endpoint) as c:
            msg = failed(c.call(protocol.DBCONNECT, ["big"]))
            assert "big" in msg
            assert tables(path) == before  # LevelDB deleted nothing
            assert "big" in [n.decode() if isinstance(n, bytes) else n
                             for n in ok(c.call(protocol.DBLIST))]
            ok(c.call(protocol.DBREPAIR, ["big"], None, timeout=120))
            uid = c.uid("big")
            assert ok(c.call(protocol.GET, [b"k0000000"], uid)) == [b"v" * 300]
            assert ok(c.call(protocol.GET, [b"k0059999"], uid)) == [b"v" * 300]
        assert "big" in srv.log_tail(200)
    finally:
        srv.stop()


def test_repair_by_name_of_an_unknown_database_or_without_a_target(data):
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        assert "nope" in failed(c.call(protocol.DBREPAIR, ["nope"]))
        failed(c.call(protocol.DBREPAIR, []), ErrorCode.REQUEST)
        ok(c.call(protocol.DBREPAIR, ["default"]))
        ok(c.call(protocol.DBREPAIR, [], c.uid("default")))


def test_another_data_dirs_absolute_path_is_kept_but_validated(data, tmp_path):
    other = str(tmp_path / "other")
    os.mkdir(other)
    with ServerProcess(other) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.DBCREATE, ["x"]))
        ok(c.call(protocol.PUT, [b"k", b"v"], c.uid("x")))
    with ServerProcess(data):
        pass
    entries = registry(data)
    entries["x"] = dict(registry(other)["x"], path=os.path.join(other, "dbs", "x"))
    write_registry(data, entries)
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        assert "outside" in failed(c.call(protocol.DBCONNECT, ["x"]))
    assert registry(data)["x"]["path"] == os.path.join(other, "dbs", "x")
    with ServerProcess(data, args=["--allow-path", str(tmp_path)]) as srv, \
            RawClient(srv.endpoint) as c:
        assert ok(c.call(protocol.GET, [b"k"], c.uid("x"))) == [b"v"]


def test_removed_directory_is_not_recreated(data):
    srv = ServerProcess(data).start()
    try:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, ["gone"]))
        srv.terminate()
        path = os.path.join(data, "dbs", "gone")
        shutil.rmtree(path)
        srv.start()
        with RawClient(srv.endpoint) as c:
            assert "gone" in failed(c.call(protocol.DBCONNECT, ["gone"]))
        assert not os.path.exists(path)
    finally:
        srv.stop()


def test_default_with_missing_current_is_not_replaced(data):
    srv = ServerProcess(data).start()
    try:
        path, before = _restart_without_current(srv, data, "default", 30_000)
        with RawClient(srv.endpoint) as c:
            assert "default" in failed(c.call(protocol.DBCONNECT, ["default"]))
            assert tables(path) == before
            ok(c.call(protocol.DBREPAIR, ["default"], None, timeout=120))
            assert ok(c.call(protocol.GET, [b"k0000001"], c.uid("default"))) == [b"v" * 300]
    finally:
        srv.stop()


def test_create_refuses_a_directory_with_other_files(data, root):
    target = os.path.join(root, "mine")
    os.mkdir(target)
    with open(os.path.join(target, "thesis.txt"), "w") as f:
        f.write("precious")
    with ServerProcess(data, args=["--allow-path", root]) as srv, RawClient(srv.endpoint) as c:
        msg = failed(c.call(protocol.DBCREATE, [target]))
        assert "not empty" in msg or "not a LevelDB" in msg, msg
        assert os.listdir(target) == ["thesis.txt"]
        empty = os.path.join(root, "empty")
        os.mkdir(empty)
        ok(c.call(protocol.DBCREATE, [empty]))
        ok(c.call(protocol.DBCREATE, [os.path.join(root, "fresh")]))


def test_drop_deletes_only_leveldb_files(data, root):
    target = os.path.join(root, "db")
    with ServerProcess(data, args=["--allow-path", root]) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.DBCREATE, [target]))
        ok(c.call(protocol.PUT, [b"a", b"b"], c.uid(target)))
        with open(os.path.join(target, "notes.txt"), "w") as f:
            f.write("mine")
        ok(c.call(protocol.DBDROP, [target]))
        assert os.listdir(target) == ["notes.txt"]
        assert "notes.txt" in srv.log_tail(50)
        plain = os.path.join(root, "plain")
        ok(c.call(protocol.DBCREATE, [plain]))
        ok(c.call(protocol.DBDROP, [plain]))
        assert not os.path.exists(plain)


def test_control_characters_refused_in_absolute_names(data, root):
    with ServerProcess(data, args=["--allow-path", root]) as srv, RawClient(srv.endpoint) as c:
        for bad in ["a\x01b", "a\x7fb", "a\x85b"]:
            msg = failed(c.call(protocol.DBCREATE, [os.path.join(root, bad)]))
            assert "control" in msg, msg
            assert failed(c.call(protocol.DBCREATE, [bad]))
        assert os.listdir(root) == []


def test_symlink_swapped_in_later_is_refused(data, root, tmp_path):
    outside = str(tmp_path / "outside")
    target = os.path.join(root, "db")
    with ServerProcess(data, args=["--allow-path", root]) as srv:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, [target]))
        srv.terminate()
        shutil.move(target, outside)
        os.symlink(outside, target)
        srv.start()
        with RawClient(srv.endpoint) as c:
            msg = failed(c.call(protocol.DBCONNECT, [target]))
            assert "db" in msg


# ------------------------------------------------ crash atomicity: the journal

def test_startup_completes_a_drop_and_rolls_back_creates(data, root):
    srv = ServerProcess(data, args=["--allow-path", root]).start()
    try:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, ["dropping"]))
            ok(c.call(protocol.DBCREATE, ["creating"]))
            existing = os.path.join(root, "existing")
            ok(c.call(protocol.DBCREATE, [existing]))
            ok(c.call(protocol.PUT, [b"x", b"y"], c.uid(existing)))
        srv.kill()
        entries = registry(data)
        entries["dropping"]["state"] = "dropping"
        entries["creating"]["state"] = "creating"
        entries[existing]["state"] = "creating"
        entries[existing]["existed"] = "leveldb"
        # a drop half done: CURRENT already gone
        os.unlink(os.path.join(data, "dbs", "dropping", "CURRENT"))
        write_registry(data, entries)
        existing_files = sorted(os.listdir(existing))
        srv.start()
        with RawClient(srv.endpoint) as c:
            names = [n.decode() if isinstance(n, bytes) else n for n in ok(c.call(protocol.DBLIST))]
            assert "dropping" not in names and "creating" not in names and existing not in names
            assert not os.path.exists(os.path.join(data, "dbs", "dropping"))
            assert not os.path.exists(os.path.join(data, "dbs", "creating"))
            assert sorted(os.listdir(existing)) == existing_files  # a LevelDB it did not create
            ok(c.call(protocol.DBCREATE, ["dropping"]))  # the name is free again
            ok(c.call(protocol.DBCREATE, [existing]))
            assert ok(c.call(protocol.GET, [b"x"], c.uid(existing))) == [b"y"]
        assert set(registry(data)) == {"default", "dropping", existing}
        assert not [f for f in os.listdir(data) if f.endswith(".tmp")]
    finally:
        srv.stop()


def test_kill_during_drop_of_a_large_database(data):
    srv = ServerProcess(data).start()
    try:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, ["huge"]))
        fill(srv.endpoint, "huge", 60_000)
        with RawClient(srv.endpoint) as c:
            c.sock.send(protocol.encode_request(protocol.DBDROP, ["huge"], None))
            path = os.path.join(data, "dbs", "huge")
            wait_until(lambda: not os.path.exists(os.path.join(path, "CURRENT"))
                       or registry(data).get("huge", {}).get("state") == "dropping", 10, 0.001)
            srv.kill()
        srv.start()
        with RawClient(srv.endpoint) as c:
            names = [n.decode() if isinstance(n, bytes) else n for n in ok(c.call(protocol.DBLIST))]
            if "huge" in names:  # the kill came before the drop began: the old state, whole
                assert ok(c.call(protocol.GET, [b"k0000000"], c.uid("huge")))
            else:
                assert not os.path.exists(path)
                ok(c.call(protocol.DBCREATE, ["huge"]))
    finally:
        srv.stop()


# ------------------------------------------------ guarantee 5: a self-contained data dir

def test_registry_is_relative_and_a_copied_data_dir_serves_its_own_files(data, tmp_path):
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.DBCREATE, ["c"]))
        ok(c.call(protocol.PUT, [b"k", b"original"], c.uid("c")))
    entries = registry(data)
    assert entries["c"]["path"] == "dbs/c" and entries["default"]["path"] == "dbs/default"
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", data, copy], check=True)
    with ServerProcess(copy) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.PUT, [b"k", b"copy"], c.uid("c")))
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        assert ok(c.call(protocol.GET, [b"k"], c.uid("c"))) == [b"original"]


def test_old_absolute_registry_inside_the_data_dir_loads_as_relative(data):
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.DBCREATE, ["old"]))
        ok(c.call(protocol.PUT, [b"k", b"v"], c.uid("old")))
    entries = registry(data)
    for name in entries:
        entries[name]["path"] = os.path.join(os.path.realpath(data), "dbs", name)
    write_registry(data, entries)
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        assert ok(c.call(protocol.GET, [b"k"], c.uid("old"))) == [b"v"]
        ok(c.call(protocol.DBCREATE, ["new"]))
    assert registry(data)["old"]["path"] == "dbs/old"


@pytest.mark.parametrize("mutate, words", [
    (lambda e: e["x"].update(uid=e["default"]["uid"]), "uid"),
    (lambda e: e["x"].update(path="dbs/default"), "path"),
    (lambda e: e["x"].update(uid=5), "uid"),
    (lambda e: e["x"].update(options="fast"), "options"),
    (lambda e: e.update({"a/b": dict(e.pop("x"))}), "name"),
])
def test_bad_registry_exits_2_with_one_line(data, mutate, words):
    with ServerProcess(data) as srv, RawClient(srv.endpoint) as c:
        ok(c.call(protocol.DBCREATE, ["x"]))
    entries = registry(data)
    mutate(entries)
    write_registry(data, entries)
    proc = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--port", "0",
                           "--data-dir", data], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    lines = [line for line in proc.stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1, proc.stderr
    assert "store.json" in lines[0] and words in lines[0], lines[0]


# ------------------------------------------------ guarantee 7: a slow command holds its own db

def test_repair_of_a_big_database_does_not_stall_other_databases(data):
    """DBREPAIRs of a 3M-key database back to back (~0.3 s each) for 3 s while GETs on
    ``default`` keep going: they never wait for a repair; a GET on the repaired database
    is refused as busy at once."""
    with ServerProcess(data) as srv:
        with RawClient(srv.endpoint) as c:
            ok(c.call(protocol.DBCREATE, ["big"]))
            ok(c.call(protocol.PUT, [b"probe", b"ok"], c.uid("default")))
        fill(srv.endpoint, "big", 3_000_000, random_size=16)
        done = threading.Event()
        started = threading.Event()
        repair_times: list = []

        def repair():
            try:
                with RawClient(srv.endpoint, timeout=300) as r:
                    big_uid = r.uid("big")
                    end = time.monotonic() + 3.0
                    while time.monotonic() < end or not repair_times:
                        t0 = time.monotonic()
                        started.set()
                        ok(r.call(protocol.DBREPAIR, [], big_uid, timeout=300))
                        repair_times.append(time.monotonic() - t0)
            finally:
                done.set()

        latencies = []
        busy_seen = None
        with RawClient(srv.endpoint) as c:
            uid = c.uid("default")
            big = c.uid("big")
            thread = threading.Thread(target=repair, daemon=True)
            thread.start()
            assert started.wait(30)
            deadline = time.monotonic() + 300
            while not done.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                assert ok(c.call(protocol.GET, [b"probe"], uid, timeout=30)) == [b"ok"]
                latencies.append(time.monotonic() - t0)
                if busy_seen is None:
                    t0 = time.monotonic()
                    reply = c.call(protocol.GET, [b"k0000000"], big, timeout=30)
                    if reply.status == Status.FAILURE:
                        busy_seen = (time.monotonic() - t0, reply.err_msg)
                time.sleep(0.002)
            thread.join(60)
        assert repair_times and sum(repair_times) >= 3.0, repair_times
        latencies.sort()
        p50, worst = latencies[len(latencies) // 2], latencies[-1]
        shortest = min(repair_times)
        assert p50 < min(0.05, shortest / 4), (p50, worst, repair_times)
        assert worst < 1.0, (p50, worst, repair_times)
        assert busy_seen is not None and busy_seen[0] < 1.0 and "busy" in str(busy_seen[1]), busy_seen


def test_the_client_repairs_a_damaged_database_by_name(data):
    from pyelevator_pool import DatabaseError, Elevator
    srv = ServerProcess(data).start()
    try:
        with Elevator(endpoint=srv.endpoint) as admin:
            admin.createdb("hurt")
            with Elevator("hurt", pool=admin.pool) as hurt:
                hurt.Put(b"k", b"v")
            srv.terminate()
            os.unlink(os.path.join(data, "dbs", "hurt", "CURRENT"))
            srv.start()
            with pytest.raises(DatabaseError, match="hurt"):
                Elevator("hurt", endpoint=srv.endpoint)
            with pytest.raises(TypeError):
                admin.repairdb(5)  # type: ignore[arg-type]
            admin.repairdb("hurt", timeout=60)
            with Elevator("hurt", pool=admin.pool) as hurt:
                assert hurt.Get(b"k") == b"v"
    finally:
        srv.stop()


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
