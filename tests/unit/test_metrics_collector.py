"""The metrics collector and its buckets, on a Stats fed by hand (no server, no HTTP)."""
from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pyelevator_pool.errors import ErrorCode
from pyelevator_pool.server.metrics import (DatabaseFigures, FiguresHandoff, LoopFigures,
                                            MetricsServer, ServerCollector, disk_size,
                                            status_label)
from pyelevator_pool.server.stats import Stats, cumulative_buckets


def _samples(collector: ServerCollector) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _collector(stats: Stats, tmp_path, **overrides) -> ServerCollector:
    """A collector whose loop figures are the stats' at each collection, as the loop copies them."""
    kwargs = dict(version="9.9", uptime=lambda: 12.5,
                  loop=lambda: LoopFigures(stats.all_time(), stats.bytes_in, stats.bytes_out,
                                           connections=3, connections_total=7, waiting=2),
                  databases=lambda: [DatabaseFigures("a", str(tmp_path), True),
                                     DatabaseFigures("gone", str(tmp_path / "no"), False)])
    kwargs.update(overrides)
    return ServerCollector(**kwargs)


def test_buckets_are_cumulative_at_octaves_and_exact_at_their_bounds():
    stats = Stats()
    for seconds in (3e-6, 3e-6, 1e-3, 500.0):  # 500 s: beyond the last bound
        stats.record("GET", seconds, now=0)
    counts = stats.all_time()["GET"].counts
    buckets = cumulative_buckets(counts)
    bounds = [b for b, _ in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    assert all(b == pytest.approx(2e-6 * 2 ** k) for k, b in enumerate(bounds[:-1]))
    assert [n for b, n in buckets if b < 3e-6] == [0] * sum(1 for b in bounds if b < 3e-6)
    assert next(n for b, n in buckets if b >= 3e-6) == 2
    assert next(n for b, n in buckets if b >= 1e-3) == 3
    assert [n for b, n in buckets if b < math.inf][-1] == 3  # 500 s only under +Inf
    assert buckets[-1] == (math.inf, 4)
    with pytest.raises(ValueError, match="bucket counts"):
        cumulative_buckets([0, 1])


def test_collector_reports_counters_by_status_and_a_histogram_per_command(tmp_path):
    (tmp_path / "000005.ldb").write_bytes(b"x" * 1234)
    stats = Stats()
    stats.record("GET", 0.001, now=0, size_in=10, size_out=30)
    stats.record("GET", 0.002, now=0, error=int(ErrorCode.KEY))
    stats.record("PUT", 0.003, now=0, error=99)
    s = _samples(_collector(stats, tmp_path))
    assert s[("elevator_requests_total", (("command", "GET"), ("status", "ok")))] == 1
    assert s[("elevator_requests_total", (("command", "GET"), ("status", "KEY")))] == 1
    assert s[("elevator_requests_total", (("command", "PUT"), ("status", "99")))] == 1
    assert s[("elevator_request_duration_seconds_count", (("command", "GET"),))] == 2
    assert s[("elevator_request_duration_seconds_sum", (("command", "GET"),))] == \
        pytest.approx(0.003)
    assert s[("elevator_request_duration_seconds_bucket",
              (("command", "GET"), ("le", "+Inf")))] == 2
    assert s[("elevator_received_bytes_total", ())] == 10
    assert s[("elevator_sent_bytes_total", ())] == 30
    assert s[("elevator_connections", ())] == 3
    assert s[("elevator_connections_accepted_total", ())] == 7
    assert s[("elevator_heavy_requests_waiting", ())] == 2
    assert s[("elevator_uptime_seconds", ())] == 12.5
    assert s[("elevator_build_info", (("version", "9.9"),))] == 1
    assert s[("elevator_db_size_bytes", (("db", "a"),))] == 1234
    assert ("elevator_db_size_bytes", (("db", "gone"),)) not in s  # unreadable: no sample
    assert s[("elevator_db_mounted", (("db", "gone"),))] == 0


def test_a_later_collection_never_goes_down_across_windows(tmp_path):
    stats = Stats(window=1.0)
    stats.record("GET", 0.001, now=0)
    collector = _collector(stats, tmp_path)
    first = _samples(collector)
    stats.record("GET", 0.001, now=10)  # the recent window rotated out twice
    second = _samples(collector)
    key = ("elevator_request_duration_seconds_count", (("command", "GET"),))
    assert (first[key], second[key]) == (1, 2)


def test_status_label_names_known_codes_and_keeps_unknown_numbers():
    assert status_label(int(ErrorCode.TIMEOUT)) == "TIMEOUT"
    assert status_label(-1) == "-1"


def test_disk_size_counts_files_only(tmp_path):
    (tmp_path / "a").write_bytes(b"12345")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"123")
    assert disk_size(str(tmp_path)) == 5
    assert disk_size(str(tmp_path / "missing")) is None


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="version must be a str"):
        ServerCollector(version=1, uptime=lambda: 0.0,  # type: ignore[arg-type]
                        loop=lambda: LoopFigures({}), databases=list)
    with pytest.raises(TypeError, match="loop must be callable"):
        _collector(Stats(), tmp_path, loop=LoopFigures({}))
    collector = _collector(Stats(), tmp_path)
    with pytest.raises(ValueError, match="port must be an int in 1..65535"):
        MetricsServer(collector, "127.0.0.1", 0)
    with pytest.raises(ValueError, match="bind must be a non-empty address"):
        MetricsServer(collector, "", 9141)


def test_handoff_waits_for_the_loop_s_next_copy_and_falls_back_to_the_last():
    import threading
    import time

    handoff = FiguresHandoff(LoopFigures({}, bytes_in=1))
    assert not handoff.wanted()
    # nobody publishes: the last figures after the timeout
    assert handoff.fetch(0.05).bytes_in == 1
    got = []
    scraper = threading.Thread(target=lambda: got.append(handoff.fetch(30.0)))
    scraper.start()
    deadline = time.monotonic() + 30
    while not handoff.wanted() and time.monotonic() < deadline:  # the "loop", polling
        time.sleep(0.005)
    assert handoff.wanted()
    handoff.publish(LoopFigures({}, bytes_in=2))
    scraper.join(30)
    assert [f.bytes_in for f in got] == [2]
    assert not handoff.wanted()
    with pytest.raises(ValueError, match="timeout must be a positive"):
        handoff.fetch(0)
    with pytest.raises(TypeError, match="initial must be LoopFigures"):
        FiguresHandoff(None)  # type: ignore[arg-type]
