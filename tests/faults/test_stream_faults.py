"""A streamed reply is complete or it is an error (extension: SEQ, WINDOW, CREDIT).

Every page of a streamed RANGE/SLICE carries ``seq`` 0, 1, 2...; the server sends at most
``window`` pages ahead of the reader's CREDITs, so a slow reader never loses a page; the
client raises ProtocolError on a gap, a repeat or a reversal instead of returning a short
or shuffled answer. Real server; faults come from tests/relay.py or from the reader.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import psutil
import pytest
import zmq

from pyelevator_pool import Elevator, errors, protocol
from rawclient import RawClient
from relay import Relay

RELAY_KEYS = 50_000       # the client's Range: five full pages of 10,000, then the last
SLOW_KEYS = 200_000
_MIB = 1024 * 1024


def _key(i: int) -> bytes:
    return b"k%07d" % i


def _value(i: int) -> bytes:
    return b"v%d" % i


def _fill(endpoint: str, name: str, count: int) -> None:
    with RawClient(endpoint, timeout=60) as raw:
        reply = raw.call(protocol.DBCREATE, [name, {}])
        assert reply.status == 1, reply
        uid = raw.uid(name)
        for start in range(0, count, 50_000):
            ops = [[protocol.BATCH_PUT, _key(i), _value(i)]
                   for i in range(start, min(count, start + 50_000))]
            assert raw.call(protocol.BATCH, [ops], uid).status == 1


@pytest.fixture(scope="module")
def relay_db(server):
    _fill(server.endpoint, "faults50k", RELAY_KEYS)
    return "faults50k"


@pytest.fixture(scope="module")
def slow_db(server):
    _fill(server.endpoint, "faults200k", SLOW_KEYS)
    return "faults200k"


@pytest.fixture
def relay(server):
    with Relay(server.endpoint) as r:
        yield r


# ------------------------------------------------------------------- the relay

def test_through_a_relay_that_passes_everything_range_is_exact(relay, relay_db):
    with Elevator(relay_db, endpoint=relay.endpoint, timeout=30) as client:
        got = client.Range()
    assert relay.pages_seen >= 5, "the Range was not streamed: the relay saw no page"
    assert got == [[_key(i), _value(i)] for i in range(RELAY_KEYS)]


@pytest.mark.parametrize("fault", ["drop", "dup", "swap"])
def test_a_page_dropped_duplicated_or_swapped_on_the_way_raises(relay, relay_db, fault):
    relay.set_fault(fault, 2)
    with Elevator(relay_db, endpoint=relay.endpoint, timeout=30) as client:
        with pytest.raises(errors.ProtocolError):
            got = client.Range()
            pytest.fail(f"{fault}: Range returned {len(got)} items of {RELAY_KEYS} "
                        f"({len(set(map(tuple, got)))} distinct, "
                        f"sorted: {got == sorted(got)}) and raised nothing")
        assert relay.faults_done >= 1
        relay.set_fault(None)
        # The fault cost that call only: the next one, on a fresh socket, is exact.
        assert client.Range() == [[_key(i), _value(i)] for i in range(RELAY_KEYS)]


# --------------------------------------------------------- raw streamed readers

def _stream_request(uid: str, rid: Any, page: int, window: int) -> bytes:
    meta = {"id": rid, protocol.STREAM: page, protocol.WINDOW: window}
    return msgpack.packb({"meta": meta, "uid": uid, "cmd": protocol.RANGE,
                          "args": [None, None, True, True]}, use_bin_type=True)


def _credit(rid: Any, n: int) -> bytes:
    return msgpack.packb({"meta": {}, "uid": None, "cmd": protocol.CREDIT, "args": [rid, n]},
                         use_bin_type=True)


class _Reader:
    """Reads the pages of one stream off a raw DEALER; the others' replies are counted."""

    def __init__(self, raw: RawClient, rid: Any) -> None:
        self.raw, self.rid = raw, rid
        self.heads: List[Dict[str, Any]] = []
        self.items: list = []
        self.stray: List[Tuple[Dict[str, Any], Any]] = []

    def next_page(self, timeout: float) -> Optional[Dict[str, Any]]:
        """The next page's header (its items appended), None when none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.raw.sock.poll(max(1, int(left * 1000))):
                return None
            frames = self.raw.sock.recv_multipart()
            head = protocol.decode_header(frames[0])
            if head.get("id") != self.rid:
                self.stray.append((head, protocol.decode_reply(frames).err_msg))
                continue
            self.heads.append(head)
            if head.get("status") != protocol.Status.FAILURE:
                datas = protocol.decode_content(frames[1], bool(head.get("compression")))
                if isinstance(datas, list):
                    self.items.extend(datas)
            return head


def _first_keys_through(relay: Relay, uid: str, rid: int) -> List[bytes]:
    """The first key of each page of a streamed RANGE (pages of 5,000) read through the
    relay by a raw client that credits every page."""
    firsts: List[bytes] = []
    with RawClient(relay.endpoint) as raw:
        reader = _Reader(raw, rid)
        raw.sock.send(_stream_request(uid, rid, 5_000, 8))
        for _ in range(RELAY_KEYS // 5_000 + 3):
            before = len(reader.items)
            head = reader.next_page(timeout=3.0)
            if head is None:
                break
            if len(reader.items) > before:
                firsts.append(reader.items[before][0])
            if not head.get(protocol.MORE):
                break
            raw.sock.send(_credit(rid, 1))
    return firsts


def test_the_relay_drops_duplicates_and_swaps_the_page_it_is_told_to(relay, relay_db, server):
    with RawClient(server.endpoint) as raw:
        uid = raw.uid(relay_db)
    pages = [_key(i) for i in range(0, RELAY_KEYS, 5_000)]
    assert _first_keys_through(relay, uid, 1) == pages
    relay.set_fault("drop", 2)
    assert _first_keys_through(relay, uid, 2) == pages[:2] + pages[3:]
    relay.set_fault("dup", 2)
    assert _first_keys_through(relay, uid, 3) == pages[:3] + pages[2:]
    relay.set_fault("swap", 2)
    assert _first_keys_through(relay, uid, 4) == pages[:2] + [pages[3], pages[2]] + pages[4:]
    assert relay.faults_done == 3


def _rss(server) -> int:
    return psutil.Process(server.pid).memory_info().rss


def _small_buffer_client(endpoint: str) -> RawClient:
    """A RawClient whose socket queues at most 100 replies: a slow reader's backlog then
    stays on the server, which must wait for credits rather than overflow and drop."""
    raw = RawClient(endpoint)
    raw.sock.close(0)
    raw.sock = raw.ctx.socket(zmq.DEALER)
    raw.sock.linger = 0
    raw.sock.rcvhwm = 100
    raw.sock.connect(endpoint)
    return raw


def test_a_slow_reader_that_credits_gets_every_item_once_in_order(server, slow_db):
    """Pages of 10 items, a 200 ms pause after page 100 and every 1,000 pages: the server
    that sent without waiting overflowed its queue there and dropped pages (5 runs out of
    5 lost 10,000 to 58,000 of the 200,000 items, and often the last page)."""
    page, window, pause_every = 10, 32, 1_000
    expected_pages = SLOW_KEYS // page + 1  # full pages, then an empty last one
    with _small_buffer_client(server.endpoint) as raw:
        uid = raw.uid(slow_db)
        reader = _Reader(raw, 1)
        rss_before = peak = _rss(server)
        raw.sock.send(_stream_request(uid, 1, page, window))
        deadline = time.monotonic() + 120
        last: Optional[Dict[str, Any]] = None
        while time.monotonic() < deadline and len(reader.heads) < 2 * expected_pages:
            last = reader.next_page(timeout=3.0)
            if last is None or not last.get(protocol.MORE):
                break
            raw.sock.send(_credit(1, 1))
            taken = len(reader.heads)
            if taken == 100 or taken % pause_every == 0:
                peak = max(peak, _rss(server))
                time.sleep(0.2)  # the slow reader's pause: what is measured, not a sync
        peak = max(peak, _rss(server))
    summary = (f"{len(reader.items)} of {SLOW_KEYS} items in {len(reader.heads)} pages, "
               f"last header {last}, {len(reader.stray)} stray replies "
               f"{reader.stray[:1]}")
    assert last is not None, f"the stream stalled: {summary}"
    assert last["status"] == protocol.Status.SUCCESS and not last.get(protocol.MORE), summary
    assert len(reader.items) == SLOW_KEYS, summary
    assert reader.items == [[_key(i), _value(i)] for i in range(SLOW_KEYS)], summary
    assert [h.get(protocol.SEQ) for h in reader.heads] == list(range(len(reader.heads))), \
        f"pages not numbered 0, 1, 2...: {summary}"
    assert not reader.stray, f"a CREDIT was answered: {summary}"
    assert peak - rss_before < 128 * _MIB, \
        f"server RSS grew by {(peak - rss_before) / _MIB:.0f} MiB: {summary}"


def test_a_reader_that_never_credits_gets_at_most_window_pages(server, slow_db):
    page, window = 100, 4
    with RawClient(server.endpoint) as raw, RawClient(server.endpoint) as other:
        uid = raw.uid(slow_db)
        reader = _Reader(raw, 2)
        raw.sock.send(_stream_request(uid, 2, page, window))
        # Pages come until the window is used up, then none for a second.
        while len(reader.heads) <= SLOW_KEYS // page:
            if reader.next_page(timeout=1.0) is None:
                break
        summary = (f"{len(reader.heads)} pages ({len(reader.items)} items) without a credit, "
                   f"window {window}; seqs {[h.get(protocol.SEQ) for h in reader.heads[:8]]}")
        assert 1 <= len(reader.heads) <= window, summary
        assert [h.get(protocol.SEQ) for h in reader.heads] == list(range(len(reader.heads)))
        # The stalled stream holds nothing the others need.
        other_uid = other.uid(slow_db)
        for i in (0, 77, SLOW_KEYS - 1):
            t0 = time.monotonic()
            reply = other.call(protocol.GET, [_key(i)], other_uid, id=100 + i, timeout=2.0)
            assert reply.status == 1 and reply.datas == [_value(i)]
            assert time.monotonic() - t0 < 1.0
        other_reader = _Reader(other, 3)
        other.sock.send(_stream_request(other_uid, 3, 50_000, 4))
        while True:
            head = other_reader.next_page(timeout=10.0)
            assert head is not None, "another client's streamed RANGE stalled"
            if not head.get(protocol.MORE):
                break
            other.sock.send(_credit(3, 1))
        assert len(other_reader.items) == SLOW_KEYS
        # Closing the stream (CREDIT 0) is never answered and ends it.
        raw.sock.send(_credit(2, 0))
        raw.sock.send(protocol.encode_request(protocol.PING, [], id="ping"))
        pong = _Reader(raw, "ping")
        assert pong.next_page(timeout=2.0) is not None, "no PING reply after the close"
        assert len(reader.heads) + len(pong.stray) <= window, \
            f"pages after CREDIT 0 or a CREDIT answered: {pong.stray[:2]}"
        assert not reader.stray, f"a CREDIT was answered: {reader.stray[:1]}"
