"""OpenTelemetry against the real server: each call a CLIENT span with the database
conventions' attributes (the SDK's in-memory exporter, a provider passed explicitly), retries
as span events, merged calls each with their own span, pool metrics equal to stats(); the
global provider and a program without OpenTelemetry in subprocesses (the global provider
can be set once per process, and these must not see this process's imports)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Dict, Iterator, List

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from paths import ROOT
from pyelevator_pool import NO_RETRY, Elevator, ElevatorPool, RetryPolicy, errors
from pyelevator_pool.otel import METRICS, POOL_NAME, instrument_pool
from pyelevator_pool.pool import ALONE_IN_FLIGHT
from pyelevator_pool.protocol import PING
from pyelevator_pool.tracing import server_of
from rawclient import wait_until

FAR = 60.0


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider(exporter) -> Iterator[TracerProvider]:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


@pytest.fixture
def E(server, provider, exporter, request) -> Iterator[Elevator]:
    """A traced client on a fresh database of the test's own; no span recorded yet."""
    name = "otel_" + request.node.name[:60].replace("[", "_").replace("]", "")
    with Elevator(endpoint=server.endpoint, tracer_provider=provider) as admin:
        if name in admin.listdb():
            admin.dropdb(name)
        admin.createdb(name)
        client = Elevator(name, endpoint=server.endpoint, tracer_provider=provider)
    exporter.clear()
    yield client
    client.close()
    with Elevator(endpoint=server.endpoint) as admin:
        admin.dropdb(name)


def spans(exporter: InMemorySpanExporter) -> List[ReadableSpan]:
    return list(exporter.get_finished_spans())


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one span recorded since the last clear, and clears."""
    got = spans(exporter)
    exporter.clear()
    assert len(got) == 1, [s.name for s in got]
    return got[0]


def expect(span: ReadableSpan, client: Elevator, op: str, *, db: Any = True,
           batch: Any = None) -> None:
    """``span`` is a successful CLIENT span of ``op`` with the conventions' attributes."""
    host, port = server_of(client.endpoint)
    attrs = dict(span.attributes or {})
    namespace = client.db_name if db is True else db
    assert span.kind is SpanKind.CLIENT
    assert span.name == f"{op} {namespace if namespace else f'{host}:{port}'}"
    assert attrs.pop("db.system.name") == "elevator"
    assert attrs.pop("db.operation.name") == op
    assert attrs.pop("server.address") == host == "127.0.0.1"
    assert attrs.pop("server.port") == port
    assert attrs.pop("db.namespace", None) == namespace
    assert attrs.pop("db.operation.batch.size", None) == batch
    assert attrs == {}, attrs  # nothing else: no error.type, no coalesced mark
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None and span.end_time >= span.start_time


def test_every_data_call_is_a_client_span_with_the_conventions_attributes(E, exporter):
    E.Put("a", "1")
    expect(only(exporter), E, "PUT")
    assert E.Get("a") == b"1"
    expect(only(exporter), E, "GET")
    assert E.MGet(["a", "b", "c"]) == [b"1", None, None]
    expect(only(exporter), E, "MGET", batch=3)
    E.MGet(["a"])
    expect(only(exporter), E, "MGET")  # one key: no batch size (the conventions: from 2)
    assert E.Exists("a") is True
    expect(only(exporter), E, "EXISTS")
    batch = E.WriteBatch()
    batch.Put("b", "2")
    batch.Put("c", "3")
    batch.Delete("a")
    batch.Write()
    expect(only(exporter), E, "BATCH", batch=3)
    assert E.Range("b", "c") == [[b"b", b"2"], [b"c", b"3"]]
    expect(only(exporter), E, "RANGE")
    assert E.Range("b", 1) == [[b"b", b"2"]]  # an int limit: sent as a SLICE, one span
    expect(only(exporter), E, "SLICE")
    assert E.Slice("b", 2) == [[b"b", b"2"], [b"c", b"3"]]
    expect(only(exporter), E, "SLICE")
    E.Delete("b")
    expect(only(exporter), E, "DELETE")


def test_range_iter_is_one_span_for_the_whole_iteration_of_many_pages(E, exporter):
    with E.WriteBatch() as batch:
        for i in range(10):
            batch.Put(f"k{i}", str(i))
    exporter.clear()
    pages = E.RangeIter(page_size=3)
    assert spans(exporter) == []  # nothing fetched yet
    assert len(list(pages)) == 10  # four pages
    expect(only(exporter), E, "RANGE")  # streamed: one RANGE
    # stopped early, the iteration's span ends then, not as a failure
    it = E.RangeIter(page_size=3)
    next(it)
    del it
    expect(only(exporter), E, "RANGE")  # streamed: one RANGE


