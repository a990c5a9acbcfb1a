"""CallTracer: each client call as an OpenTelemetry span of kind CLIENT, following the
semantic conventions for database client spans (``db.system.name``, ``db.operation.name``,
``db.namespace``, ``server.address``/``server.port``, ``db.operation.batch.size``,
``error.type``), with a ``retry`` event per retry and ``elevator.coalesced`` on a call
answered by a merged request.

Nothing of OpenTelemetry is imported unless a pool traces (:func:`tracer_for`): a pool that
does not trace has no CallTracer, and its clients pay nothing per call.

The span logic is written once, in :class:`CallSpan` (a context manager that makes the span
current while it runs): :meth:`CallTracer.traced` drives it around a function,
:meth:`CallTracer.iterate` around each step of an iterator, and an asynchronous client
would drive it around an ``await`` (``with tracer.span(...): return await ...``: the current
span is a context variable, so each task sees its own).
"""
from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple, TypeVar, Union

from . import errors

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["CallTracer", "CallSpan", "tracer_for", "server_of"]

T = TypeVar("T")

#: what a call's span says: its command, its database (None: a server command) and
#: its number of keys or operations (None: one)
Described = Tuple[str, Optional[str], Optional[int]]

SYSTEM = "elevator"
#: the exceptions that are an answer, not a failure: ElevatorKeyError is the API's "not
#: found" (the redis instrumentations do not mark a nil GET as an error either)
NOT_FAILURES = (KeyError,)
_END = object()


