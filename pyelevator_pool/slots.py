"""SocketPool: the accounting of sockets to one server, and nothing else.

It opens sockets with the factory it is given, hands them to threads and takes them
back; it knows nothing of commands. Every change of its state happens in
:meth:`SocketPool._assign` or next to it under the one lock, and no socket is opened,
pinged or closed while that lock is held. Its invariants (never more than ``max_size``,
waiters served in arrival order, closed means closed, a forked child starts afresh) are
tested without sockets (tests/unit/test_slots.py).
"""
from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from typing import (Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple,
                    TypeVar)

from . import errors
from . import pids

__all__ = ["SocketPool"]

T = TypeVar("T")
Conn = Any  # a Connection, or a test's fake: pid, is_tainted, last_used, ping(), close()
_OPEN = object()  # granted: the right to open a socket in a free slot


class _Waiter:
    """One checkout in progress: handed a socket, or the right to open one (``may_open``),
    or told the pool closed."""

    __slots__ = ("event", "prefer", "conn", "may_open", "closed")

    def __init__(self, prefer: Optional[Conn]) -> None:
        self.event: Optional[threading.Event] = None  # made only when it has to wait
        self.prefer = prefer
        self.conn: Optional[Conn] = None
        self.may_open = False
        self.closed = False

    @property
    def served(self) -> bool:
        return self.conn is not None or self.may_open or self.closed

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()


class _Pin:
    __slots__ = ("conn", "depth")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.depth = 1