def test_server_and_store_commands_are_spans_named_by_their_target(E, exporter):
    assert E.Ping() is True
    expect(only(exporter), E, "PING", db=None)  # no database: "PING host:port"
    assert E.db_name in E.listdb()
    expect(only(exporter), E, "DBLIST", db=None)
    assert "version" in E.info()
    expect(only(exporter), E, "INFO", db=None)
    other = E.db_name + "_other"
    E.createdb(other)
    expect(only(exporter), E, "DBCREATE", db=other)
    E.mount(other)
    expect(only(exporter), E, "DBMOUNT", db=other)
    E.unmount(other)
    expect(only(exporter), E, "DBUMOUNT", db=other)
    E.repairdb(other)
    expect(only(exporter), E, "DBREPAIR", db=other)
    E.repairdb()  # the bound database
    expect(only(exporter), E, "DBREPAIR")
    E.dropdb(other)
    expect(only(exporter), E, "DBDROP", db=other)
    E.connect(E.db_name)
    expect(only(exporter), E, "DBCONNECT")


def test_a_call_inside_the_programs_span_is_its_child(E, exporter, provider):
    with provider.get_tracer("test").start_as_current_span("handler") as parent:
        E.Put("x", "1")
    put, handler = spans(exporter)
    assert handler.name == "handler" and put.name.startswith("PUT ")
    assert put.parent is not None and put.parent.span_id == parent.get_span_context().span_id
    assert put.context.trace_id == parent.get_span_context().trace_id


def test_a_missing_key_is_an_answer_not_an_error_span(E, exporter):
    with pytest.raises(KeyError):
        E.Get("missing")
    span = only(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes
    # the server's answer is still said: its error code
    assert span.attributes["db.response.status_code"] == "KEY"


def test_a_failed_call_has_error_type_and_status_error(E, exporter, server, provider):
    gone = Elevator("no_such_db", endpoint=server.endpoint, tracer_provider=provider,
                    open=False)
    exporter.clear()
    with pytest.raises(errors.DatabaseError) as info:
        gone.Get("k")
    gone.close()
    span = only(exporter)
    assert span.name == "GET no_such_db"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(info.value)
    assert span.attributes["error.type"] == "pyelevator_pool.errors.DatabaseError"
    assert span.attributes["db.response.status_code"] == "DATABASE"
    assert [e.name for e in span.events] == ["exception"]
    # a bad argument, refused before anything is sent, fails its span too
    with pytest.raises(TypeError):
        E.MGet("not a list")  # type: ignore[arg-type]
    span = only(exporter)
    assert span.attributes["error.type"] == "TypeError"
    assert "db.operation.batch.size" not in span.attributes


def test_a_call_to_a_server_that_is_down_fails_its_span(fresh_server, provider, exporter):
    E = Elevator(endpoint=fresh_server.endpoint, tracer_provider=provider, retry=NO_RETRY)
    fresh_server.kill()
    exporter.clear()
    with pytest.raises(errors.TransportError) as info:
        E.Get("k", timeout=1.0)
    E.close()
    span = only(exporter)
    cls = type(info.value)
    assert span.attributes["error.type"] == f"{cls.__module__}.{cls.__qualname__}"
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception" and not any(e.name == "retry" for e in span.events)


def test_a_retried_call_has_a_retry_event_per_retry(fresh_server, provider, exporter):
    E = Elevator(endpoint=fresh_server.endpoint, tracer_provider=provider, heartbeat_interval=0.2,
                 retry=RetryPolicy())
    E.Put("k", "v")
    fresh_server.kill()
    exporter.clear()
    got: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: got.update(value=E.Get("k", timeout=FAR)), daemon=True)
    t.start()
    try:
        assert wait_until(lambda: E.pool.stats()["retries"] >= 2, timeout=FAR)
    finally:
        fresh_server.restart(kill=False)
    t.join(FAR)
    assert not t.is_alive() and got["value"] == b"v"
    retries = E.pool.stats()["retries"]
    E.close()
    span = only(exporter)
    assert span.name.startswith("GET ") and span.status.status_code is StatusCode.UNSET
    events = [e for e in span.events if e.name == "retry"]
    assert len(events) == retries >= 2  # every retry of the pool was this call's
    assert [e.attributes["elevator.retry.attempt"] for e in events] == \
        list(range(1, len(events) + 1))
    for e in events:
        assert e.attributes["exception.type"].startswith("pyelevator_pool.errors.")
        assert e.attributes["exception.message"]
        assert e.attributes["elevator.retry.wait"] >= 0


