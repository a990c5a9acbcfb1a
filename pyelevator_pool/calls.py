"""Caller: runs one call: a socket (the thread's pinned one, or one checked out), the
request sent and its reply received, transport failures retried under the
:class:`RetryPolicy` within the call's one deadline, and the socket given back."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Sequence, Tuple, TypeVar

from . import errors, protocol
from .facts import ServerFacts
from .protocol import Reply
from .retry import RetryPolicy
from .slots import Conn, SocketPool
from .streams import PageStream, StreamSlots
from .tracing import CallTracer

__all__ = ["Caller"]

T = TypeVar("T")


class Caller:
    def __init__(self, slots: SocketPool, facts: ServerFacts, *, retry: RetryPolicy,
                 connect_timeout: float, tracer: Optional[CallTracer] = None) -> None:
        self._slots = slots
        self._facts = facts
        self.retry = retry
        self.connect_timeout = connect_timeout
        self.tracer = tracer  # a retry is an event of the current call's span
        self._lock = threading.Lock()
        self.retries = 0
        self.timeouts = 0  # calls that got no reply in time

    def request(self, cmd: str, args: Sequence, uid: Optional[str], *, timeout: float,
                compression: bool = False, idempotent: bool = True, is_write: bool = False,
                stream: int = 0, call_timeout: Optional[float] = None) -> Reply:
        """The reply to one request (a failure reply is returned, not raised); ``timeout``
        bounds everything, checkout and retries included. ``call_timeout``: the whole
        timeout of the user's call, which the error messages name (default ``timeout``)."""
        started = time.monotonic()
        deadline = started + timeout
        whole = timeout if call_timeout is None else call_timeout
        return self._retried(cmd, lambda: self._attempt(cmd, args, uid, deadline, compression,
                                                        stream, whole),
                             started, deadline, idempotent=idempotent, is_write=is_write)

    def _retried(self, cmd: str, attempt: Callable[[], T], started: float, deadline: float, *,
                 idempotent: bool, is_write: bool = False) -> T:
        """``attempt()``, its transport failures retried under the policy until
        ``deadline``; the first attempt runs without tenacity (the success path's cost)."""
        try:
            return attempt()
        except errors.TransportError as exc:
            return self.retry.call_after_failure(
                exc, attempt, deadline=deadline, idempotent=idempotent, is_write=is_write,
                describe=f"{cmd} to {self._slots.name}", on_retry=self._count_retry,
                started=started)

    def iterate(self, cmd: str, args: Sequence, uid: Optional[str], *, page: int,
                timeout: float, streams: StreamSlots) -> Optional[Tuple[PageStream, Reply]]:
        """A streamed iteration on a socket of its own and its first page, transport
        failures retried within ``timeout``; None when no socket may be had at once
        (``streams`` says how many iterations may hold one), for the caller to page
        with ordinary requests instead."""
        started = time.monotonic()
        deadline = started + timeout

        def attempt() -> Optional[Tuple[PageStream, Reply]]:
            if not streams.take():
                return None
            left = max(deadline - time.monotonic(), 0.0)
            try:
                conn = self._slots.try_checkout(min(self._slots.checkout_timeout, left))
            except BaseException:
                streams.give_back()
                raise
            if conn is None:
                streams.give_back()
                return None
            pages = conn.iterate(cmd, args, uid, page=page, timeout=left, page_timeout=timeout,
                                 connect_timeout=self.connect_timeout,
                                 max_message_size=self._max_message_size)
            stream = PageStream(conn, pages, self._slots.checkin, streams.give_back)
            try:
                first = stream.next_page()
            except errors.ElevatorTimeout:
                self._count_timeout()
                raise
            if first is None:  # pragma: no cover - a stream yields at least one page
                raise errors.ProtocolError(f"{cmd}: a stream without any page")
            return stream, first

        return self._retried(cmd, attempt, started, deadline, idempotent=True)

    def _count_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1

    def _count_retry(self, attempt: int, cause: Optional[BaseException], wait: float) -> None:
        with self._lock:
            self.retries += 1
        if self.tracer is not None:
            self.tracer.retried(attempt, cause, wait)

    def _attempt(self, cmd: str, args: Sequence, uid: Optional[str], deadline: float,
                 compression: bool, stream: int, whole: float) -> Reply:
        slots = self._slots
        budget = min(slots.checkout_timeout, max(deadline - time.monotonic(), 0.0))
        conn = slots.pinned()
        if conn is not None:
            if conn.is_tainted:
                conn = slots.replace(conn, budget)
                slots.repin(conn)
            return self._send(conn, cmd, args, uid, deadline, compression, stream, whole)
        conn = slots.checkout(budget)
        try:
            return self._send(conn, cmd, args, uid, deadline, compression, stream, whole)
        finally:
            slots.checkin(conn)

    def _send(self, conn: Conn, cmd: str, args: Sequence, uid: Optional[str],
              deadline: float, compression: bool, stream: int, whole: float) -> Reply:
        try:
            return conn.request(cmd, args, uid, timeout=max(deadline - time.monotonic(), 0.0),
                                compression=compression, stream=stream,
                                connect_timeout=self.connect_timeout, call_timeout=whole,
                                max_message_size=self._max_message_size)
        except errors.ElevatorTimeout:
            self._count_timeout()
            raise
        except errors.ConnectionError as exc:
            if exc.request_sent and conn.last_frame_size > protocol.MIN_MAX_MESSAGE_SIZE:
                # a server restarted with a lower max_message_size drops the connection of
                # a larger frame (libzmq): check the limits again before a retry sends it
                self._facts.forget_limits()
            raise

    def _max_message_size(self, conn: Conn, deadline: float) -> Optional[int]:
        """The server's max_message_size (None: it has no LIMITS), fetched once per pool
        on ``conn`` itself, before the large request is sent on it."""
        return self._facts.limits(lambda: conn.request(
            protocol.LIMITS, [], None, timeout=max(deadline - time.monotonic(), 0.0),
            connect_timeout=self.connect_timeout)).get("max_message_size")