class SocketPool:
    """Sockets for threads: each thread gets back the socket it used last when that one
    is free, otherwise any free socket, otherwise a new one while fewer than ``max_size``
    are open or opening; otherwise it waits, in arrival order, and gets
    :class:`~pyelevator_pool.PoolTimeout` after ``timeout``.

    :param factory: opens one socket (may raise: the slot is given back).
    :param name: what the errors call the server (its endpoint).
    :param health_check_interval: a socket idle longer than this many seconds is pinged
        before it is handed out, and replaced if that fails; None never.
    :param health_check_timeout: the longest such a ping may take.
    :param tally: names of counters of each socket (``conn.stale_replies``...) that
        :meth:`stats` sums over every socket, closed ones included.
    :param on_fork: called in a forked child before the pool starts afresh there.
    :param on_drained: called once, when the pool is closed and its last socket too.
    """

    def __init__(self, factory: Callable[[], Conn], *, name: str, max_size: int,
                 checkout_timeout: float, health_check_interval: Optional[float] = None,
                 health_check_timeout: float = 1.0, tally: Sequence[str] = (),
                 on_fork: Callable[[], None] = lambda: None,
                 on_drained: Callable[[], None] = lambda: None) -> None:
        self._factory = factory
        self.name = name
        self.max_size = max_size
        self.checkout_timeout = checkout_timeout
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self._tally = tuple(tally)
        self._on_fork = on_fork
        self._on_drained = on_drained
        self._closed = False
        self._init_state()

    def _init_state(self) -> None:
        self._pid = pids.current()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all: Set[Conn] = set()  # open sockets, idle or in use
        self._idle: Dict[Conn, None] = {}  # insertion-ordered: popitem() is the last returned
        self._opening = 0  # slots granted to a thread that is opening a socket in it
        self._waiters: Deque[_Waiter] = collections.deque()
        self._drained = False
        self._retired = dict.fromkeys(self._tally, 0)
        self._counts = dict.fromkeys(("checkouts", "checkout_timeouts", "replaced",
                                      "health_checks"), 0)
        self._wait_time_total = 0.0

    def check_fork(self) -> None:
        """In a forked child, start afresh (once); elsewhere nothing."""
        # A child never touches the parent's sockets (pyzmq refuses to close them from
        # another pid): it forgets them and starts afresh.
        if self._pid != pids.current():
            self._on_fork()
            self._init_state()

    # ------------------------------------------------------------- the one transition

    def _assign(self) -> Tuple[List[Conn], bool]:
        """Serve waiters in arrival order from idle sockets and free slots; on a closed
        pool, wake every waiter and retire the idle sockets. Called with the lock held;
        returns the sockets to close (outside the lock) and whether the pool has just
        drained (closed, and no socket left)."""
        if self._closed:
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.closed = True
                waiter.wake()
            retired = list(self._idle)
            self._idle.clear()
            for conn in retired:
                self._forget(conn)
            drained = not self._drained and not self._all and not self._opening
            self._drained = self._drained or drained
            return retired, drained
        while self._waiters:
            waiter = self._waiters[0]
            granted = self._grant(waiter.prefer)
            if granted is None:
                break
            if granted is _OPEN:
                waiter.may_open = True
            else:
                waiter.conn = granted
            self._waiters.popleft()
            waiter.wake()
        return [], False

    def _grant(self, prefer: Optional[Conn]) -> Any:
        """For the next checkout (lock held): an idle socket (``prefer`` when it is idle),
        else ``_OPEN`` while a slot is free, else None."""
        if self._idle:
            if prefer is not None and prefer in self._idle:
                del self._idle[prefer]
                granted = prefer
            else:
                granted = self._idle.popitem()[0]
        elif len(self._all) + self._opening < self.max_size:
            self._opening += 1
            granted = _OPEN
        else:
            return None
        self._counts["checkouts"] += 1
        return granted

    def _closed_error(self) -> errors.PoolClosed:
        return errors.PoolClosed(f"pool for {self.name} is closed")

    def _transition(self, change: Callable[[], T]) -> T:
        """Apply ``change`` to the state, then :meth:`_assign`, under the lock; then close
        what they retired and report a drained pool, outside it."""
        with self._lock:
            result = change()
            retired, drained = self._assign()
        self._settle(retired, drained)
        return result

    def _settle(self, retired: List[Conn], drained: bool) -> None:
        """After a transition, outside the lock: close what it retired, report a drain."""
        for conn in retired:
            conn.close()
        if drained:
            self._on_drained()

    def _forget(self, conn: Conn) -> None:
        """``conn`` leaves the pool (lock held): its counters go to the tally."""
        self._all.discard(conn)
        for name in self._tally:
            self._retired[name] += getattr(conn, name)

    # ------------------------------------------------------------------ checkout

    def checkout(self, timeout: Optional[float] = None) -> Conn:
        """A socket for the calling thread's exclusive use; give it back with :meth:`checkin`.

        Waits up to ``timeout`` (default ``checkout_timeout``) seconds for one, the
        health check of an idle socket included. Raises PoolTimeout when none became
        free, PoolClosed after :meth:`close`.
        """
        self.check_fork()
        budget = self.checkout_timeout if timeout is None else timeout
        start = time.monotonic()
        prefer = self._local.__dict__.get("conn")
        with self._lock:
            if self._closed:
                raise self._closed_error()
            # the head of an empty queue is served at once, without a waiter
            granted: Any = None if self._waiters else self._grant(prefer)
            if granted is None:
                waiter = _Waiter(prefer)
                self._waiters.append(waiter)
        if granted is None:
            self._wait(waiter, budget)
            if waiter.closed:
                raise self._closed_error()
            granted = _OPEN if waiter.may_open else waiter.conn
        return self._take(granted, start, start + budget)

    def try_checkout(self, timeout: float) -> Optional[Conn]:
        """A socket at once when one is free (or may be opened) and nobody waits for one,
        else None, without waiting or counting a checkout timeout; ``timeout`` bounds the
        health check of an idle socket. Raises PoolClosed after :meth:`close`."""
        self.check_fork()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            granted: Any = None if self._waiters else self._grant(
                self._local.__dict__.get("conn"))
        if granted is None:
            return None
        now = time.monotonic()
        return self._take(granted, now, now + timeout)

    def _take(self, granted: Any, asked: float, budget_end: float) -> Conn:
        """The socket granted to this thread (``asked``: when the checkout began): opened,
        or health-checked when it was idle longer than the interval by then."""
        conn: Conn = self._open() if granted is _OPEN else granted
        interval = self.health_check_interval
        if interval is not None and asked - conn.last_used > interval:
            conn = self._health_check(conn, budget_end)
        self._local.conn = conn
        return conn

    def _wait(self, waiter: _Waiter, timeout: float) -> None:
        start = time.monotonic()
        with self._lock:
            if waiter.served:
                return
            event = waiter.event = threading.Event()
        event.wait(timeout)
        with self._lock:
            self._wait_time_total += time.monotonic() - start
            if not waiter.served:
                self._waiters.remove(waiter)
                self._counts["checkout_timeouts"] += 1
                raise errors.PoolTimeout(
                    f"no socket to {self.name} became free within {timeout:g}s "
                    f"(pool max_size={self.max_size}, all in use; "
                    f"{len(self._waiters)} other threads waiting)")

    def _open(self) -> Conn:
        """Open a socket in a slot granted to this thread (counted in ``_opening``)."""
        try:
            conn = self._factory()
        except BaseException:
            def give_back() -> None:
                self._opening -= 1
            self._transition(give_back)
            raise

        def opened() -> None:
            self._opening -= 1
            self._all.add(conn)

        self._transition(opened)
        if self._closed:
            self._retire(conn)
            raise self._closed_error()
        return conn

    def _health_check(self, conn: Conn, budget_end: float) -> Conn:
        with self._lock:
            self._counts["health_checks"] += 1
        # Within the caller's checkout budget (and so the call's deadline).
        if conn.ping(timeout=max(0.0, min(self.health_check_timeout,
                                          budget_end - time.monotonic()))):
            return conn
        return self.replace(conn)

    def replace(self, conn: Conn, timeout: Optional[float] = None) -> Conn:
        """Close ``conn`` (checked out by this thread) and open another in its slot, or
        check one out within ``timeout`` when that slot was already given back."""
        def swap() -> bool:
            if conn not in self._all:
                # its slot was given back when an earlier replacement failed to open
                return False
            self._forget(conn)
            self._opening += 1
            self._counts["replaced"] += 1
            return True

        holds_slot = self._transition(swap)
        conn.close()
        if not holds_slot:
            return self.checkout(timeout)
        return self._open()

    # ------------------------------------------------------------------- checkin

    def checkin(self, conn: Conn) -> None:
        """Give back a socket from :meth:`checkout`. A tainted one is closed (and its slot
        freed for a new one)."""
        if conn.pid != pids.current():
            return  # checked out before a fork: the child's pool never counted it
        if conn.is_tainted or self._closed:
            self._retire(conn)
            return

        with self._lock:
            if conn in self._all:  # else from before a close
                self._idle[conn] = None
            if not self._waiters and not self._closed:
                return  # the common case: nobody to serve, nothing to retire
            retired, drained = self._assign()
        self._settle(retired, drained)

    def _retire(self, conn: Conn) -> None:
        def forget() -> None:
            if conn in self._all:
                self._forget(conn)
                if conn.is_tainted and not self._closed:
                    self._counts["replaced"] += 1

        conn.close()  # first: the last one's on_drained may wait for every socket to close
        self._transition(forget)

    # ------------------------------------------------------------------- pinning

    def pinned(self) -> Optional[Conn]:
        """The socket pinned to this thread by :meth:`pin`, or None."""
        pin = self._local.__dict__.get("pin")
        if pin is None or self._pid != pids.current():
            return None
        if self._closed:
            raise self._closed_error()
        return pin.conn

    def repin(self, conn: Conn) -> None:
        """The pinned socket was replaced by ``conn`` (see :meth:`replace`)."""
        self._local.pin.conn = conn

    @contextmanager
    def pin(self, timeout: Optional[float] = None) -> Iterator[Conn]:
        """Pin one socket to the calling thread for a block (re-entrant); yields it."""
        pin = self._local.__dict__.get("pin")
        if pin is not None and self._pid == pids.current():
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

    # --------------------------------------------------------------------- state

    def stats(self) -> Dict[str, Any]:
        """``size`` (open sockets), ``in_use`` (checked out or being opened), ``idle``,
        ``max_size``, ``waiting``, ``checkouts``, ``wait_time_total`` (seconds),
        ``checkout_timeouts``, ``replaced``, ``health_checks``, ``closed``, and each
        tallied counter summed over every socket."""
        self.check_fork()
        with self._lock:
            out: Dict[str, Any] = {
                "size": len(self._all), "in_use": len(self._all) - len(self._idle) + self._opening,
                "idle": len(self._idle), "max_size": self.max_size,
                "waiting": len(self._waiters), "wait_time_total": self._wait_time_total,
                "closed": self._closed, **self._counts}
            for name in self._tally:
                out[name] = self._retired[name] + sum(getattr(c, name) for c in self._all)
        return out

    @property
    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Later checkouts raise PoolClosed, waiters are woken with it, idle sockets close
        now, sockets in use when their thread gives them back. Idempotent."""
        self.check_fork()

        def shut() -> None:
            self._closed = True

        self._transition(shut)

    def connections(self) -> List[Conn]:
        """A snapshot of the open sockets (for tests and diagnostics)."""
        with self._lock:
            return list(self._all)