def test_coalesced_calls_each_have_their_own_span_marked_coalesced(fresh_server, provider,
                                                                   exporter):
    # no heartbeats: a stopped server would miss them (as tests/integration/test_coalesce.py)
    pool = ElevatorPool(fresh_server.endpoint, heartbeat_interval=0, tracer_provider=provider)
    conns = [pool.checkout() for _ in range(ALONE_IN_FLIGHT + 2)]
    for conn in conns:  # handshaken now: a stopped server accepts no new connection
        assert conn.request(PING, [], None, timeout=10.0).datas == [b"PONG"]
    for conn in conns:
        pool.checkin(conn)
    E = Elevator(pool=pool)
    E.Put("a", "1")
    exporter.clear()
    results: Dict[str, Any] = {}
    threads: List[threading.Thread] = []

    def start(name: str, call: Callable[[], Any]) -> None:
        before = pool.stats()["queued"]
        t = threading.Thread(target=lambda: results.update({name: call()}), daemon=True)
        threads.append(t)
        t.start()
        if not name.startswith("alone"):  # queued in order
            assert wait_until(lambda: pool.stats()["queued"] == before + 1, timeout=FAR)

    os.kill(fresh_server.pid, signal.SIGSTOP)
    try:
        for i in range(ALONE_IN_FLIGHT):
            start(f"alone{i}", lambda: E.Get("a"))
        assert wait_until(lambda: pool.stats()["in_use"] >= ALONE_IN_FLIGHT, timeout=FAR)
        start("q1", lambda: E.Get("a"))
        start("q2", lambda: E.MGet(["a", "zz"], fill_cache=True))
        start("q3", lambda: E.Exists("a"))
    finally:
        os.kill(fresh_server.pid, signal.SIGCONT)
    for t in threads:
        t.join(FAR)
        assert not t.is_alive()
    assert results["q1"] == b"1" and results["q2"] == [b"1", None] and results["q3"] is True
    stats = pool.stats()
    pool.close()
    got = spans(exporter)
    assert len(got) == ALONE_IN_FLIGHT + 3  # one per caller, merged or not
    merged = [s for s in got if s.attributes.get("elevator.coalesced")]
    assert len(merged) == stats["merged_calls"] >= 3
    assert sum(bool(s.attributes["elevator.coalesced.leader"]) for s in merged) == \
        stats["merged_requests"]
    # each merged caller's span names its own call, not the merged MGET
    assert {s.attributes["db.operation.name"] for s in merged} <= {"GET", "MGET", "EXISTS"}
    assert "EXISTS" in {s.attributes["db.operation.name"] for s in merged}
    assert all(s.status.status_code is StatusCode.UNSET for s in got)


def _points(reader: InMemoryMetricReader) -> Dict[str, Dict[frozenset, float]]:
    """instrument -> {attributes: value} of one collection, of this package's meter only
    (an SDK may add metrics of its own, such as its collection-duration histogram)."""
    out: Dict[str, Dict[frozenset, float]] = {}
    data = reader.get_metrics_data()
    for rm in (data.resource_metrics if data else []):
        for sm in rm.scope_metrics:
            if sm.scope.name != "pyelevator_pool":
                continue
            for m in sm.metrics:
                out[m.name] = {frozenset(p.attributes.items()): p.value
                               for p in m.data.data_points}
    return out


