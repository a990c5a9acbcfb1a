"""ElevatorPool: the pool a client sends through, to one server.

It puts the parts together: a :class:`~pyelevator_pool.slots.SocketPool` that accounts
for the sockets, a :class:`~pyelevator_pool.calls.Caller` that runs one call with its
retries, and the :class:`~pyelevator_pool.facts.ServerFacts` its clients cache. It owns
the ZeroMQ context and the socket factory.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, TypedDict, cast)

import zmq

from . import args as check
from . import errors, urls
from .calls import Caller
from .coalesce import Coalescer
from .connection import Connection, normalize_endpoint
from .facts import ServerFacts
from .protocol import Reply
from .retry import RetryPolicy
from .security import CurveKeys
from .slots import SocketPool
from .streams import PageStream, StreamSlots
from .tracing import CallTracer, tracer_for
from . import pids

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["ElevatorPool", "PoolStats"]

#: merged reads of one database in flight at once: the server reads one while the
#: client sends or answers the other.
READS_IN_FLIGHT = 2
#: requests of one database in flight before callers queue to be merged: up to four
#: threads never wait for each other (merging them was slower than not).
ALONE_IN_FLIGHT = 4


class _Remains:
    """The sockets and the context a pool would leave if it were never closed, closed when
    the garbage collector frees the pool (a :func:`weakref.finalize`). A pool is a
    reference cycle: collected with it, its sockets would still be open when pyzmq's
    ``Context.__del__`` terminates the context, which then waits for them forever. Held
    here, they outlive the pool's collection and are closed first."""

    def __init__(self, context: zmq.Context, owns_context: bool) -> None:
        self.pid = pids.current()
        self.context = context
        self.owns_context = owns_context
        self._lock = threading.Lock()
        self._sockets: List[zmq.Socket] = []

    def add(self, sockets: Sequence[zmq.Socket]) -> None:
        with self._lock:
            self._sockets = [s for s in self._sockets if not s.closed]
            self._sockets.extend(sockets)

    def __call__(self) -> None:
        if pids.current() != self.pid:
            return  # a forked child never touches its parent's sockets
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            if not sock.closed:
                sock.close(0)
        if self.owns_context and not self.context.closed:
            self.context.term()
class PoolStats(TypedDict):
    """What :meth:`ElevatorPool.stats` returns (counters since the pool was made, or since
    a fork in the child)."""

    size: int  #: open sockets
    in_use: int  #: sockets checked out or being opened
    idle: int
    max_size: int
    waiting: int  #: threads waiting for a socket
    checkouts: int
    wait_time_total: float  #: seconds spent waiting for a socket, summed
    timeouts: int  #: calls that got no reply in time
    checkout_timeouts: int
    retries: int
    replaced: int  #: sockets closed as unusable and replaced
    health_checks: int
    stale_replies: int  #: late replies recognised by id and dropped
    server_timeouts: int  #: the server's TIMEOUT answer: not started in time, nothing done
    merged_calls: int  #: calls answered by a merged request
    merged_requests: int  #: the merged requests sent for them
    queued: int  #: calls waiting now to be merged
    iterations: int  #: RangeIter streams holding a socket now
    iterations_opened: int  #: RangeIter streams opened
    closed: bool


