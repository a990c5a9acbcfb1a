"""PendingBatches (server/batches.py), without sockets or LevelDB: its bounds, expiry, abort."""
from __future__ import annotations

import pytest

from pyelevator_pool.server.batches import PendingBatches


class FakeWriteBatch:
    def __init__(self) -> None:
        self.cleared = False

    def clear(self) -> None:
        self.cleared = True


def opened(batches: PendingBatches, ident: bytes, bid: int):
    return batches.open((ident, bid), "uid", object(), FakeWriteBatch)


def test_batches_are_bounded_per_client_and_in_all():
    batches = PendingBatches(10.0, per_peer=2, total=3)
    assert opened(batches, b"a", 1) is not None
    assert opened(batches, b"a", 2) is not None
    assert opened(batches, b"a", 3) is None          # a's third
    assert opened(batches, b"b", 1) is not None
    assert opened(batches, b"c", 1) is None          # the fourth in all
    assert len(batches) == 3 and batches.refused == 2
    assert batches.pop((b"a", 1)) is not None
    assert opened(batches, b"c", 1) is not None      # room again


def test_bytes_are_bounded_and_given_back():
    batches = PendingBatches(10.0, max_bytes=100)
    batch = opened(batches, b"a", 1)
    assert batches.grow(batch, 60) and not batches.grow(batch, 50)
    assert batches.bytes == 60
    batches.spoil(batch, RuntimeError("a bad op"))
    assert batches.bytes == 0 and batch.wb is None and str(batch.error) == "a bad op"
    other = opened(batches, b"b", 1)
    assert batches.grow(other, 100)
    batches.pop((b"b", 1))
    assert batches.bytes == 0


def test_only_idle_batches_expire_and_their_buffers_are_freed():
    batches = PendingBatches(5.0)
    idle, busy, fresh = (opened(batches, b"a", i) for i in range(3))
    for batch in (idle, fresh):
        batches.done(batch)
    wb = idle.wb
    idle.last_active -= 10
    busy.last_active -= 10                            # being filled: never under its feet
    assert batches.expire() == [idle]
    assert wb.cleared and idle.wb is None
    assert batches.expired == 1 and len(batches) == 2
    assert not batches.held(idle) and batches.held(busy) and batches.held(fresh)


def test_abort_drops_a_batch_and_a_reused_id_replaces_it():
    batches = PendingBatches(5.0)
    first = opened(batches, b"a", 1)
    batches.done(first)
    assert batches.abort((b"a", 1)) and not batches.abort((b"a", 1))
    assert first.wb is None and batches.aborted == 1
    again = opened(batches, b"a", 2)
    replaced = opened(batches, b"a", 2)
    assert replaced is not again and not batches.held(again) and batches.aborted == 2


def test_the_idle_time_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        PendingBatches(0)