def test_pool_metrics_are_its_stats(server):
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    pool = ElevatorPool(server.endpoint)
    other = ElevatorPool(server.endpoint)
    try:
        assert instrument_pool(pool, meters) == pool.endpoint
        assert instrument_pool(pool, meters) == pool.endpoint  # once is enough
        assert instrument_pool(other, meters) == pool.endpoint + "#2"
        third = ElevatorPool(server.endpoint)
        with pytest.raises(ValueError, match="already instrumented"):
            instrument_pool(third, meters, name=pool.endpoint)
        third.close()
        E = Elevator(pool=pool)
        for i in range(5):
            E.Put(f"m{i}", "v")
        E.Get("m1")
        for round_ in range(2):  # the values follow the pool, collection after collection
            stats = pool.stats()
            points = _points(reader)
            assert set(points) == set(METRICS)
            for name, (_, _, _, values) in METRICS.items():
                mine = {attrs: v for attrs, v in points[name].items()
                        if (POOL_NAME, pool.endpoint) in attrs}
                want = {frozenset({POOL_NAME: pool.endpoint, **extra}.items()): value
                        for value, extra in values(stats)}
                assert mine == want, name
            assert points["elevator.client.connection.checkouts"][
                frozenset({POOL_NAME: pool.endpoint}.items())] == stats["checkouts"] > 0
            E.MGet(["m1", "m2"])
        pool.close()
        names = {dict(attrs)[POOL_NAME] for attrs in
                 _points(reader).get("db.client.connection.max", {})}
        assert names == {pool.endpoint + "#2"}  # a closed pool's series end
    finally:
        pool.close()
        other.close()
        meters.shutdown()


def test_pool_metrics_arguments_are_checked():
    with pytest.raises(TypeError, match="ElevatorPool"):
        instrument_pool(object())  # type: ignore[arg-type]
    pool = ElevatorPool("127.0.0.1:1")
    try:
        with pytest.raises(TypeError, match="MeterProvider"):
            instrument_pool(pool, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="non-empty"):
            instrument_pool(pool, MeterProvider(), name="")
    finally:
        pool.close()


def _run(code: str, endpoint: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), endpoint], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_global_tracer_provider_traces_pools_made_after_it_is_set(server):
    proc = _run("""
        import sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from pyelevator_pool import Elevator
        before = Elevator(endpoint=sys.argv[1])     # no provider set yet: never traced
        assert before.pool.tracer is None
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        after = Elevator(endpoint=sys.argv[1])
        before.Put("g", "1")
        assert after.Get("g") == b"1"
        print(sorted(s.name for s in exporter.get_finished_spans()))
        """, server.endpoint)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['GET default']"


def test_without_opentelemetry_the_client_works_and_imports_nothing_of_it(server):
    proc = _run("""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        sys.meta_path.insert(0, Refuse())
        from pyelevator_pool import Elevator, WriteBatch
        E = Elevator(endpoint=sys.argv[1])
        assert E.pool.tracer is None
        E.Put("n", "1")
        assert E.Get("n") == b"1" and E.MGet(["n"]) == [b"1"]
        with E.WriteBatch() as b:
            b.Put("n2", "2")
        assert list(E.RangeIter("n", "n2")) == [[b"n", b"1"], [b"n2", b"2"]]
        from pyelevator_pool.otel import instrument_pool
        try:
            instrument_pool(E.pool)
        except ImportError as exc:
            assert "pyelevator_pool[otel]" in str(exc), exc
        else:
            raise AssertionError("instrument_pool without OpenTelemetry")
        E.close()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """, server.endpoint)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_installed_but_not_configured_means_not_traced():
    # This process imported OpenTelemetry and set no global provider (nor may any test).
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    for provider in (None, trace.NoOpTracerProvider()):
        pool = ElevatorPool("127.0.0.1:1", tracer_provider=provider)
        try:
            assert pool.tracer is None
            assert "Get" not in vars(Elevator(pool=pool, open=False))  # the plain method
        finally:
            pool.close()
    with pytest.raises(TypeError, match="TracerProvider"):
        ElevatorPool("127.0.0.1:1", tracer_provider=object())  # type: ignore[arg-type]


def test_the_observability_page_renders_and_names_every_instrument_and_traced_call():
    import docutils.core

    from pyelevator_pool.client import _SPANS
    text = (ROOT / "docs" / "observability.rst").read_text(encoding="utf-8")
    docutils.core.publish_doctree(text, settings_overrides={
        "halt_level": 2, "report_level": 2, "warning_stream": False})
    for name in METRICS:
        assert f"``{name}``" in text, name
    for method in set(_SPANS) - {"_write_batch"} | {"RangeIter", "WriteBatch.Write"}:
        assert f"``{method}``" in text, method


def test_the_tracing_benchmark_runs_each_mode_as_it_says():
    # No speed asserted: each child checks that it traced (or imported OpenTelemetry) as
    # its mode says, and the run fails otherwise.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tracing", "--rounds", "1",
                           "--calls", "20", "--threads", "2", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)["figures"]
    assert set(figures) == {"absent", "no provider", "sdk"}
    for f in figures.values():
        assert f["rounds"] == 1 and f["get_us"] > 0 and f["ops_s"] > 0
