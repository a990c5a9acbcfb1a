"""RetryPolicy: which failures are retried, how long to wait between tries, when to stop.

Built on tenacity strategy objects (``tenacity.stop_*``, ``tenacity.wait_*``), which
compose with ``|``, ``&`` and ``+``. The first attempt of a call never touches
tenacity (it costs 13-30 us a call): the policy is entered only after a failure.

What is retried:

* a request that was provably never sent (no connection could take it): any command;
* a timeout or a lost connection after the request was sent: only commands that
  converge to the same state when repeated (reads, PUT, DELETE, BATCH, PING, DBCONNECT,
  DBMOUNT, DBUMOUNT, DBLIST, DBREPAIR). DBCREATE and DBDROP are not: a retried
  DBCREATE that found the database would not know whether it created it itself. Their
  ambiguous failures are raised, and the message says the outcome is unknown;
* never a server's answer (missing key, database error, ...): it is final.

Every call has one deadline, its ``timeout``, covering checkout, send, receive, the
waits and every retry; ``stop`` can end retrying sooner.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, TypeVar

import tenacity

from . import errors

__all__ = ["RetryPolicy", "NO_RETRY"]

log = logging.getLogger("pyelevator_pool.retry")

T = TypeVar("T")


class RetryPolicy:
    """How a call is retried after a transport failure.

    :param stop: a tenacity stop strategy; retrying ends when it says so or when the
        call's deadline (its ``timeout``) is reached, whichever comes first.
        Default ``tenacity.stop_never``: the deadline alone bounds a call.
    :param wait: a tenacity wait strategy between attempts. Default: exponential from
        10 ms, capped at 0.5 s, with up to 50 ms of random jitter, so that many clients
        do not reconnect in lockstep (tenacity's own default jitter of 1 s suits web
        APIs, not a millisecond-scale key-value store).
    :param retry_writes: retry PUT, DELETE and BATCH after an ambiguous failure
        (they converge to the same state when repeated). Default True.
    :param sleep: the function that waits (tests pass a fake clock's).
    """

    def __init__(self, *, stop: Any = None, wait: Any = None, retry_writes: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.stop = tenacity.stop_never if stop is None else stop
        # wait_exponential + wait_random is wait_exponential_jitter(initial=0.01, ...),
        # spelled so that it means the same on every tenacity >= 8.2.
        self.wait = (tenacity.wait_exponential(multiplier=0.01, max=0.5)
                     + tenacity.wait_random(0, 0.05) if wait is None else wait)
        for name, strategy in (("stop", self.stop), ("wait", self.wait)):
            if not callable(strategy):
                raise TypeError(f"RetryPolicy {name} must be a tenacity strategy object, "
                                f"not {type(strategy).__name__}")
        if not isinstance(retry_writes, bool):
            raise TypeError("RetryPolicy retry_writes must be a bool")
        if not callable(sleep):
            raise TypeError("RetryPolicy sleep must be callable")
        self.retry_writes = retry_writes
        self.sleep = sleep
        self._lock = threading.Lock()
        self.retries = 0  # retries made under this policy (all pools and calls)

    def __repr__(self) -> str:
        return f"RetryPolicy(stop={self.stop!r}, wait={self.wait!r}, retry_writes={self.retry_writes})"

    def is_retryable(self, exc: BaseException, *, idempotent: bool, is_write: bool = False) -> bool:
        """Whether ``exc`` of a command so described may be retried."""
        if not isinstance(exc, errors.TransportError):
            return False  # a server's answer, a pool timeout, a closed pool, a bad argument
        if isinstance(exc, (errors.AuthenticationError, errors.AddressError)):
            return False  # a refused key or a bad address fails again: fail fast, not at the deadline
        if not exc.request_sent:
            return True
        if is_write:
            return self.retry_writes
        return idempotent

    def call_after_failure(self, first: BaseException, attempt: Callable[[], T], *,
                           deadline: float, idempotent: bool, is_write: bool = False,
                           describe: str = "request",
                           on_retry: Optional[Callable[[int, Optional[BaseException], float],
                                                       None]] = None,
                           started: Optional[float] = None) -> T:
        """Go on after ``first``, the failure of a first attempt made without tenacity.

        Re-raises ``first`` when it is not retryable. Otherwise retries ``attempt``
        until it succeeds, a non-retryable error is raised, ``stop`` says stop, or
        ``deadline`` (a ``time.monotonic()`` value) is reached; the last error is raised.
        ``started`` (a ``time.monotonic()`` value, default now): when the call began, so
        that ``stop_after_delay`` counts the first attempt too. ``on_retry(attempt, cause,
        wait)``: called before each retry, with the failed attempt's number (1: the first),
        its error and the seconds until the next one.
        """
        if not self.is_retryable(first, idempotent=idempotent, is_write=is_write):
            raise first

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if time.monotonic() + state.upcoming_sleep >= deadline:
                return  # the wait ends at the deadline, and no attempt follows it (run)
            exc = state.outcome.exception() if state.outcome else None
            with self._lock:
                self.retries += 1
            if on_retry is not None:
                on_retry(state.attempt_number, exc, state.upcoming_sleep)
            log.warning("%s failed (attempt %d: %s); retrying in %.3fs", describe,
                        state.attempt_number, exc, state.upcoming_sleep)

        def stop(state: tenacity.RetryCallState) -> bool:
            if started is not None:
                state.start_time = started  # tenacity starts its clock after attempt 1
            return bool(self.stop(state)) or time.monotonic() >= deadline

        retrying = tenacity.Retrying(
            stop=stop,
            wait=self.wait,
            retry=tenacity.retry_if_exception(
                lambda e: self.is_retryable(e, idempotent=idempotent, is_write=is_write)),
            sleep=self._sleep_until(deadline),
            before_sleep=before_sleep,
            reraise=True,
        )
        first_done = False
        last: BaseException = first

        def run() -> T:
            nonlocal first_done, last
            if not first_done:  # tenacity's attempt 1 is the one already made
                first_done = True
                raise first
            if time.monotonic() >= deadline:
                # The last wait was clipped to the deadline: an attempt now would have
                # no time left, yet could still send the request (then time out at once).
                raise last
            try:
                return attempt()
            except BaseException as exc:
                last = exc
                raise

        return retrying(run)

    def _sleep_until(self, deadline: float) -> Callable[[float], None]:
        def sleep(seconds: float) -> None:
            self.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
        return sleep


#: A policy that never retries: every failure is raised at once.
NO_RETRY = RetryPolicy(stop=tenacity.stop_after_attempt(1))
