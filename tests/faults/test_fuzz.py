"""Fuzzing with hypothesis, beyond tests/integration/test_server_malformed.py (random bytes, random maps,
random typed values, batches, deep nesting are there):

* the server: requests of each command's valid shape with wrongly typed slots, and frames
  that declare huge lengths (str/bin/array/map/ext of up to 4 GiB in a few bytes); every
  one is answered, PING works after each, the server's RSS stays bounded; outcome counts
  are printed (run with ``-s``);
* the client's Connection against a raw ROUTER peer that answers with random frames: it
  returns a reply or raises ProtocolError (or ElevatorTimeout when nothing that is a reply
  to it comes), never anything else, never hangs.
"""
from __future__ import annotations

import queue
import struct
import threading
import time
from collections import Counter

import msgpack
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyelevator_pool import errors, protocol
from pyelevator_pool.connection import Connection
from pyelevator_pool.protocol import ErrorCode, Status

pytestmark = pytest.mark.timeout(180)

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: how much the server's RSS may grow over one fuzz test (LevelDB's memtable and cache
#: filling up with fuzzed PUTs, allocator slack): far below what one unbounded
#: allocation from a declared 4 GiB length would take.
RSS_GROWTH_LIMIT = 64 * 1024 * 1024

OUTCOMES: Counter = Counter()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.binary(max_size=24), st.text(max_size=12))
anything = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=12)
keys = st.binary(max_size=16).map(lambda b: b"fz:" + b)
flags = st.booleans()


def slot(right):
    """A slot of a valid shape: mostly the right type, sometimes anything at all."""
    return st.one_of(right, right, anything)


#: each command's argument shapes (docs/protocol.rst), slot by slot. DBCREATE never gets a
#: string name (no databases pile up) and DBREPAIR never a valid uid (see the uid draw).
SHAPES = {
    "GET": st.tuples(slot(keys)),
    "MGET": st.tuples(slot(st.lists(slot(keys), max_size=8)), slot(flags)),
    "PUT": st.tuples(slot(keys), slot(st.binary(max_size=64))),
    "DELETE": st.tuples(slot(keys)),
    "EXISTS": st.tuples(slot(keys)),
    "RANGE": st.tuples(slot(st.none() | keys), slot(st.none() | keys), slot(flags), slot(flags),
                       slot(st.none() | keys)),
    "SLICE": st.tuples(slot(st.none() | keys), slot(st.integers(-5, 50)), slot(flags), slot(flags)),
    "BATCH": st.tuples(slot(st.lists(st.one_of(
        st.tuples(st.just(1), slot(keys), slot(st.binary(max_size=16))).map(list),
        st.tuples(st.just(0), slot(keys)).map(list), anything), max_size=6))),
    "PING": st.just(()),
    "LIMITS": st.just(()),
    "DBLIST": st.just(()),
    "DBCONNECT": st.tuples(slot(st.text(max_size=10))),
    "DBMOUNT": st.tuples(slot(st.text(max_size=10))),
    "DBUMOUNT": st.tuples(anything.filter(lambda v: not isinstance(v, (str, bytes)))),
    "DBCREATE": st.tuples(anything.filter(lambda v: not isinstance(v, (str, bytes))), anything),
    "DBDROP": st.tuples(anything.filter(lambda v: not isinstance(v, (str, bytes)))),
    "DBREPAIR": st.just(()),
}


@st.composite
def shaped_requests(draw):
    cmd = draw(st.sampled_from(sorted(SHAPES)))
    args = list(draw(SHAPES[cmd]))
    # Sometimes a slot too many or too few: the arity is part of the shape.
    mutation = draw(st.sampled_from(["none", "none", "none", "extra", "drop"]))
    if mutation == "extra":
        args.append(draw(anything))
    elif mutation == "drop" and args:
        args.pop(draw(st.integers(0, len(args) - 1)))
    uid_kind = draw(st.sampled_from(["valid", "valid", "none", "text", "anything"]))
    if cmd == "DBREPAIR" and uid_kind == "valid":
        uid_kind = "text"
    meta = draw(st.one_of(st.just({}), st.fixed_dictionaries(
        {"id": st.one_of(st.integers(0, 2**32), st.text(max_size=4))}), anything))
    return cmd, args, uid_kind, draw(st.text(max_size=8)), draw(anything), meta


