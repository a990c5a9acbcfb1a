"""The streamed WriteBatch (docs/protocol.rst, "Streamed WriteBatch"): a real server, real
LevelDB, real ZeroMQ. Chunks go while the batch is built; nothing is visible before Write;
a dead, cleared or over-limit batch leaves nothing; an original server gets one BATCH."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict

import pytest

from pyelevator_pool import Elevator, LimitExceeded, protocol
from pyelevator_pool.streambatch import STREAM_CHUNK
from pyelevator_pool.testing import ServerProcess
from rawclient import RawClient

IDLE = 1.0          # --batch-idle-timeout (seconds) of the servers whose batches must expire
LONG_IDLE = 60.0    # ... and of the shared server, whose batches must outlive a slow test
MAX_KEYS = 5 * STREAM_CHUNK + STREAM_CHUNK // 2
DEADLINE = 30.0     # the longest any wait below may take on a loaded machine


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll ``check()`` until it is truthy; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(str(tmp_path_factory.mktemp("stream-batch")),
                        args=["--batch-idle-timeout", str(LONG_IDLE),
                              "--max-keys", str(MAX_KEYS)])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def ele(server):
    with Elevator(endpoint=server.endpoint) as e:
        yield e


@pytest.fixture(scope="module")
def reader(server):
    """Another client: what the rest of the world sees."""
    with Elevator(endpoint=server.endpoint) as e:
        yield e


def batches(client: Elevator) -> Dict[str, int]:
    return client.info()["batches"]


def present(client: Elevator, keys: list) -> int:
    return sum(v is not None for v in client.MGet(keys))


def key(prefix: bytes, i: int) -> bytes:
    return b"%s:%07d" % (prefix, i)


def test_a_streamed_batch_is_invisible_until_write_then_whole(ele, reader):
    n = 4 * STREAM_CHUNK + 123
    keys = [key(b"whole", i) for i in range(n)]
    before = batches(reader)
    wb = ele.WriteBatch()
    held = before["bytes"]
    for i, k in enumerate(keys):
        wb.Put(k, b"v%d" % i)
        if (i + 1) % STREAM_CHUNK == 0:
            # the chunk reached the server (it holds more bytes), yet none of it is visible
            held = wait_for("the server holds the chunk",
                            lambda: (batches(reader)["bytes"] > held and batches(reader)["bytes"]))
            assert present(reader, keys[:i + 1:97]) == 0
    stream = wb._slot.stream
    assert stream is not None and stream.parts == 4 and not stream.broken
    assert present(reader, keys[::101]) == 0
    wb.Write()
    assert len(wb) == 0
    assert reader.Get(keys[0]) == b"v0" and reader.Get(keys[-1]) == b"v%d" % (n - 1)
    assert present(reader, keys) == n
    after = batches(reader)
    assert after["written"] == before["written"] + 1
    assert after["pending"] == before["pending"]
    assert ele.pool.stats()["in_use"] == 0  # the batch's socket is back in the pool


def test_clear_leaves_nothing_and_frees_the_server(ele, reader):
    keys = [key(b"clear", i) for i in range(3 * STREAM_CHUNK)]
    before = batches(reader)
    wb = ele.WriteBatch()
    for k in keys:
        wb.Put(k, b"x")
    assert wb._slot.stream is not None and wb._slot.stream.parts == 3
    wait_for("the batch is pending", lambda: batches(reader)["pending"] > before["pending"])
    wb.Clear()
    wait_for("the batch is aborted",
             lambda: batches(reader)["aborted"] == before["aborted"] + 1
             and batches(reader)["pending"] == before["pending"])
    assert batches(reader)["written"] == before["written"]
    assert present(reader, keys[::7]) == 0
    assert ele.pool.stats()["in_use"] == 0
    # the batch is usable again, from scratch
    wb.Put(keys[0], b"again")
    wb.Write()
    assert reader.Get(keys[0]) == b"again" and present(reader, keys[1:]) == 0


def test_a_block_that_raises_discards_the_streamed_chunks(ele, reader):
    keys = [key(b"raises", i) for i in range(2 * STREAM_CHUNK + 5)]
    before = batches(reader)
    with pytest.raises(RuntimeError):
        with ele.WriteBatch() as wb:
            for k in keys:
                wb.Put(k, b"x")
            raise RuntimeError("the caller's failure")
    wait_for("the batch is aborted",
             lambda: batches(reader)["aborted"] == before["aborted"] + 1)
    assert present(reader, keys) == 0


KILLED_CLIENT = r"""
import sys, time
from pyelevator_pool import Elevator
e = Elevator(endpoint=sys.argv[1])
wb = e.WriteBatch()
for i in range(int(sys.argv[2])):
    wb.Put(b"killed:%07d" % i, b"x")
