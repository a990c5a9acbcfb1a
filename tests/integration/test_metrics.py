"""Prometheus metrics (``--metrics-port``): a real server scraped over HTTP on loopback."""
from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from pyelevator_pool import Elevator, __version__
from pyelevator_pool.errors import ElevatorKeyError
from pyelevator_pool.testing import ServerProcess
from scrape import free_port, scrape, scrape_until, value

DB = "metered"


def _start(tmp_path, *args: str, attempts: int = 3) -> ServerProcess:
    """A server with metrics on a free port (another free one if that was taken meanwhile)."""
    for attempt in range(attempts):
        data = tmp_path / f"data{attempt}"
        data.mkdir()
        port = free_port()
        srv = ServerProcess(str(data), args=["--metrics-port", str(port), *args])
        srv.metrics_port = port  # type: ignore[attr-defined]
        try:
            return srv.start()
        except RuntimeError as exc:
            srv.stop()
            if "cannot serve metrics" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    srv = _start(tmp_path_factory.mktemp("metrics"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(metered):
    return f"http://127.0.0.1:{metered.metrics_port}/metrics"


@pytest.fixture(scope="module")
def client(metered):
    admin = Elevator(endpoint=metered.endpoint, coalesce=False)
    admin.createdb(DB)
    c = Elevator(DB, endpoint=metered.endpoint, coalesce=False)  # one GET per Get
    yield c
    c.close()
    admin.close()


def test_counters_histograms_and_databases_match_what_was_done(client, url):
    before, _ = scrape(url)
    puts, gets = 20, 30
    for i in range(puts):
        client.Put(f"k{i:02}", "v" * 100)
    for i in range(gets):
        assert client.Get(f"k{i % puts:02}") == b"v" * 100
    with pytest.raises(ElevatorKeyError):
        client.Get("absent")
    assert len(client.Range("k00", "k04")) == 5  # run by a worker: counted too
    after, types = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("elevator_requests_total", command="PUT", status="ok") == puts
    assert delta("elevator_requests_total", command="GET", status="ok") == gets
    assert delta("elevator_requests_total", command="GET", status="KEY") == 1
    assert delta("elevator_requests_total", command="RANGE", status="ok") == 1
    assert types["elevator_requests"] == "counter"
    assert types["elevator_request_duration_seconds"] == "histogram"

    # One scrape's histogram counts exactly the requests its counter counts.
    get_total = sum(v for (name, labels), v in after.items()
                    if name == "elevator_requests_total" and ("command", "GET") in labels)
    assert value(after, "elevator_request_duration_seconds_count", command="GET") == get_total
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                     if name == "elevator_request_duration_seconds_bucket"
                     and ("command", "GET") in labels)
    assert buckets[-1] == (float("inf"), get_total)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert value(after, "elevator_request_duration_seconds_sum", command="GET") > 0

    assert delta("elevator_received_bytes_total") >= puts * 100
    assert delta("elevator_sent_bytes_total") >= gets * 100
    assert value(after, "elevator_db_size_bytes", db=DB) > 0
    assert value(after, "elevator_db_mounted", db=DB) == 1
    assert value(after, "elevator_db_mounted", db="default") == 1
    assert value(after, "elevator_build_info", version=__version__) == 1
    assert value(after, "elevator_uptime_seconds") > 0


def test_a_second_scrape_has_grown_by_what_was_done_between(client, url):
    client.Put("again", "x")
    first, _ = scrape(url)
    for _ in range(7):
        client.Get("again")
    second, _ = scrape(url)
    for name, labels in (("elevator_requests_total", {"command": "GET", "status": "ok"}),
                         ("elevator_request_duration_seconds_count", {"command": "GET"})):
        assert value(second, name, **labels) - value(first, name, **labels) == 7
    assert value(second, "elevator_uptime_seconds") > value(first, "elevator_uptime_seconds")


def test_connections_and_queue_gauges_are_published(client, url):
    client.Ping()
    samples = scrape_until(url, lambda s: value(s, "elevator_connections") >= 1)
    assert samples is not None, "no open connection was ever reported"
    assert value(samples, "elevator_connections_accepted_total") >= \
        value(samples, "elevator_connections")
    for gauge in ("elevator_heavy_requests_waiting", "elevator_heavy_requests_running",
                  "elevator_open_streams", "elevator_backlogged_clients"):
        assert (gauge, ()) in samples and samples[(gauge, ())] >= 0


def test_metrics_bind_listens_there_only_and_the_port_is_freed_at_stop(tmp_path):
    # Both are loopback addresses (127.0.0.0/8); the server itself stays on 127.0.0.1.
    srv = _start(tmp_path, "--metrics-bind", "127.0.0.2")
    port = srv.metrics_port  # type: ignore[attr-defined]
    try:
        samples, _ = scrape(f"http://127.0.0.2:{port}/metrics")
        assert value(samples, "elevator_db_mounted", db="default") == 1
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        code = srv.terminate()
        srv.stop()
    assert code == 0  # the metrics thread did not hold the stop up
    with socket.socket() as s:
        # REUSEADDR: the scrape's closed connection may sit in TIME_WAIT; a listener may not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.2", port))
        s.listen()


def _server(*args: str, prelude: str = "pass") -> subprocess.CompletedProcess:
    code = (f"import sys; {prelude}; from pyelevator_pool.server.__main__ import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--metrics-port", "70000"], "metrics_port must be <= 65535, not 70000"),
    (["--metrics-port", "-1"], "metrics_port must be >= 0, not -1"),
    (["--metrics-port", "x"], "metrics_port must be an integer, not 'x'"),
    (["--metrics-bind", "127.0.0.1"], "--metrics-bind needs --metrics-port PORT"),
])
def test_bad_metrics_flags_are_refused_with_a_clear_message(tmp_path, args, message):
    proc = _server("--data-dir", str(tmp_path), "--port", "0", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_a_metrics_port_in_use_stops_the_start_with_the_reason(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _server("--data-dir", str(tmp_path), "--port", "0", "--metrics-port", str(port))
    assert proc.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr


BLOCK = "sys.modules['prometheus_client'] = None"  # its import now raises ImportError


def test_without_prometheus_client_metrics_are_refused_with_how_to_install(tmp_path):
    proc = _server("--data-dir", str(tmp_path), "--port", "0", "--metrics-port", "9",
                   prelude=BLOCK)
    assert proc.returncode == 2
    assert "prometheus_client" in proc.stderr
    assert "pip install 'pyelevator_pool[metrics]'" in proc.stderr


def test_the_server_needs_prometheus_client_only_for_metrics():
    code = (f"import sys; {BLOCK}; import pyelevator_pool.server.__main__, "
            "pyelevator_pool.server.core as core, pyelevator_pool.server.metrics; "
            "core.Server(core.Config(data_dir=sys.argv[1])); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, "unused-dir"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_scrapes_during_traffic_are_consistent_and_never_go_down(client, url):
    """Each scrape copies the counters at one instant: a histogram's count is its
    counter's total, and nothing shrinks from one scrape to the next."""
    import threading
    import time

    scrapes = []
    stop = threading.Event()

    def scraper() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and len(scrapes) < 100 and time.monotonic() < deadline:
            scrapes.append(scrape(url)[0])

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        for i in range(300):
            client.Put(f"busy{i % 10}", "v")
            if len(scrapes) >= 5 or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        thread.join(60)
    scrapes.append(scrape(url)[0])
    assert len(scrapes) >= 2
    previous = -1.0
    for samples in scrapes:
        total = value(samples, "elevator_requests_total", command="PUT", status="ok")
        assert value(samples, "elevator_request_duration_seconds_count", command="PUT") == total
        assert total >= previous
        previous = total


def test_worker_and_inline_runs_of_heavy_requests_are_counted(tmp_path):
    srv = _start(tmp_path, "--workers", "0")  # heavy requests then run on the loop itself
    try:
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"  # type: ignore[attr-defined]
        with Elevator(endpoint=srv.endpoint, coalesce=False) as c:
            c.Put("a", "1")
            before, _ = scrape(url)
            assert c.Range("a", "a") == [[b"a", b"1"]]
            after, _ = scrape(url)
        labels = {"command": "RANGE", "status": "ok"}
        assert value(after, "elevator_requests_total", **labels) - \
            value(before, "elevator_requests_total", **labels) == 1
        assert value(after, "elevator_sent_bytes_total") > value(before, "elevator_sent_bytes_total")
    finally:
        srv.stop()