class ElevatorPool:
    """A thread-safe pool of sockets to one Elevator server.

    Each thread gets back the socket it used last when that one is free, otherwise
    any free socket, otherwise a new one while fewer than ``max_size`` are open;
    otherwise it waits up to ``checkout_timeout`` and gets :class:`PoolTimeout`.

    :param endpoint: ``"host:port"`` (with ``transport``) or a ZeroMQ URL
        (``"tcp://127.0.0.1:4141"``, ``"ipc:///run/elevator.sock"``).
    :param max_size: most sockets ever open at once. Default 32: more than the
        threads of a typical web or worker process, and each socket is cheap (one
        file descriptor and one TCP connection).
    :param timeout: default deadline of one call in seconds, covering checkout,
        send, receive and every retry. Default 10 s: a 100,000-pair batch or range
        takes well under a second on loopback, and a server restart is ridden out
        by retries, while a hang is still bounded.
    :param checkout_timeout: longest wait for a free socket (also bounded by the call's
        deadline). Default 10 s.
    :param health_check_interval: a socket idle longer than this many seconds is
        checked with PING before it is handed out, and replaced if that fails.
        Default 30 s; 0 checks before every use (slow), None never.
    :param retry: a :class:`RetryPolicy`; default ``RetryPolicy()``.
    :param heartbeat_interval: ZMTP heartbeat period in seconds (a dead peer is noticed
        after three missed ones without a round trip of ours); 0 disables. Default 1 s.
    :param connect_timeout: how long one attempt waits for a connection to take its
        request (the server down or restarting) before it fails as never sent and the
        retry policy decides. Default 0.5 s: a loopback or LAN connect takes well under
        a millisecond, and a policy's ``stop`` is honoured to within this much.
    :param context: a ``zmq.Context`` to use; by default the pool owns one and
        terminates it on :meth:`close`.
    :param security: a callable applied to every new socket before it connects (the
        CURVE options, for instance).
    :param coalesce: the default of this pool's clients (``Elevator(coalesce=)``): while
        one request of a database is in flight, concurrent ``Get``/``Exists``/small
        ``MGet`` calls of other threads wait and go as one MGET, and concurrent
        ``Put``/``Delete`` calls as one BATCH; each call keeps its own deadline, result
        and error. Default True.
    :param curve: a :class:`CurveKeys` (the server's public key and this client's key
        pair) for a server started with ``--curve-secret-key``: traffic is encrypted and
        the server checks this client's key. A refused key raises AuthenticationError
        at the first call, at once (never retried). Not together with ``security``.
    :param tracer_provider: an OpenTelemetry ``TracerProvider``: every call of this pool's
        clients is a span (docs/observability.rst). Default: the global provider, if the
        program imported OpenTelemetry and set one before this pool was made (decided
        once, here: a provider set later traces only the pools made after it).
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "ElevatorPool":
        """A pool configured by an Elevator URL (:mod:`pyelevator_pool.urls`);
        ``options`` override the URL's. The database and client options belong to an
        :class:`Elevator` (``Elevator.from_url``): here they are a ValueError."""
        endpoint, db, pool_options, client_options = urls.parse(url)
        extra = sorted(client_options) + ["database"] * (db is not None)
        if extra:
            raise ValueError(f"{url!r}: {', '.join(extra)}: a pool has no database or "
                             "client options; use Elevator.from_url")
        return cls(endpoint, **{**pool_options, **options})

    def __init__(self, endpoint: str = "127.0.0.1:4141", *, transport: str = "tcp",
                 max_size: int = 32, timeout: float = 10.0, checkout_timeout: float = 10.0,
                 health_check_interval: Optional[float] = 30.0,
                 retry: Optional[RetryPolicy] = None, heartbeat_interval: float = 1.0,
                 connect_timeout: float = 0.5,
                 context: Optional[zmq.Context] = None,
                 security: Optional[Callable[[zmq.Socket], None]] = None,
                 curve: Optional[CurveKeys] = None, coalesce: bool = True,
                 tracer_provider: Optional["TracerProvider"] = None) -> None:
        self.endpoint = normalize_endpoint(endpoint, transport)
        if curve is not None:
            if not isinstance(curve, CurveKeys):
                raise TypeError(f"curve must be a CurveKeys, not {type(curve).__name__}")
            if security is not None:
                raise ValueError("give curve= or security=, not both")
            security = curve
        check.integer("max_size", max_size, minimum=1)
        check.number("timeout", timeout)
        check.number("checkout_timeout", checkout_timeout, inclusive=True)
        if health_check_interval is not None:
            check.number("health_check_interval", health_check_interval, inclusive=True)
        check.number("heartbeat_interval", heartbeat_interval, inclusive=True)
        check.number("connect_timeout", connect_timeout)
        check.boolean("coalesce", coalesce)
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context, not {type(context).__name__}")
        if security is not None and not callable(security):
            raise TypeError("security must be callable (it configures each new socket)")
        self._tracer_provider = tracer_provider
        #: the spans of this pool's calls; None: not traced (tracing.tracer_for)
        self.tracer: Optional[CallTracer] = tracer_for(tracer_provider, self.endpoint)
        self.max_size = max_size
        self.timeout = float(timeout)
        self.checkout_timeout = float(checkout_timeout)
        self.health_check_interval = health_check_interval
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = float(connect_timeout)
        self._security = security
        self._owns_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._watch_remains()
        #: what the clients on this pool cache about the server (uids, limits).
        self.facts = ServerFacts()
        self._slots = SocketPool(
            self._new_connection, name=self.endpoint, max_size=max_size,
            checkout_timeout=self.checkout_timeout,
            health_check_interval=health_check_interval,
            health_check_timeout=min(1.0, self.timeout),
            tally=("stale_replies", "server_timeouts"),
            on_fork=self._after_fork, on_drained=self._terminate_context)
        self._caller = Caller(self._slots, self.facts, retry=retry,
                              connect_timeout=self.connect_timeout, tracer=self.tracer)
        self._streams = StreamSlots(max_size)
        self.coalesce = coalesce
        #: what merges the concurrent calls of the clients that coalesce: reads may have
        #: two requests in flight, writes one, so that they apply in the order queued.
        self.reads = Coalescer(max_alone=ALONE_IN_FLIGHT, max_in_flight=READS_IN_FLIGHT)
        self.writes = Coalescer(max_alone=ALONE_IN_FLIGHT, max_in_flight=1)

    @property
    def retry(self) -> RetryPolicy:
        return self._caller.retry

    @property
    def context(self) -> zmq.Context:
        """The ZeroMQ context of this pool's sockets in this process (a forked child gets
        one of its own); terminated by :meth:`close` when the pool made it."""
        return self._live_context()

    def _watch_remains(self) -> None:
        self._remains = _Remains(self._context, self._owns_context)
        self._finalizer = weakref.finalize(self, self._remains)
        # at exit other (daemon) threads may still be using the sockets: leave them be
        setattr(self._finalizer, "atexit", False)  # older typeshed has no atexit attribute

    def _new_connection(self) -> Connection:
        try:
            conn = Connection(self._context, self.endpoint,
                              heartbeat_interval=self.heartbeat_interval, security=self._security,
                              connect_timeout=self.connect_timeout)
        except zmq.ZMQError as exc:
            raise errors.from_zmq(exc, f"cannot open a socket to {self.endpoint}",
                                  request_sent=False) from exc
        self._remains.add(conn.zmq_sockets)
        return conn

    def _after_fork(self) -> None:
        # The child must never touch the parent's context (pyzmq refuses to from
        # another pid): it gets one of its own, and its own call counters.
        if self._owns_context:
            self._context = zmq.Context()
        else:
            self._context = zmq.Context.instance()
            self._owns_context = False
        self._finalizer.detach()  # the parent's remains are the parent's
        self._watch_remains()
        self.facts = ServerFacts()
        self._caller = Caller(self._slots, self.facts, retry=self.retry,
                              connect_timeout=self.connect_timeout, tracer=self.tracer)
        self._streams = StreamSlots(self.max_size)

    def _live_context(self) -> zmq.Context:
        """This process's context: a fresh one in a forked child, never the parent's."""
        self._slots.check_fork()
        return self._context

    def _terminate_context(self) -> None:
        if self._owns_context and not self._context.closed:
            # Every socket is closed with LINGER=0, so term() does not wait.
            self._context.term()

    # ------------------------------------------------------------------ sockets

    def checkout(self, timeout: Optional[float] = None) -> Connection:
        """A socket for the calling thread's exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default ``checkout_timeout``) seconds for one, the
        health check of an idle socket included.
        Raises PoolTimeout when none became free, PoolClosed after :meth:`close`,
        TypeError/ValueError for a ``timeout`` that is not a number >= 0.
        """
        if timeout is not None:
            check.number("timeout", timeout, inclusive=True)
        conn: Connection = self._slots.checkout(timeout)
        return conn

    def checkin(self, conn: Connection) -> None:
        """Give back a socket from :meth:`checkout`. A tainted one is closed and replaced."""
        self._slots.checkin(conn)

    @contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[Connection]:
        """Pin one socket to the calling thread for a sequence of calls.

        Inside the block every call this thread makes through this pool uses that
        socket (re-entrant). Yields the :class:`Connection`.
        """
        if timeout is not None:
            check.number("timeout", timeout, inclusive=True)
        with self._slots.pin(timeout) as conn:
            yield conn

    # ------------------------------------------------------------------ requests

    def request(self, cmd: str, args: Sequence, uid: Optional[str] = None, *,
                timeout: Optional[float] = None, compression: bool = False,
                idempotent: bool = True, is_write: bool = False, stream: int = 0,
                call_timeout: Optional[float] = None) -> Reply:
        """Send one request on a pooled socket and return its reply, retrying transport
        failures under the pool's :class:`RetryPolicy`. ``stream``: see
        :meth:`Connection.request`.

        ``timeout`` (default the pool's) bounds everything: checkout, send, receive and
        retries. ``idempotent``/``is_write`` tell the policy whether a request whose
        fate is unknown may be sent again. ``call_timeout``: the whole timeout of the
        user's call that this request is the rest of, named in error messages (default
        ``timeout``). A failure reply is returned, not raised.
        Raises ElevatorTimeout, ConnectionError, ProtocolError, PoolTimeout, PoolClosed;
        TypeError/ValueError for a ``timeout`` that is not a number > 0.
        """
        budget = self.timeout if timeout is None else check.number("timeout", timeout)
        if call_timeout is not None:
            check.number("call_timeout", call_timeout)
        return self._caller.request(cmd, args, uid, timeout=budget, compression=compression,
                                    idempotent=idempotent, is_write=is_write, stream=stream,
                                    call_timeout=call_timeout)

    def iterate(self, cmd: str, args: Sequence, uid: Optional[str], *, page: int,
                timeout: float) -> Optional[Tuple[PageStream, Reply]]:
        """A streamed iteration (RANGE with meta ``iter``) on a socket of its own, held
        until it ends or is closed, and its first page; transport failures retried
        within ``timeout`` (which bounds each later page too). None when no socket may be
        had at once: at most half of ``max_size`` are held by iterations."""
        return self._caller.iterate(cmd, args, uid, page=page, timeout=timeout,
                                    streams=self._streams)

    def pinned(self) -> bool:
        """Whether the calling thread has a socket pinned by :meth:`connection`."""
        return self._slots.pinned() is not None

    def derive(self, **overrides: Any) -> "ElevatorPool":
        """A new pool to the same server with this one's settings (its context, its CURVE
        keys or ``security``, its retry policy and timeouts), ``overrides`` applied
        (``max_size=4, timeout=60`` ...): for a job that needs sockets of its own, such as
        a bulk load. The new pool shares this pool's context and must be closed first.
        It traces if this one was given a ``tracer_provider``, else by the global rule.
        Raises TypeError for an option ElevatorPool does not take."""
        options: Dict[str, Any] = {
            "max_size": self.max_size, "timeout": self.timeout,
            "checkout_timeout": self.checkout_timeout,
            "health_check_interval": self.health_check_interval, "retry": self.retry,
            "heartbeat_interval": self.heartbeat_interval,
            "connect_timeout": self.connect_timeout, "coalesce": self.coalesce}
        unknown = sorted(set(overrides) - set(options))
        if unknown:
            raise TypeError(f"derive() got options ElevatorPool does not take or that a "
                            f"derived pool keeps: {', '.join(unknown)}")
        options.update(overrides)
        return ElevatorPool(self.endpoint, context=self._live_context(), security=self._security,
                            tracer_provider=self._tracer_provider, **options)

    # --------------------------------------------------------------------- state

    def stats(self) -> PoolStats:
        """Counters: ``size`` (open sockets), ``in_use``, ``idle``, ``max_size``, ``waiting``,
        ``checkouts``, ``wait_time_total`` (seconds), ``timeouts`` (calls that got no reply
        in time), ``checkout_timeouts``, ``retries``, ``replaced``, ``health_checks``,
        ``stale_replies`` (late replies recognised by id and dropped), ``server_timeouts``
        (timeouts that were the server's TIMEOUT answer: not started in time, nothing done;
        such a call leaves no late reply), ``merged_calls`` (calls answered by a merged
        request) and ``merged_requests`` (the merged requests sent for them), ``queued``
        (calls waiting now to be merged), ``iterations`` (RangeIter streams holding a
        socket now) and ``iterations_opened``, ``closed``."""
        out = self._slots.stats()
        out["timeouts"] = self._caller.timeouts + self.reads.timeouts + self.writes.timeouts
        out["retries"] = self._caller.retries
        out["merged_calls"] = self.reads.merged_calls + self.writes.merged_calls
        out["merged_requests"] = self.reads.merged_requests + self.writes.merged_requests
        out["queued"] = self.reads.queued() + self.writes.queued()
        out["iterations"] = self._streams.open
        out["iterations_opened"] = self._streams.opened
        return cast(PoolStats, out)

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if s["closed"] else "open"
        return (f"<ElevatorPool {self.endpoint} {state} size={s['size']}/{s['max_size']} "
                f"in_use={s['in_use']} idle={s['idle']} waiting={s['waiting']} "
                f"retries={s['retries']} replaced={s['replaced']}>")

    @property
    def is_closed(self) -> bool:
        return self._slots.is_closed

    def close(self) -> None:
        """Close the pool: later calls raise PoolClosed, idle sockets close now, sockets
        in use close when their thread gives them back; the context is terminated when
        the last one is closed. Idempotent."""
        self._slots.close()

    def __enter__(self) -> "ElevatorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
