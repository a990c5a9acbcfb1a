"""The span logic (pyelevator_pool.tracing) without a server: where an endpoint points,
how an error is named, a span's name and attributes for an ipc:// endpoint, a failure's
marks, an iteration's one span."""
from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from pyelevator_pool import errors
from pyelevator_pool.tracing import CallTracer, error_type, server_of


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp://127.0.0.1:4141", ("127.0.0.1", 4141)),
    ("tcp://db.internal:80", ("db.internal", 80)),
    ("tcp://[::1]:4141", ("::1", 4141)),
    ("ipc:///run/elevator.sock", ("/run/elevator.sock", None)),
    ("inproc://x", ("x", None)),
])
def test_server_address_and_port_of_an_endpoint(endpoint, expected):
    assert server_of(endpoint) == expected


def test_error_type_is_the_qualified_class_name():
    assert error_type(errors.ElevatorTimeout("t")) == "pyelevator_pool.errors.ElevatorTimeout"
    assert error_type(ValueError("v")) == "ValueError"


@pytest.fixture
def recorded():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_an_ipc_server_command_is_named_by_the_socket_path(recorded):
    provider, exporter = recorded
    tracer = CallTracer(provider, "ipc:///tmp/e.sock")
    ping = tracer.traced(lambda: True, lambda: ("PING", None, None))
    assert ping() is True
    (span,) = exporter.get_finished_spans()
    assert span.name == "PING /tmp/e.sock"
    assert dict(span.attributes) == {"db.system.name": "elevator", "db.operation.name": "PING",
                                     "server.address": "/tmp/e.sock"}


def test_a_failure_marks_its_span_and_is_raised_as_it_is(recorded):
    provider, exporter = recorded
    tracer = CallTracer(provider, "tcp://127.0.0.1:4141")
    boom = errors.ElevatorTimeout("no reply", request_sent=True)

    def fail() -> None:
        raise boom

    with pytest.raises(errors.ElevatorTimeout) as info:
        tracer.traced(fail, lambda: ("PUT", "db", None))()
    assert info.value is boom
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "pyelevator_pool.errors.ElevatorTimeout"


def test_an_iteration_is_one_span_current_only_while_a_step_runs(recorded):
    provider, exporter = recorded
    tracer = CallTracer(provider, "tcp://127.0.0.1:4141")
    inside = []

    def steps():
        for i in range(3):
            inside.append(trace.get_current_span().get_span_context().span_id)
            yield [i]

    it = tracer.iterate(steps(), "SLICE", "db")
    seen = []
    for _ in it:
        seen.append(trace.get_current_span().get_span_context().span_id)  # the consumer's: none
    (span,) = exporter.get_finished_spans()
    assert inside == [span.context.span_id] * 3
    assert seen == [0] * 3
    assert span.status.status_code is StatusCode.UNSET
