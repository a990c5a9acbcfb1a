"""Faults: malformed frames, generated with hypothesis. Every one gets an answer, and the server
keeps answering everything after it."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawclient import RawClient

from pyelevator_pool import protocol
from pyelevator_pool.protocol import ErrorCode, Status
from pyelevator_pool.testing import ServerProcess

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.binary(max_size=40), st.text(max_size=20))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), kids, max_size=5)),
    max_leaves=25)
commands = st.one_of(st.sampled_from(sorted(protocol.ALL_COMMANDS)), st.text(max_size=10),
                     st.binary(max_size=10), scalars)


def answered(client, frame):
    """Send a frame: a well-formed reply must come back, and PING must still work."""
    reply = client.raw(frame)
    assert reply.status in (Status.SUCCESS, Status.WARNING, Status.FAILURE)
    if reply.status == Status.FAILURE:
        assert reply.err_code in set(ErrorCode), reply
        assert isinstance(reply.err_msg, str)
    return reply


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_answered(client, frame):
    answered(client, frame)
    assert client.call("PING").datas == [b"PONG"]


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(["meta", "uid", "cmd", "args"]),
                                 st.text(max_size=5)), values, max_size=6))
def test_random_msgpack_maps_are_answered(client, request_map):
    answered(client, msgpack.packb(request_map, use_bin_type=True))
    assert client.call("PING").datas == [b"PONG"]


@FUZZ
@given(cmd=commands, args=st.lists(values, max_size=6), use_uid=st.booleans(),
       meta=st.one_of(st.just({}), st.dictionaries(st.sampled_from(["id", "compression", "x"]),
                                                   scalars, max_size=3), scalars))
def test_wrongly_typed_requests_are_answered(client, uid, cmd, args, use_uid, meta):
    # No DBDROP/DBUMOUNT of what other tests use: the names fuzzed here are random.
    frame = msgpack.packb({"meta": meta, "uid": uid if use_uid else None, "cmd": cmd,
                           "args": args}, use_bin_type=True)
    answered(client, frame)
    assert client.call("PING").datas == [b"PONG"]


@FUZZ
@given(ops=st.lists(st.one_of(values, st.tuples(st.sampled_from([0, 1, 2, -1]), values, values)
                              .map(list)), max_size=8))
def test_fuzzed_batches_are_answered_and_all_or_nothing(client, uid, ops):
    marker = [1, b"fuzz:marker", b"x"]
    reply = client.call("BATCH", [[marker, *ops]], uid)
    present = client.call("EXISTS", [b"fuzz:marker"], uid).datas == [True]
    assert present == (reply.status == Status.SUCCESS)
    client.call("DELETE", [b"fuzz:marker"], uid)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(containers=st.lists(st.sampled_from([b"\x91", b"\x81\xa1k", b"\x81\x91"]),
                           min_size=1, max_size=50),
       repeat=st.integers(1, 5000), leaf=st.sampled_from([b"\xc0", b"\x01", b"", b"\xc1"]))
def test_deeply_nested_frames_are_answered(client, containers, repeat, leaf):
    nesting = b"".join(containers) * repeat
    for frame in (b"\x82\xa3cmd\xa4PING\xa4args" + nesting + leaf, nesting + leaf):
        answered(client, frame)
    assert client.call("PING").datas == [b"PONG"]


@pytest.mark.parametrize("depth", [100, 1000, 10000, 100000])
def test_deeply_nested_request_is_answered(client, depth):
    frame = b"\x81\xa4args" + b"\x91" * depth + b"\xc0"
    answered(client, frame)
    assert client.call("PING").datas == [b"PONG"]


def test_request_over_the_size_limit_is_refused_and_the_server_goes_on(tmp_path):
    limit = 64 * 1024
    with ServerProcess(str(tmp_path), args=["--max-message-size", str(limit)]) as srv:
        with RawClient(srv.endpoint) as c:
            uid = c.uid()
            reply = c.call("PUT", [b"big", b"x" * (limit + 100)], uid)
            assert reply.status == Status.FAILURE and reply.err_code == ErrorCode.REQUEST
            assert "limit" in reply.err_msg
        with RawClient(srv.endpoint) as c:
            # Far beyond the limit: libzmq drops the connection before buffering the frame.
            c.sock.send(protocol.encode_request("PUT", [b"huge", b"x" * (limit * 40)], uid))
            with pytest.raises(TimeoutError):
                c.recv(timeout=1.0)
        with RawClient(srv.endpoint) as c:
            assert c.call("PING").datas == [b"PONG"]
            assert c.call("GET", [b"big"], uid).err_code == ErrorCode.KEY


def test_no_malformed_request_reached_an_unexpected_error_path(server, client):
    # Runs last in this module: every fuzzed request above was answered by a handled error,
    # none by the catch-all that logs a traceback.
    assert client.call("PING").datas == [b"PONG"]
    assert "Traceback" not in server.log_tail(lines=100000)


def test_a_max_message_size_below_the_floor_clients_check_is_refused_at_start(tmp_path):
    """Clients check only frames above MIN_MAX_MESSAGE_SIZE against the server's limit:
    a lower limit would let smaller frames through, to be dropped unanswered."""
    import subprocess
    import sys
    low = str(protocol.MIN_MAX_MESSAGE_SIZE - 1)
    done = subprocess.run([sys.executable, "-m", "pyelevator_pool.server", "--data-dir",
                           str(tmp_path), "--port", "0", "--max-message-size", low],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"must be >= {protocol.MIN_MAX_MESSAGE_SIZE}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
