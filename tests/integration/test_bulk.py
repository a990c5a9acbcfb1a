"""Bulk loading and export against a real elevator-server: restarts, resume, order, bad input.

The fault tests run a server of their own (``fresh_server``), SIGKILL it while a load is
running and start it again on the same port; the load must end with exactly the input
pairs. Kills are triggered from another thread by the load's progress callback, which
waits (bounded) until the kill happened, so the kill always lands mid-load.
"""
from __future__ import annotations

import itertools
import os
import threading

import pytest
import tenacity

from pyelevator_pool import Elevator, ElevatorError, ElevatorPool, RetryPolicy, bulk
from pyelevator_pool.bulk import BulkLoadError, LoadReport, dump, load
from rawclient import run_forked

WAIT = 30.0  # bound of every wait on another thread in these tests


def pairs_for(n: int, tag: bytes = b"v"):
    """A generator (never a list) of n pairs with distinct keys in key order."""
    return ((b"key:%09d" % i, tag + b"-%d" % (i * 7919)) for i in range(n))


class KillAt:
    """A progress callback that, at each threshold, has the server SIGKILLed by another
    thread (at once, while the load goes on, so batches are in flight) and then
    restarted on the same port (``restart=True``) or left down. ``done_at_kill``
    records how far the load was when each kill happened."""

    def __init__(self, server, thresholds, *, restart: bool = True) -> None:
        self.server = server
        self.thresholds = list(thresholds)
        self.restart = restart
        self.requests = [threading.Event() for _ in self.thresholds]
        self.killed = [threading.Event() for _ in self.thresholds]
        self.restarted = [threading.Event() for _ in self.thresholds]
        self.done = 0
        self.done_at_kill = []
        self.errors = []
        self.thread = threading.Thread(target=self._killer, daemon=True)
        self.thread.start()

    def __call__(self, done: int) -> None:
        self.done = done
        for i, threshold in enumerate(self.thresholds):
            if done >= threshold:
                self.requests[i].set()

    def _killer(self) -> None:
        try:
            for i in range(len(self.thresholds)):
                if not self.requests[i].wait(WAIT):
                    return
                self.server.kill()
                self.done_at_kill.append(self.done)
                self.killed[i].set()
                if self.restart:
                    self.server.start()
                    self.restarted[i].set()
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


# --------------------------------------------------------------- faults: kill -9

def test_load_200k_pairs_through_two_sigkills_and_restarts_is_exact(fresh_server):
    n = 200_000
    killer = KillAt(fresh_server, [30_000, 110_000])
    pool = ElevatorPool(fresh_server.endpoint)
    client = Elevator(pool=pool)
    try:
        report = load(client, pairs_for(n), batch_size=2_000, workers=2, progress=killer,
                      timeout=30)
        killer.join()
        assert all(e.is_set() for e in killer.restarted)
        assert len(killer.done_at_kill) == 2 and killer.done_at_kill[-1] < n, \
            "both kills landed while the load was running"
        assert report.pairs == n and report.written == n and report.skipped == 0
        assert report.batches == n // 2_000
        assert report.retries > 0, "batches cut by the kills were retried and counted"
        assert report.elapsed > 0 and report.rate == pytest.approx(n / report.elapsed)
        # Exactly those pairs, right values, nothing else (the database was empty).
        assert list(dump(client, page_size=7_000)) == list(pairs_for(n))
        assert client.Range(limit=1_000_000, include_value=False)[-1] == b"key:%09d" % (n - 1)
    finally:
        client.close()
        pool.close()


def test_abort_when_outage_outlasts_retries_then_resume_with_skip_matches_clean_load(
        fresh_server):
    n, batch = 60_000, 1_000
    killer = KillAt(fresh_server, [15_000], restart=False)
    pool = ElevatorPool(fresh_server.endpoint)
    client = Elevator(pool=pool)
    try:
        client.createdb("clean")
        short = RetryPolicy(stop=tenacity.stop_after_delay(0.3))
        with pytest.raises(BulkLoadError) as info:
            load(client, pairs_for(n), batch_size=batch, workers=2, retry=short,
                 progress=killer, timeout=1.0)
        killer.join()
        exc = info.value
        assert isinstance(exc, ElevatorError)
        assert exc.written <= killer.done_at_kill[0] + 4 * batch < n, \
            "it stopped soon after the kill: (2 queued + 1 in flight) per worker at most"
        assert exc.written % batch == 0, "the prefix ends on a batch boundary"
        assert exc.pairs == exc.written and exc.bad_index is None
        assert f"skip={exc.written}" in str(exc)

        fresh_server.start()  # the outage ends
        # The reported prefix is really there, with the right values.
        got = list(itertools.islice(dump(client), exc.written))
        assert got == list(itertools.islice(pairs_for(n), exc.written))

        report = load(client, pairs_for(n), batch_size=batch, skip=exc.written)
        assert report.skipped == exc.written and report.pairs == n - exc.written
        assert report.written == n

        clean = Elevator("clean", pool=pool)
        load(clean, pairs_for(n), batch_size=batch)
        assert list(dump(client)) == list(dump(clean)) == list(pairs_for(n))
    finally:
        client.close()
        pool.close()


# ----------------------------------------------------------------- behaviour

def test_load_reads_a_generator_lazily_a_bounded_number_of_batches_ahead(db):
    consumed = itertools.count()
    seen = []

    def source():
        for pair in pairs_for(50_000):
            next(consumed)
            yield pair

    def progress(done):
        if not seen:
            seen.append(next(consumed) - 1)

    report = load(db, source(), batch_size=500, workers=3, progress=progress)
    assert report.pairs == 50_000
    # Batches queued or in flight (2 per worker) plus the one being read.
    assert seen[0] <= (2 * 3 + 1) * 500