def tracer_for(tracer_provider: Optional["TracerProvider"],
               endpoint: str) -> Optional["CallTracer"]:
    """The CallTracer of a pool to ``endpoint``, or None when its calls are not traced:
    ``tracer_provider`` None and the program never imported OpenTelemetry, or its global
    tracer provider is the default one (nothing configured) or a no-op one; or
    ``tracer_provider`` is itself a no-op provider."""
    if tracer_provider is None:
        if "opentelemetry.trace" not in sys.modules:
            return None  # no program configures a provider without importing it
        from opentelemetry import trace
        tracer_provider = trace.get_tracer_provider()
    elif not callable(getattr(tracer_provider, "get_tracer", None)):
        raise TypeError("tracer_provider must be an OpenTelemetry TracerProvider, not "
                        f"{type(tracer_provider).__name__}")
    from opentelemetry import trace
    if isinstance(tracer_provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return CallTracer(tracer_provider, endpoint)


def server_of(endpoint: str) -> Tuple[str, Optional[int]]:
    """``server.address`` and ``server.port`` of a ZeroMQ URL (an ipc:// path, no port)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return rest, None
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception class's qualified name (a builtin's bare name)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class CallTracer:
    """Starts the spans of one pool's calls (``endpoint``: the server they name)."""

    def __init__(self, tracer_provider: "TracerProvider", endpoint: str) -> None:
        from opentelemetry import context, trace

        from . import __version__
        self._tracer = tracer_provider.get_tracer("pyelevator_pool", __version__)
        self._kind = trace.SpanKind.CLIENT
        self._in_context = trace.set_span_in_context
        self._current = trace.get_current_span
        self._attach = context.attach
        self._detach = context.detach
        self._error = trace.Status(trace.StatusCode.ERROR)
        address, port = server_of(endpoint)
        self._base: Dict[str, Union[str, int]] = {"db.system.name": SYSTEM,
                                                  "server.address": address}
        if port is not None:
            self._base["server.port"] = port
        #: the span name's target of a command with no database (the conventions' fallback)
        self._server = address if port is None else f"{address}:{port}"

    def start(self, operation: str, namespace: Optional[str],
              batch_size: Optional[int] = None) -> "Span":
        """A started span for one call of ``operation`` (a wire command) on database
        ``namespace``; ``batch_size``: its keys or operations (recorded from 2 on)."""
        attributes = dict(self._base)
        attributes["db.operation.name"] = operation
        if namespace is not None:
            attributes["db.namespace"] = namespace
        if batch_size is not None and batch_size >= 2:
            attributes["db.operation.batch.size"] = batch_size
        return self._tracer.start_span(f"{operation} {namespace or self._server}",
                                       kind=self._kind, attributes=attributes)

    def span(self, operation: str, namespace: Optional[str],
             batch_size: Optional[int] = None) -> "CallSpan":
        """A context manager: a span for one call, current inside the block."""
        return CallSpan(self, self.start(operation, namespace, batch_size))

    def finish(self, span: "Span", exc: Optional[BaseException]) -> None:
        """End ``span``, marked as failed by ``exc`` (unless it is an answer: NOT_FAILURES)."""
        if exc is not None:
            if isinstance(exc, errors.ServerError) and exc.code is not None:
                code = exc.code
                span.set_attribute("db.response.status_code", errors.ErrorCode(code).name
                                   if code in errors.ErrorCode._value2member_map_ else str(code))
            if not isinstance(exc, NOT_FAILURES):
                span.set_attribute("error.type", error_type(exc))
                span.record_exception(exc)
                span.set_status(self._error.status_code, str(exc))
        span.end()

    def enter(self, span: "Span") -> object:
        """Make ``span`` current; returns the token :meth:`leave` takes."""
        return self._attach(self._in_context(span))

    def leave(self, token: object) -> None:
        self._detach(token)  # type: ignore[arg-type]

    def traced(self, fn: Callable[..., T], describe: Callable[..., Described]
               ) -> Callable[..., T]:
        """``fn`` with each call a span; ``describe`` takes the call's arguments."""
        span = self.span

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> T:
            with span(*describe(*args, **kwargs)):
                return fn(*args, **kwargs)
        return call

    def iterate(self, steps: Iterator[T], operation: str, namespace: Optional[str]
                ) -> Iterator[T]:
        """``steps`` as one span, from the first step to the end of the iteration
        (exhausted, closed or failed); current only while a step is computed, never
        while the consumer runs."""
        span = self.start(operation, namespace)
        failure: Optional[BaseException] = None
        try:
            while True:
                token = self.enter(span)
                try:
                    step = next(steps, _END)
                finally:
                    self.leave(token)
                if step is _END:
                    return
                yield step  # type: ignore[misc]
        except GeneratorExit:
            raise  # the consumer stopped early: not a failure
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.finish(span, failure)

    # ------------------------------------------------ events on the current span

    def retried(self, attempt: int, cause: Optional[BaseException], wait: float) -> None:
        """A ``retry`` event on the current span: attempt ``attempt`` failed by ``cause``,
        the next one follows in ``wait`` seconds."""
        span = self._current()
        if span.is_recording():
            attributes: Dict[str, Union[str, int, float]] = {
                "elevator.retry.attempt": attempt, "elevator.retry.wait": wait}
            if cause is not None:
                attributes["exception.type"] = error_type(cause)
                attributes["exception.message"] = str(cause)
            span.add_event("retry", attributes)

    def coalesced(self, leader: bool) -> None:
        """Mark the current call as answered by a merged request (``leader``: this call's
        thread sent it, for every member)."""
        span = self._current()
        if span.is_recording():
            span.set_attribute("elevator.coalesced", True)
            span.set_attribute("elevator.coalesced.leader", leader)


class CallSpan:
    """One call's span, current inside a ``with`` block, ended by its end (failed when
    the block raised)."""

    __slots__ = ("_tracer", "span", "_token")

    def __init__(self, tracer: CallTracer, span: "Span") -> None:
        self._tracer = tracer
        self.span = span
        self._token: object = None

    def __enter__(self) -> "Span":
        self._token = self._tracer.enter(self.span)
        return self.span

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self._tracer.leave(self._token)
        self._tracer.finish(self.span, exc)