HUGE_HEADERS = [b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9"]  # str32 bin32 array32 map32 ext32


@st.composite
def huge_length_frames(draw):
    head = draw(st.sampled_from(HUGE_HEADERS))
    declared = draw(st.integers(2**16, 2**32 - 1))
    bomb = head + struct.pack(">I", declared) + (b"\x01" if head == b"\xc9" else b"") \
        + draw(st.binary(max_size=48))
    where = draw(st.sampled_from(["alone", "args", "in_args", "cmd", "meta", "uid"]))
    if where == "alone":
        return bomb
    prefix = {"args": b"\x84\xa4meta\x80\xa3uid\xc0\xa3cmd\xa3GET\xa4args",
              "in_args": b"\x84\xa4meta\x80\xa3uid\xc0\xa3cmd\xa3PUT\xa4args\x92\xa1k",
              "cmd": b"\x84\xa4meta\x80\xa3uid\xc0\xa4args\x90\xa3cmd",
              "meta": b"\x84\xa3uid\xc0\xa3cmd\xa4PING\xa4args\x90\xa4meta",
              "uid": b"\x84\xa4meta\x80\xa3cmd\xa3GET\xa4args\x91\xa1k\xa3uid"}[where]
    return prefix + bomb


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nfuzz outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items())))


def rss(server) -> int:
    return psutil.Process(server.pid).memory_info().rss


def answered(client, frame: bytes, kind: str) -> None:
    reply = client.raw(frame)
    assert reply.status in (Status.SUCCESS, Status.WARNING, Status.FAILURE), reply
    if reply.status == Status.FAILURE:
        assert reply.err_code in set(ErrorCode) and isinstance(reply.err_msg, str), reply
        OUTCOMES[f"{kind}:{ErrorCode(reply.err_code).name}"] += 1
    else:
        OUTCOMES[f"{kind}:{Status(reply.status).name}"] += 1
    OUTCOMES[f"{kind}:examples"] += 1
    assert client.call(protocol.PING, []).datas == [b"PONG"]