assert wb._slot.stream is not None and wb._slot.stream.parts >= 3
print("streamed", flush=True)
time.sleep(120)
"""


@pytest.fixture
def quick_expiry(tmp_path):
    """A server of the test's own whose pending batches expire after IDLE seconds."""
    (tmp_path / "data").mkdir()
    srv = ServerProcess(str(tmp_path / "data"), args=["--batch-idle-timeout", str(IDLE)])
    srv.start()
    yield srv
    srv.stop()


def test_a_client_killed_mid_batch_leaves_nothing_and_is_dropped_after_idle(quick_expiry):
    n = 3 * STREAM_CHUNK + 10
    reader = Elevator(endpoint=quick_expiry.endpoint)
    before = batches(reader)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, quick_expiry.endpoint,
                             str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "streamed"
        wait_for("the killed client's batch is pending",
                 lambda: batches(reader)["pending"] > before["pending"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEADLINE)
    wait_for("the dead client's batch expires",
             lambda: batches(reader)["expired"] > before["expired"]
             and batches(reader)["pending"] == before["pending"])
    assert batches(reader)["bytes"] == before["bytes"]
    assert present(reader, [b"killed:%07d" % i for i in range(0, n, 13)]) == 0
    assert "dropped 1 streamed WriteBatch" in quick_expiry.log_tail(200)
    reader.close()


def test_max_keys_across_chunks_is_refused_whole_by_the_server(ele, reader):
    # limits cached before the server's max_keys went down: the client streams on
    ele._limits(None)
    limits = dict(ele.pool.facts.cached_limits() or {})
    ele.pool.facts.set_limits({**limits, "max_keys": 10 * MAX_KEYS})
    n = MAX_KEYS + STREAM_CHUNK
    keys = [key(b"overmax", i) for i in range(n)]
    wb = ele.WriteBatch()
    for k in keys:
        wb.Put(k, b"x")
    assert wb._slot.stream is not None and wb._slot.stream.parts == n // STREAM_CHUNK
    with pytest.raises(LimitExceeded) as info:
        wb.Write()
    exc = info.value
    assert (exc.limit, exc.maximum) == ("max_keys", MAX_KEYS)
    assert str(MAX_KEYS) in str(exc)
    assert len(wb) == n  # kept, as any failed Write keeps its operations
    assert present(reader, keys) == 0


def test_max_keys_known_to_the_client_is_refused_before_the_last_chunk(ele, reader):
    n = MAX_KEYS + 1
    keys = [key(b"overmax2", i) for i in range(n)]
    wb = ele.WriteBatch()
    for k in keys:
        wb.Put(k, b"x")
    with pytest.raises(LimitExceeded, match="cannot be split") as info:
        wb.Write()
    assert (info.value.limit, info.value.value) == ("max_keys", n)
    assert present(reader, keys) == 0


def test_an_original_server_gets_one_batch(ele, reader):
    ele._limits(None)
    limits = dict(ele.pool.facts.cached_limits() or {})
    limits.pop(protocol.STREAM_BATCH)
    ele.pool.facts.set_limits(limits)  # LIMITS as a server without the extension answers
    before = batches(reader)
    keys = [key(b"original", i) for i in range(2 * STREAM_CHUNK + 7)]
    wb = ele.WriteBatch()
    for k in keys:
        wb.Put(k, b"o")
    assert wb._slot.stream is None
    assert batches(reader)["pending"] == before["pending"]
    wb.Write()
    assert present(reader, keys) == len(keys)
    assert batches(reader)["written"] == before["written"]  # not streamed


def test_server_restarted_between_chunks_never_applies_half(quick_expiry):
    with Elevator(endpoint=quick_expiry.endpoint) as e:
        keys = [key(b"restart", i) for i in range(4 * STREAM_CHUNK + 3)]
        wb = e.WriteBatch()
        for k in keys[:2 * STREAM_CHUNK]:
            wb.Put(k, b"r")
        assert wb._slot.stream is not None and wb._slot.stream.parts == 2
        quick_expiry.restart(kill=True)  # the chunks it held die with it
        for k in keys[2 * STREAM_CHUNK:]:
            wb.Put(k, b"r")
        try:
            wb.Write(timeout=DEADLINE)
        except Exception as exc:  # allowed, if nothing was written and it says so
            found = present(e, keys)
            assert found == 0, f"half a batch applied ({found} keys) and {exc!r}"
            assert "nothing was written" in str(exc) or not getattr(exc, "request_sent", True)
        else:
            assert present(e, keys) == len(keys)
            assert len(wb) == 0
        # the server never wrote a batch it had lost: only the whole one sent again
        assert batches(e)["failed"] == 0


# --------------------------------------------------------- the wire, raw

@pytest.fixture
def raw(server):
    with RawClient(server.endpoint) as c:
        yield c


def part(raw: RawClient, uid: str, bid: int, seq: int, ops: list) -> None:
    raw.sock.send(protocol.encode_notification(protocol.BATCHPART, [bid, seq, ops], uid))


def test_a_missing_chunk_fails_the_final_chunk_and_writes_nothing(raw, reader):
    uid = raw.uid()
    ops = [[protocol.BATCH_PUT, b"gap:%d" % i, b"g"] for i in range(300)]
    part(raw, uid, 41, 0, ops[:100])
    part(raw, uid, 41, 2, ops[100:200])  # chunk 1 never sent
    reply = raw.call(protocol.BATCHEND, [41, 3, ops[200:]], uid, id=1)
    assert reply.status == protocol.Status.FAILURE
    assert reply.detail == {protocol.BATCH_LOST: "incomplete"}
    assert "nothing was written" in reply.err_msg
    assert present(reader, [op[1] for op in ops]) == 0


def test_a_final_chunk_of_an_unknown_batch_fails(raw, reader):
    uid = raw.uid()
    reply = raw.call(protocol.BATCHEND, [42, 5, [[protocol.BATCH_PUT, b"unknown", b"u"]]],
                     uid, id=2)
    assert reply.status == protocol.Status.FAILURE
    assert reply.detail == {protocol.BATCH_LOST: "missing"}
    assert reader.Exists(b"unknown") is False


def test_a_bad_op_in_a_chunk_fails_the_batch_whole(raw, reader):
    uid = raw.uid()
    part(raw, uid, 43, 0, [[protocol.BATCH_PUT, b"badop:0", b"b"]] * 300)
    part(raw, uid, 43, 1, [[9, b"badop:1"]])
    reply = raw.call(protocol.BATCHEND, [43, 2, [[protocol.BATCH_PUT, b"badop:2", b"b"]]],
                     uid, id=3)
    assert reply.status == protocol.Status.FAILURE
    assert reply.err_code == protocol.ErrorCode.SIGNAL
    assert present(reader, [b"badop:0", b"badop:1", b"badop:2"]) == 0


def test_a_batch_the_server_dropped_is_sent_again_whole(quick_expiry):
    with Elevator(endpoint=quick_expiry.endpoint) as e:
        keys = [key(b"dropped", i) for i in range(2 * STREAM_CHUNK + 50)]
        wb = e.WriteBatch()
        for k in keys:
            wb.Put(k, b"d")
        first = wb._slot.stream
        assert first is not None and first.parts == 2 and not first.broken
        wait_for("the idle batch is dropped", lambda: batches(e)["expired"] == 1)
        wb.Write(timeout=DEADLINE)  # its final chunk is answered "missing": sent again whole
        # every key, though the first chunks were dropped: the resend wrote them, as one
        # streamed batch (written), the lost one counted once (expired)
        assert present(e, keys) == len(keys)
        counts = batches(e)
        assert (counts["expired"], counts["written"], counts["pending"]) == (1, 1, 0)


def test_chunks_with_deletes_are_applied_in_order(ele, reader):
    keys = [key(b"mixed", i) for i in range(3 * STREAM_CHUNK)]
    with ele.WriteBatch() as wb:
        for k in keys:
            wb.Put(k, b"old")
    wb = ele.WriteBatch()
    for i, k in enumerate(keys):
        if i % 3 == 0:
            wb.Delete(k)          # every chunk holds deletes: sent as BATCH ops, not flat
        else:
            wb.Put(k, b"new")
    wb.Put(keys[3], b"again")     # a put after the delete of the same key, in the last chunk
    assert wb._slot.stream is not None and wb._slot.stream.parts == 3
    wb.Write()
    values = reader.MGet(keys)
    assert values[3] == b"again"
    assert all(v is None for i, v in enumerate(values) if i % 3 == 0 and i != 3)
    assert all(v == b"new" for i, v in enumerate(values) if i % 3)


def test_a_pool_of_one_socket_writes_one_batch_and_stays_usable(server, reader):
    keys = [key(b"onesocket", i) for i in range(2 * STREAM_CHUNK + 1)]
    with Elevator(endpoint=server.endpoint, max_size=1, checkout_timeout=5.0) as e:
        wb = e.WriteBatch()
        for k in keys[:STREAM_CHUNK + 1]:
            wb.Put(k, b"1")
        assert wb._slot.stream is None  # streaming would take the only socket
        assert e.Exists(keys[0], timeout=5.0) is False  # this thread still gets its socket
        for k in keys[STREAM_CHUNK + 1:]:
            wb.Put(k, b"1")
        wb.Write()
        assert present(reader, keys) == len(keys)


def test_the_idle_timeout_flag_must_be_positive(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--data-dir",
                           str(tmp_path), "--batch-idle-timeout", "0"],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 2
    assert "batch_idle_timeout must be > 0" in proc.stderr


def test_a_streamed_batch_takes_its_turn_among_other_writes(ele, reader):
    keys = [key(b"order", i) for i in range(2 * STREAM_CHUNK + 10)]
    wb = ele.WriteBatch()
    for k in keys:
        wb.Put(k, b"batch")
    assert wb._slot.stream is not None and wb._slot.stream.parts == 2
    reader.Put(keys[0], b"before")   # received before the final chunk: applied first
    reader.Put(keys[-1], b"before")  # (the last chunk's key too)
    assert reader.Get(keys[0]) == b"before"
    wb.Write()
    assert reader.Get(keys[0]) == b"batch" and reader.Get(keys[-1]) == b"batch"
    reader.Put(keys[1], b"after")    # received after: applied after
    assert reader.Get(keys[1]) == b"after"


def test_a_final_chunk_that_fails_drops_the_batch_on_the_server(ele, reader):
    before = batches(reader)
    wb = ele.WriteBatch()
    for i in range(STREAM_CHUNK):
        wb.Put(key(b"failend", i), b"x")
    wb._ops.append((7, b"failend:bad"))  # an op the server refuses (SIGNAL), in the last chunk
    with pytest.raises(Exception, match="unknown operation"):
        wb.Write()
    wait_for("nothing pending", lambda: batches(reader)["pending"] == before["pending"])
    assert batches(reader)["failed"] == before["failed"] + 1
    assert present(reader, [key(b"failend", i) for i in range(0, STREAM_CHUNK, 11)]) == 0
    assert ele.pool.stats()["in_use"] == 0
