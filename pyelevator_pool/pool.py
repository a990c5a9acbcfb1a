"""ElevatorPool: a bounded, thread-affine pool of DEALER sockets to one server.

The pool only hands sockets to threads: it knows nothing of commands. Its state is
changed under one lock, and no socket is sent on, received from, opened or closed
while that lock is held.
"""
from __future__ import annotations

import collections
import math
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Sequence

import zmq

from . import errors, protocol
from .connection import Connection, normalize_endpoint
from .protocol import Reply
from .retry import RetryPolicy
from .security import CurveKeys

__all__ = ["ElevatorPool", "parse_limits"]


def parse_limits(reply: Reply) -> Dict[str, int]:
    """A LIMITS reply as ``{name: int > 0}``; ``{}`` for a server without LIMITS."""
    datas = reply.datas if reply.status != protocol.Status.FAILURE else None
    if not isinstance(datas, dict):
        return {}
    return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v
            for k, v in datas.items()
            if isinstance(v, int) and not isinstance(v, bool) and v > 0}


class _Waiter:
    """One thread waiting for a socket: handed either a socket or the right to open one."""

    __slots__ = ("event", "conn", "may_open")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.conn: Optional[Connection] = None
        self.may_open = False


class _Pin:
    __slots__ = ("conn", "depth")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.depth = 1