def test_load_report_counts_batches_and_pairs_and_accepts_str_and_bytes(db):
    data = [("clé-%d" % i, "valeur-%d" % i) if i % 2 else (b"b%d" % i, b"v%d" % i)
            for i in range(2_345)]
    progress = []
    report = load(db, iter(data), batch_size=1_000, workers=2, progress=progress.append)
    assert isinstance(report, LoadReport)
    assert (report.pairs, report.batches, report.retries, report.skipped) == (2_345, 3, 0, 0)
    assert progress == sorted(progress) and progress[-1] == 2_345
    assert db.Get("clé-1") == "valeur-1".encode() and db.Get(b"b0") == b"v0"
    assert str(report).startswith("2345 pairs in 3 batches")


def test_load_by_pool_and_db_name_writes_that_database(db, admin):
    report = load(admin.pool, pairs_for(10), db_name=db.db_name)
    assert report.pairs == 10
    assert db.Get(b"key:000000009") == next(itertools.islice(pairs_for(10), 9, None))[1]
    assert list(dump(admin.pool, db_name=db.db_name)) == list(pairs_for(10))


def test_malformed_pair_stops_the_load_with_its_index_and_written_prefix(db):
    data = list(pairs_for(25)) + [(b"only-a-key",)] + list(pairs_for(10, b"w"))
    with pytest.raises(BulkLoadError) as info:
        load(db, data, batch_size=10)
    exc = info.value
    assert exc.bad_index == 25 and "input pair #25" in str(exc)
    assert exc.written == 25, "the pairs before the bad one are all written"
    assert list(dump(db)) == list(pairs_for(25))


def test_non_string_key_is_refused_by_index_and_the_batch_is_atomic(db):
    data = list(pairs_for(12)) + [(12, b"int key")] + list(pairs_for(5))
    with pytest.raises(BulkLoadError) as info:
        load(db, data, batch_size=5, workers=1)
    exc = info.value
    assert exc.bad_index == 12 and "not int" in str(exc)
    assert exc.written == 10, "the batch holding the bad pair is written all or nothing"
    assert [k for k, _ in dump(db)] == [k for k, _ in pairs_for(10)]


def test_an_error_raised_by_the_input_leaves_exactly_the_pairs_read_before_it(db):
    def source():
        yield from pairs_for(7)
        raise ValueError("line 8: bad record")

    with pytest.raises(BulkLoadError) as info:
        load(db, source(), batch_size=3)
    assert info.value.written == 7 and isinstance(info.value.__cause__, ValueError)
    assert list(dump(db)) == list(pairs_for(7))


def test_skip_beyond_the_input_writes_nothing(db):
    report = load(db, pairs_for(5), skip=10)
    assert (report.skipped, report.pairs, report.batches) == (5, 0, 0)
    assert list(dump(db)) == []


@pytest.mark.parametrize("kwargs, exc_type", [
    ({"batch_size": 0}, ValueError), ({"batch_size": 1.5}, TypeError),
    ({"workers": 0}, ValueError), ({"skip": -1}, ValueError), ({"retry": 3}, TypeError),
    ({"progress": 5}, TypeError), ({"timeout": 0}, ValueError),
])
def test_load_validates_its_arguments_before_writing(db, kwargs, exc_type):
    with pytest.raises(exc_type):
        load(db, pairs_for(3), **kwargs)
    assert list(dump(db)) == []


def test_load_and_dump_refuse_what_is_not_a_client_or_pool():
    with pytest.raises(TypeError):
        load("127.0.0.1:4141", [])
    with pytest.raises(TypeError):
        dump(object())


def test_load_into_an_unknown_database_fails_at_once_saying_nothing_was_written(admin):
    with pytest.raises(BulkLoadError) as info:
        load(admin, pairs_for(3), db_name="no_such_db_here")
    assert info.value.written == 0 and "could not start" in str(info.value)


# ------------------------------------------------------------------------ dump

def test_dump_of_a_range_equals_the_loaded_data_in_order(db):
    n = 25_000
    load(db, pairs_for(n), batch_size=3_000)
    expected = list(pairs_for(n))
    assert list(dump(db, page_size=997)) == expected
    lo, hi = 1_234, 20_001
    assert list(dump(db, b"key:%09d" % lo, b"key:%09d" % hi, page_size=1_000)) \
        == expected[lo:hi + 1]
    assert list(dump(db, prefix=b"key:0000123", page_size=3)) \
        == [p for p in expected if p[0].startswith(b"key:0000123")]
    assert list(dump(db, b"zzz")) == []


def test_dump_is_lazy_and_pages(db):
    load(db, pairs_for(5_000))
    it = dump(db, page_size=100)
    first = list(itertools.islice(it, 150))
    assert first == list(itertools.islice(pairs_for(5_000), 150))
    assert sum(1 for _ in it) == 5_000 - 150


def test_dump_validates_page_size(db):
    with pytest.raises(ValueError):
        dump(db, page_size=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_bulk_load_in_a_forked_child_writes_through_the_childs_own_context(server):
    keys = [b"review:fork:%02d" % i for i in range(20)]
    with Elevator(endpoint=server.endpoint, timeout=3.0) as e:
        e.Put(b"review:fork:parent", b"p")  # the parent's pool and context are in use
        def child() -> dict:
            report = bulk.load(e, [(k, k + b"=v") for k in keys], timeout=3.0)
            return {"pairs": report.pairs}

        report, code = run_forked(child, timeout=30.0)
        assert report == {"pairs": len(keys)}
        assert code == 0
        assert e.MGet(keys) == [k + b"=v" for k in keys]
        assert e.Get(b"review:fork:parent") == b"p"  # the parent's pool still works
