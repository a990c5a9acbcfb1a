"""OpenTelemetry metrics of a pool: its :meth:`~pyelevator_pool.ElevatorPool.stats` as
observable instruments, read when the meter provider's reader collects (never per call).

>>> from pyelevator_pool.otel import instrument_pool
>>> instrument_pool(pool)                      # the global meter provider
'tcp://127.0.0.1:4141'

The instruments follow the semantic conventions for database client connection metrics
(``db.client.connection.count`` with ``db.client.connection.state`` idle or used,
``db.client.connection.max``, ``db.client.connection.pending_requests``,
``db.client.connection.timeouts``), each observation with the pool's
``db.client.connection.pool.name``; the other counters are ``elevator.client.*``
(:data:`METRICS`). The spans of calls are :mod:`pyelevator_pool.tracing`'s.
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

from .pool import ElevatorPool, PoolStats

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

__all__ = ["instrument_pool", "METRICS", "POOL_NAME"]

POOL_NAME = "db.client.connection.pool.name"
_STATE = "db.client.connection.state"

Values = Callable[[PoolStats], List[Tuple[float, Dict[str, str]]]]


def _stat(key: str) -> Values:
    """The values of an instrument that is one ``stats()`` figure, with no attributes."""
    return lambda s: [(cast(Dict[str, float], s)[key], {})]


#: instrument -> (kind, unit, description, its values and extra attributes from stats())
METRICS: Dict[str, Tuple[str, str, str, Values]] = {
    "db.client.connection.count": (
        "updown", "{connection}", "Open sockets, by state",
        lambda s: [(s["idle"], {_STATE: "idle"}), (s["in_use"], {_STATE: "used"})]),
    "db.client.connection.max": (
        "updown", "{connection}", "Most sockets the pool opens (max_size)",
        _stat("max_size")),
    "db.client.connection.pending_requests": (
        "updown", "{request}", "Threads waiting for a socket",
        _stat("waiting")),
    "db.client.connection.timeouts": (
        "counter", "{timeout}", "Checkouts that timed out (PoolTimeout)",
        _stat("checkout_timeouts")),
    "elevator.client.connection.checkouts": (
        "counter", "{checkout}", "Sockets checked out", _stat("checkouts")),
    "elevator.client.connection.wait_time": (
        "counter", "s", "Time spent waiting for a socket, summed",
        _stat("wait_time_total")),
    "elevator.client.connection.replaced": (
        "counter", "{connection}", "Sockets closed as unusable and replaced",
        _stat("replaced")),
    "elevator.client.connection.health_checks": (
        "counter", "{check}", "PINGs of idle sockets before reuse",
        _stat("health_checks")),
    "elevator.client.timeouts": (
        "counter", "{call}", "Calls that got no reply in time", _stat("timeouts")),
    "elevator.client.server_timeouts": (
        "counter", "{call}", "Calls the server answered TIMEOUT (not started, nothing done)",
        _stat("server_timeouts")),
    "elevator.client.retries": (
        "counter", "{retry}", "Requests sent again after a transport failure",
        _stat("retries")),
    "elevator.client.stale_replies": (
        "counter", "{reply}", "Late replies recognised by id and dropped",
        _stat("stale_replies")),
    "elevator.client.merged_calls": (
        "counter", "{call}", "Calls answered by a merged request",
        _stat("merged_calls")),
    "elevator.client.merged_requests": (
        "counter", "{request}", "Merged requests sent", _stat("merged_requests")),
    "elevator.client.queued": (
        "updown", "{call}", "Calls waiting now to be merged", _stat("queued")),
    "elevator.client.iterations": (
        "updown", "{iteration}", "RangeIter streams holding a socket now",
        _stat("iterations")),
    "elevator.client.iterations_opened": (
        "counter", "{iteration}", "RangeIter streams opened",
        _stat("iterations_opened")),
}


class _Pools:
    """The pools observed through one meter provider: its instruments are made once, and
    each callback observes every pool still open."""

    def __init__(self, meter: "Meter") -> None:
        from opentelemetry.metrics import Observation
        self._observation = Observation
        self._lock = threading.Lock()
        self._pools: Dict[str, "weakref.ref[ElevatorPool]"] = {}
        makers = {"counter": meter.create_observable_counter,
                  "updown": meter.create_observable_up_down_counter}
        for name, (kind, unit, description, values) in METRICS.items():
            makers[kind](name, callbacks=[self._callback(values)], unit=unit,
                         description=description)

    def add(self, pool: ElevatorPool, name: Optional[str]) -> str:
        with self._lock:
            for known, ref in self._pools.items():
                if ref() is pool:
                    return known  # already observed: once is enough
            if name is None:
                name, n = pool.endpoint, 1
                while name in self._pools:  # two pools to one server: one series each
                    n += 1
                    name = f"{pool.endpoint}#{n}"
            elif name in self._pools:
                raise ValueError(f"a pool named {name!r} is already instrumented")
            self._pools[name] = weakref.ref(pool)
            return name

    def _live(self) -> List[Tuple[str, PoolStats]]:
        with self._lock:
            pools = [(name, ref()) for name, ref in self._pools.items()]
        out = []
        for name, pool in pools:
            stats = None if pool is None else pool.stats()
            if stats is None or stats["closed"]:
                with self._lock:  # a closed or collected pool's series end
                    self._pools.pop(name, None)
                continue
            out.append((name, stats))
        return out

    def _callback(self, values: Callable[[PoolStats], List[Tuple[float, Dict[str, str]]]]
                  ) -> Callable[["CallbackOptions"], Iterable["Observation"]]:
        def observe(options: "CallbackOptions") -> Iterable["Observation"]:
            return [self._observation(value, {POOL_NAME: name, **extra})
                    for name, stats in self._live() for value, extra in values(stats)]
        return observe


_by_provider: "weakref.WeakKeyDictionary[Any, _Pools]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def instrument_pool(pool: ElevatorPool, meter_provider: Optional["MeterProvider"] = None, *,
                    name: Optional[str] = None) -> str:
    """Report ``pool.stats()`` as OpenTelemetry metrics through ``meter_provider`` (default
    the global one, as it is when this is called) until the pool is closed; returns the
    pool's ``db.client.connection.pool.name``: ``name``, else its endpoint (``#2``... for
    a second pool to one server). Instrumenting a pool twice does nothing more.

    Raises ImportError without ``opentelemetry-api``, TypeError for a ``pool`` that is
    not an ElevatorPool or a ``meter_provider`` that is not a MeterProvider, ValueError
    for a ``name`` that is empty or already taken."""
    if not isinstance(pool, ElevatorPool):
        raise TypeError(f"pool must be an ElevatorPool, not {type(pool).__name__}")
    if name is not None and (not isinstance(name, str) or not name):
        raise (TypeError if not isinstance(name, str) else ValueError)(
            "name must be a non-empty str")
    try:
        from opentelemetry import metrics
    except ImportError:
        raise ImportError("pool metrics need OpenTelemetry: "
                          "pip install 'pyelevator_pool[otel]'") from None
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    elif not callable(getattr(meter_provider, "get_meter", None)):
        raise TypeError("meter_provider must be an OpenTelemetry MeterProvider, not "
                        f"{type(meter_provider).__name__}")
    from . import __version__
    with _registry_lock:
        pools = _by_provider.get(meter_provider)
        if pools is None:
            pools = _by_provider[meter_provider] = _Pools(
                meter_provider.get_meter("pyelevator_pool", __version__))
    return pools.add(pool, name)