def _check_number(name: str, value: Any, *, minimum: float = 0, allow_zero: bool = False,
                  integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    if not (value > minimum or (allow_zero and value == minimum)) or value == math.inf:
        # written so that NaN fails too (every comparison with it is False)
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} {minimum} "
                         f"(and finite), not {value!r}")


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
    :param curve: a :class:`CurveKeys` (the server's public key and this client's key
        pair) for a server started with ``--curve-secret-key``: traffic is encrypted and
        the server checks this client's key. A refused key raises AuthenticationError
        at the first call, at once (never retried). Not together with ``security``.
    """

    def __init__(self, endpoint: str = "127.0.0.1:4141", *, transport: str = "tcp",
                 max_size: int = 32, timeout: float = 10.0, checkout_timeout: float = 10.0,
                 health_check_interval: Optional[float] = 30.0,
                 retry: Optional[RetryPolicy] = None, heartbeat_interval: float = 1.0,
                 connect_timeout: float = 0.5,
                 context: Optional[zmq.Context] = None,
                 security: Optional[Callable[[zmq.Socket], None]] = None,
                 curve: Optional[CurveKeys] = None) -> None:
        self.endpoint = normalize_endpoint(endpoint, transport)
        if curve is not None:
            if not isinstance(curve, CurveKeys):
                raise TypeError(f"curve must be a CurveKeys, not {type(curve).__name__}")
            if security is not None:
                raise ValueError("give curve= or security=, not both")
            security = curve
        _check_number("max_size", max_size, minimum=1, allow_zero=True, integer=True)
        _check_number("timeout", timeout)
        _check_number("checkout_timeout", checkout_timeout, allow_zero=True)
        if health_check_interval is not None:
            _check_number("health_check_interval", health_check_interval, allow_zero=True)
        _check_number("heartbeat_interval", heartbeat_interval, allow_zero=True)
        _check_number("connect_timeout", connect_timeout)
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context, not {type(context).__name__}")
        if security is not None and not callable(security):
            raise TypeError("security must be callable (it configures each new socket)")
        self.max_size = max_size
        self.timeout = float(timeout)
        self.checkout_timeout = float(checkout_timeout)
        self.health_check_interval = health_check_interval
        self.retry = retry
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = float(connect_timeout)
        self._security = security
        self._owns_context = context is None
        self._context = context if context is not None else zmq.Context()
        #: database name -> uid, resolved once per pool (the client fills it).
        self.uids: Dict[str, str] = {}
        #: the server's limits (LIMITS: max_keys, max_items...), fetched once by the
        #: client when a call is large enough to matter; {} when the server has none.
        self.server_limits: Optional[Dict[str, int]] = None
        self._closed = False
        self._init_state()

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._idle: Dict[Connection, None] = {}  # insertion-ordered: popitem() is LIFO
        self._all: set = set()
        self._size = 0  # open sockets plus those being opened
        self._in_use = 0
        self._waiters: Deque[_Waiter] = collections.deque()
        self._checkouts = 0
        self._wait_time_total = 0.0
        self._timeouts = 0
        self._checkout_timeouts = 0
        self._retries = 0
        self._replaced = 0
        self._health_checks = 0
        self._stale_replies = 0
        self._server_timeouts = 0

    def _after_fork(self) -> None:
        # The child must never touch the parent's context or sockets (pyzmq also
        # refuses to close them from another pid): forget them and start afresh.
        if self._owns_context:
            self._context = zmq.Context()
        else:
            self._context = zmq.Context.instance()
            self._owns_context = False
        self._init_state()

    def _live_context(self) -> zmq.Context:
        """This process's context: a fresh one in a forked child, never the parent's."""
        if self._pid != os.getpid():
            self._after_fork()
        return self._context

    # ------------------------------------------------------------------ checkout

    def checkout(self, timeout: Optional[float] = None) -> Connection:
        """A socket for the calling thread's exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default ``checkout_timeout``) seconds for one, the
        health check of an idle socket included.
        Raises PoolTimeout when none became free, PoolClosed after :meth:`close`,
        TypeError/ValueError for a ``timeout`` that is not a number >= 0.
        """
        if timeout is not None:
            _check_number("timeout", timeout, allow_zero=True)
        budget_end = time.monotonic() + (self.checkout_timeout if timeout is None else timeout)
        if self._pid != os.getpid():
            self._after_fork()
        last: Optional[Connection] = self._local.__dict__.get("conn")
        conn: Optional[Connection]
        open_new = False
        with self._lock:
            if self._closed:
                raise errors.PoolClosed(f"pool for {self.endpoint} is closed")
            if last is not None and last in self._idle:
                del self._idle[last]
                conn = last
            elif self._idle:
                conn = self._idle.popitem()[0]
            elif self._size < self.max_size:
                self._size += 1
                open_new = True
                conn = None
            else:
                conn = None
            if conn is not None or open_new:
                self._in_use += 1
                self._checkouts += 1
        if open_new:
            conn = self._open()
        elif conn is None:
            conn = self._wait(self.checkout_timeout if timeout is None else timeout)
        interval = self.health_check_interval
        if interval is not None and time.monotonic() - conn.last_used > interval:
            conn = self._health_check(conn, budget_end)
        self._local.conn = conn
        return conn

    def _open(self) -> Connection:
        """Open a socket for a slot already counted in ``_size`` and ``_in_use``."""
        try:
            conn = Connection(self._context, self.endpoint,
                              heartbeat_interval=self.heartbeat_interval, security=self._security,
                              connect_timeout=self.connect_timeout)
        except BaseException as exc:
            self._release_slot()
            if isinstance(exc, zmq.ZMQError):
                raise errors.ConnectionError(
                    f"cannot open a socket to {self.endpoint}: {exc}", request_sent=False) from exc
            raise
        with self._lock:
            self._all.add(conn)
            closed = self._closed
        if closed:
            self._discard(conn)
            raise errors.PoolClosed(f"pool for {self.endpoint} is closed")
        return conn

    def _wait(self, timeout: float) -> Connection:
        waiter = _Waiter()
        start = time.monotonic()
        with self._lock:
            self._waiters.append(waiter)
        waiter.event.wait(timeout)
        with self._lock:
            waited = time.monotonic() - start
            self._wait_time_total += waited
            if not waiter.event.is_set():
                self._waiters.remove(waiter)
                self._checkout_timeouts += 1
                waiting = len(self._waiters)
                raise errors.PoolTimeout(
                    f"no socket to {self.endpoint} became free within {timeout:g}s "
                    f"(pool max_size={self.max_size}, all in use; {waiting} other threads waiting)")
            self._checkouts += 1
            if self._closed and waiter.conn is None and not waiter.may_open:
                raise errors.PoolClosed(f"pool for {self.endpoint} is closed")
        # The slot (and _in_use) was counted for us by whoever woke us.
        if waiter.conn is not None:
            return waiter.conn
        return self._open()

    def _health_check(self, conn: Connection, budget_end: float) -> Connection:
        with self._lock:
            self._health_checks += 1
        # Within the caller's checkout budget (and so the call's deadline): a PING of
        # its own 1 s made a call with timeout=0.1 to a dead server last 1 s.
        if conn.ping(timeout=max(0.0, min(1.0, self.timeout, budget_end - time.monotonic()))):
            return conn
        # Replace it: the slot stays ours, so a new socket needs no new checkout.
        self._forget(conn, replaced=True)
        conn.close()
        return self._open()

    def checkin(self, conn: Connection) -> None:
        """Give back a socket from :meth:`checkout`. A tainted one is closed and replaced."""
        if conn.pid != os.getpid():
            return  # checked out before a fork: the child's pool no longer counts it
        if conn.is_tainted or self._closed:
            self._discard(conn)
            return
        closed = False
        with self._lock:
            if conn not in self._all:  # from before a fork or a close
                return
            if self._closed:
                # close() ran since the check above: parked idle in a closed pool, this
                # socket would never be closed, nor the context terminated.
                closed = True
            elif self._waiters:
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.event.set()
            else:
                self._in_use -= 1
                self._idle[conn] = None
        if closed:
            self._discard(conn)

    def _forget(self, conn: Connection, *, replaced: bool) -> None:
        with self._lock:
            self._all.discard(conn)
            if replaced:
                self._replaced += 1
            self._stale_replies += conn.stale_replies
            self._server_timeouts += conn.server_timeouts

    def _release_slot(self) -> None:
        """A counted slot is free again: let a waiter open a socket in it."""
        with self._lock:
            if self._waiters and not self._closed:
                waiter = self._waiters.popleft()
                waiter.may_open = True
                waiter.event.set()
            else:
                self._size -= 1
                self._in_use -= 1
            finished = self._closed and self._size == 0
        if finished:
            self._terminate_context()

    def _discard(self, conn: Connection) -> None:
        with self._lock:
            known = conn in self._all
        if not known:
            conn.close()
            return
        self._forget(conn, replaced=conn.is_tainted and not self._closed)
        conn.close()
        self._release_slot()

    # ------------------------------------------------------------------ requests

    def request(self, cmd: str, args: Sequence, uid: Optional[str] = None, *,
                timeout: Optional[float] = None, compression: bool = False,
                idempotent: bool = True, is_write: bool = False, stream: int = 0) -> Reply:
        """Send one request on a pooled socket and return its reply, retrying transport
        failures under the pool's :class:`RetryPolicy`. ``stream``: see
        :meth:`Connection.request`.

        ``timeout`` (default the pool's) bounds everything: checkout, send, receive and
        retries. ``idempotent``/``is_write`` tell the policy whether a request whose
        fate is unknown may be sent again. A failure reply is returned, not raised.
        Raises ElevatorTimeout, ConnectionError, ProtocolError, PoolTimeout, PoolClosed;
        TypeError/ValueError for a ``timeout`` that is not a number > 0.
        """
        if timeout is not None:
            _check_number("timeout", timeout)
        started = time.monotonic()
        deadline = started + (self.timeout if timeout is None else timeout)
        try:
            return self._attempt(cmd, args, uid, deadline, compression, stream)
        except errors.TransportError as exc:
            return self.retry.call_after_failure(
                exc, lambda: self._attempt(cmd, args, uid, deadline, compression, stream),
                deadline=deadline, idempotent=idempotent, is_write=is_write,
                describe=f"{cmd} to {self.endpoint}", on_retry=self._count_retry,
                started=started)

    def _count_retry(self) -> None:
        with self._lock:
            self._retries += 1

    def _attempt(self, cmd: str, args: Sequence, uid: Optional[str], deadline: float,
                 compression: bool, stream: int = 0) -> Reply:
        pin = self._local.__dict__.get("pin")
        if pin is not None and self._pid == os.getpid():
            if self._closed:
                raise errors.PoolClosed(f"pool for {self.endpoint} is closed")
            if pin.conn.is_tainted:
                pin.conn = self._replace_pinned(pin.conn, deadline)
            return self._send(pin.conn, cmd, args, uid, deadline, compression, stream)
        remaining = deadline - time.monotonic()
        conn = self.checkout(min(self.checkout_timeout, max(remaining, 0.0)))
        try:
            return self._send(conn, cmd, args, uid, deadline, compression, stream)
        finally:
            self.checkin(conn)

    def _send(self, conn: Connection, cmd: str, args: Sequence, uid: Optional[str],
              deadline: float, compression: bool, stream: int = 0) -> Reply:
        try:
            return conn.request(cmd, args, uid, timeout=max(deadline - time.monotonic(), 0.0),
                                compression=compression, stream=stream,
                                connect_timeout=self.connect_timeout,
                                max_message_size=self._max_message_size)
        except errors.ElevatorTimeout:
            with self._lock:
                self._timeouts += 1
            raise
        except errors.ConnectionError as exc:
            if exc.request_sent and conn.last_frame_size > protocol.MIN_MAX_MESSAGE_SIZE:
                # a server restarted with a lower max_message_size drops the connection of
                # a larger frame (libzmq): check the limits again before a retry sends it
                self.server_limits = None
            raise

    def _max_message_size(self, conn: Connection, deadline: float) -> Optional[int]:
        """The server's max_message_size (None: it has no LIMITS), fetched once per pool
        on ``conn`` itself, before the large request is sent on it."""
        limits = self.server_limits
        if limits is None:
            reply = conn.request(protocol.LIMITS, [], None,
                                 timeout=max(deadline - time.monotonic(), 0.0),
                                 connect_timeout=self.connect_timeout)
            limits = self.server_limits = parse_limits(reply)
        return limits.get("max_message_size")

    def _replace_pinned(self, conn: Connection, deadline: float) -> Connection:
        with self._lock:
            holds_slot = conn in self._all
        if not holds_slot:
            # An earlier replacement failed to open its socket and so gave the slot
            # back (see _open): opening one now would exceed max_size. Take a new slot.
            return self.checkout(min(self.checkout_timeout, max(deadline - time.monotonic(), 0.0)))
        self._forget(conn, replaced=True)
        conn.close()
        return self._open()

    @contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[Connection]:
        """Pin one socket to the calling thread for a sequence of calls.

        Inside the block every call this thread makes through this pool uses that
        socket (re-entrant). Yields the :class:`Connection`.
        """
        pin = self._local.__dict__.get("pin")
        if pin is not None:
            pin.depth += 1
            try:
                yield pin.conn
            finally:
                pin.depth -= 1
            return
        pin = _Pin(self.checkout(timeout))
        self._local.pin = pin
        try:
            yield pin.conn
        finally:
            self._local.pin = None
            self.checkin(pin.conn)

    def derive(self, **overrides: Any) -> "ElevatorPool":
        """A new pool to the same server with this one's settings (its context, its CURVE
        keys or ``security``, its retry policy and timeouts), ``overrides`` applied
        (``max_size=4, timeout=60`` ...): for a job that needs sockets of its own, such as
        a bulk load. The new pool shares this pool's context and must be closed first.
        Raises TypeError for an option ElevatorPool does not take."""
        options: Dict[str, Any] = {
            "max_size": self.max_size, "timeout": self.timeout,
            "checkout_timeout": self.checkout_timeout,
            "health_check_interval": self.health_check_interval, "retry": self.retry,
            "heartbeat_interval": self.heartbeat_interval,
            "connect_timeout": self.connect_timeout}
        unknown = sorted(set(overrides) - set(options))
        if unknown:
            raise TypeError(f"derive() got options ElevatorPool does not take or that a "
                            f"derived pool keeps: {', '.join(unknown)}")
        options.update(overrides)
        return ElevatorPool(self.endpoint, context=self._live_context(), security=self._security,
                            **options)

    # --------------------------------------------------------------------- state

    def stats(self) -> Dict[str, Any]:
        """Counters: ``size`` (open sockets), ``in_use``, ``idle``, ``max_size``, ``waiting``,
        ``checkouts``, ``wait_time_total`` (seconds), ``timeouts`` (calls that got no reply
        in time), ``checkout_timeouts``, ``retries``, ``replaced``, ``health_checks``,
        ``stale_replies`` (late replies recognised by id and dropped), ``server_timeouts``
        (timeouts that were the server's TIMEOUT answer: not started in time, nothing done;
        such a call leaves no late reply)."""
        with self._lock:
            stale = self._stale_replies + sum(c.stale_replies for c in self._all)
            server_timeouts = self._server_timeouts + sum(c.server_timeouts for c in self._all)
            return {
                "size": len(self._all), "in_use": self._in_use, "idle": len(self._idle),
                "max_size": self.max_size, "waiting": len(self._waiters),
                "checkouts": self._checkouts, "wait_time_total": self._wait_time_total,
                "timeouts": self._timeouts, "checkout_timeouts": self._checkout_timeouts,
                "retries": self._retries, "replaced": self._replaced,
                "health_checks": self._health_checks, "stale_replies": stale,
                "server_timeouts": server_timeouts,
                "closed": self._closed,
            }

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if s["closed"] else "open"
        return (f"<ElevatorPool {self.endpoint} {state} size={s['size']}/{s['max_size']} "
                f"in_use={s['in_use']} idle={s['idle']} waiting={s['waiting']} "
                f"retries={s['retries']} replaced={s['replaced']}>")

    @property
    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the pool: later calls raise PoolClosed, idle sockets close now, sockets
        in use close when their thread gives them back; the context is terminated when
        the last one is closed. Idempotent."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            for conn in idle:
                self._all.discard(conn)
            self._size -= len(idle)
            waiters = list(self._waiters)
            self._waiters.clear()
            finished = self._size == 0
        for waiter in waiters:
            waiter.event.set()
        for conn in idle:
            conn.close()
        if finished:
            self._terminate_context()

    def _terminate_context(self) -> None:
        if self._owns_context and not self._context.closed:
            # Every socket is closed with LINGER=0, so term() does not wait.
            self._context.term()

    def __enter__(self) -> "ElevatorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