@pytest.fixture
def bounded_rss(server, client):
    before = rss(server)
    yield
    assert client.call(protocol.PING, []).datas == [b"PONG"]
    after = rss(server)
    OUTCOMES["rss_growth_kib_max"] = max(OUTCOMES["rss_growth_kib_max"], (after - before) // 1024)
    assert after - before < RSS_GROWTH_LIMIT, f"server RSS grew {before} -> {after}"


@FUZZ
@given(request=shaped_requests())
def test_valid_shapes_with_wrong_types_are_answered(client, uid, bounded_rss, request):
    cmd, args, uid_kind, text, other, meta = request
    req_uid = {"valid": uid, "none": None, "text": text, "anything": other}[uid_kind]
    try:
        frame = msgpack.packb({"meta": meta, "uid": req_uid, "cmd": cmd, "args": args},
                              use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # pragma: no cover - msgpack's own limits
        return
    answered(client, frame, "shaped")


@FUZZ
@given(frame=huge_length_frames())
def test_huge_declared_lengths_are_answered_without_allocating_them(client, bounded_rss, frame):
    answered(client, frame, "huge")


# ------------------------------------------------------- the client's Connection

class RandomPeer:
    """A ROUTER that answers each request with the frames a test put in its queue
    (a function of the request's id, so that replies can carry the right id)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.answers: "queue.Queue" = queue.Queue()
        self.errors: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, frame = self.sock.recv_multipart()[:2]
            rid = protocol.decode_request(frame).id
            try:
                make = self.answers.get_nowait()
            except queue.Empty:
                continue
            try:
                frames = make(rid)
            except Exception as exc:  # a test bug must show up, not turn into timeouts
                self.errors.append(exc)
                continue
            self.sock.send_multipart([ident, *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)


@pytest.fixture(scope="module")
def peer():
    ctx = zmq.Context()
    p = RandomPeer(ctx)
    yield p, ctx
    p.close()
    ctx.term()


datas = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                               st.binary(max_size=16),
                               st.text(max_size=8)),
                     lambda kids: st.one_of(st.lists(kids, max_size=4),
                                            st.dictionaries(st.binary(max_size=4), kids,
                                                            max_size=3)), max_leaves=10)


@st.composite
def reply_frames(draw):
    """Frames from a plausible reply (the right id, a header map) to pure noise."""
    header = {}
    for field, values in (("status", st.one_of(st.sampled_from([1, -1, -2]), scalars)),
                          ("err_code", st.one_of(st.sampled_from(list(ErrorCode)).map(int),
                                                 scalars)),
                          ("err_msg", st.one_of(st.text(max_size=10), scalars)),
                          ("compression", st.one_of(st.booleans(), scalars))):
        if draw(st.integers(0, 9)):  # usually present
            header[field] = draw(values)
    right_id = draw(st.integers(0, 9)) > 0
    noise_header = draw(st.binary(max_size=24)) if draw(st.integers(0, 4)) == 0 else None
    content_kind = draw(st.sampled_from(["datas", "datas", "bytes", "lz4ish", "other_map"]))
    if content_kind == "datas":
        content = msgpack.packb({"datas": draw(datas)}, use_bin_type=True)
    elif content_kind == "lz4ish":
        content = struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + draw(st.binary(max_size=32))
    elif content_kind == "other_map":
        content = msgpack.packb(draw(st.dictionaries(st.text(max_size=4), datas, max_size=3)))
    else:
        content = draw(st.binary(max_size=32))
    extra = draw(st.lists(st.binary(max_size=8), max_size=2))
    count = draw(st.sampled_from([2, 2, 2, 1, 3]))

    def make(rid):
        head = dict(header)
        head["id"] = rid if right_id else draw_id
        frames = [noise_header if noise_header is not None
                  else msgpack.packb(head, use_bin_type=True), content, *extra]
        return frames[:count]

    draw_id = draw(st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=4)))
    return make


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(make=reply_frames())
def test_connection_meets_random_replies_with_protocol_errors_only(peer, make):
    p, ctx = peer
    conn = Connection(ctx, p.endpoint, heartbeat_interval=0)
    try:
        p.answers.put(make)
        timeout = 0.3
        start = time.monotonic()
        try:
            reply = conn.request(protocol.GET, [b"k"], "uid", timeout=timeout)
        except errors.ProtocolError:
            OUTCOMES["client:ProtocolError"] += 1
            assert conn.is_tainted
        except errors.AuthenticationError:
            # a well-formed AUTH failure with this request's id (err_code 10): the key is
            # refused, and the socket is not used again
            OUTCOMES["client:AuthenticationError"] += 1
            assert conn.is_tainted
        except errors.ElevatorTimeout:
            OUTCOMES["client:ElevatorTimeout"] += 1  # nothing that answers this request came
        else:
            assert reply.status in (1, -1, -2)
            OUTCOMES["client:reply"] += 1
        elapsed = time.monotonic() - start
        assert elapsed < timeout + 2.0, f"hung for {elapsed:.1f}s"
        OUTCOMES["client:examples"] += 1
        assert not p.errors, p.errors
    finally:
        conn.close()
        while not p.answers.empty():  # an answer left unused (no request reached the peer)
            p.answers.get_nowait()


def test_an_auth_failure_with_the_requests_id_is_an_authentication_error(peer):
    """The case the random replies above meet now and then: a well-formed AUTH failure
    (err_code 10) answering this very request is the key's refusal, not a protocol error."""
    p, ctx = peer
    conn = Connection(ctx, p.endpoint, heartbeat_interval=0)
    try:
        p.answers.put(lambda rid: [
            msgpack.packb({"status": -1, "err_code": int(ErrorCode.AUTH), "err_msg": "refused",
                           "id": rid}, use_bin_type=True),
            msgpack.packb({"datas": None}, use_bin_type=True)])
        with pytest.raises(errors.AuthenticationError, match="refused"):
            conn.request(protocol.GET, [b"k"], "uid", timeout=5.0)
        assert conn.is_tainted
    finally:
        conn.close()
