"""Server statistics (pyelevator_pool.server.stats): pure, no socket, no sleep."""

import pytest

from pyelevator_pool.server.stats import LatencyHistogram, Stats


def test_quantiles_within_a_bucket_of_the_truth():
    h = LatencyHistogram()
    for i in range(1, 1001):
        h.add(i * 1e-4)  # 0.1 ms .. 100 ms
    assert h.count == 1000
    assert h.max == pytest.approx(0.1)
    for q, truth in ((0.5, 0.05), (0.9, 0.09), (0.99, 0.099)):
        got = h.quantile(q)
        assert truth <= got <= truth * 1.2, (q, got)


def test_empty_histogram_has_no_quantile_and_bad_arguments_are_refused():
    h = LatencyHistogram()
    assert h.quantile(0.5) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        h.quantile(1.5)
    with pytest.raises(ValueError, match="negative"):
        h.add(-1.0)
    with pytest.raises(ValueError, match="window"):
        Stats(window=0)


def test_memory_is_bounded_by_commands_not_requests():
    h = LatencyHistogram()
    before = len(h.counts)
    for i in range(10000):
        h.add(i * 1e-3)
    h.add(1e9)  # beyond the last bucket
    assert len(h.counts) == before
    assert h.quantile(1.0) == 1e9


def test_counts_failures_by_code_and_bytes():
    s = Stats(window=60, now=0)
    s.record("GET", 0.001, now=1, size_in=10, size_out=20)
    s.record("GET", 0.002, now=2, error=3)
    s.record("PUT", 0.003, now=3, error=3)
    snap = s.snapshot(now=4)
    assert snap["commands"]["GET"]["requests"] == 2
    assert snap["commands"]["GET"]["failures"] == {"3": 1}  # str keys: msgpack maps
    assert snap["commands"]["PUT"]["max"] == pytest.approx(0.003)
    assert (snap["bytes_in"], snap["bytes_out"]) == (10, 20)
    assert s.totals() == (3, 2)


def test_latency_window_forgets_old_requests_but_counts_stay():
    s = Stats(window=10, now=0)
    s.record("GET", 5.0, now=1)
    assert s.snapshot(now=2)["commands"]["GET"]["max"] == 5.0
    s.record("GET", 0.001, now=12)  # rotates: the 5 s request is in the previous window
    assert s.snapshot(now=13)["commands"]["GET"]["max"] == 5.0
    snap = s.snapshot(now=40)  # two windows later, nothing recent
    assert snap["commands"]["GET"]["max"] is None
    assert snap["commands"]["GET"]["p99"] is None
    assert snap["commands"]["GET"]["requests"] == 2
