"""RetryPolicy unit tests: pure, no socket, no real sleeping.

Waits are recorded by a fake ``sleep`` (and, where the deadline matters, a fake clock
that the fake sleep advances), so every figure asserted here is exact.
"""
from __future__ import annotations

import logging
import random
import time
import types
import warnings
from typing import Callable, List

import pytest
import tenacity

from pyelevator_pool import errors, retry as retry_mod
from pyelevator_pool.retry import NO_RETRY, RetryPolicy

FAR = 3600.0  # a deadline that is never reached in these tests


class FakeClock:
    """A monotonic clock that only moves when the fake ``sleep`` is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: List[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The fake clock, installed as the ``time`` of the retry module and of tenacity."""
    c = FakeClock()
    fake_time = types.SimpleNamespace(monotonic=c.monotonic, time=c.monotonic, sleep=c.sleep)
    monkeypatch.setattr(retry_mod, "time", fake_time)
    monkeypatch.setattr(tenacity, "time", fake_time)
    return c


class Recorder:
    """A fake sleep that only records."""

    def __init__(self) -> None:
        self.waits: List[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(errs: List[BaseException], result: object = "ok") -> Callable[[], object]:
    """An attempt that raises each of ``errs`` in turn, then returns ``result``."""
    pending = list(errs)
    calls = []

    def attempt() -> object:
        calls.append(1)
        if pending:
            raise pending.pop(0)
        return result

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


def sent_timeout(msg: str = "no reply") -> errors.ElevatorTimeout:
    return errors.ElevatorTimeout(msg, request_sent=True)


def unsent_timeout(msg: str = "no connection") -> errors.ElevatorTimeout:
    return errors.ElevatorTimeout(msg, request_sent=False)


# ------------------------------------------------------------------ what is retried

UNSENT = [errors.ElevatorTimeout("t", request_sent=False),
          errors.ConnectionError("c", request_sent=False)]
SENT = [errors.ElevatorTimeout("t", request_sent=True),
        errors.ConnectionError("c", request_sent=True)]
NEVER = [errors.ServerError("s"), errors.ElevatorKeyError("k"), errors.DatabaseError("d"),
         errors.ElevatorRuntimeError("r"), errors.RequestError("q"),
         errors.PoolTimeout("p"), errors.PoolClosed("p"), errors.ProtocolError("x"),
         errors.AuthenticationError("a"), ValueError("v"), KeyboardInterrupt()]


@pytest.mark.parametrize("exc", UNSENT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("idempotent,is_write", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("retry_writes", [True, False])
def test_request_never_sent_is_always_retried(exc, idempotent, is_write, retry_writes):
    policy = RetryPolicy(retry_writes=retry_writes, sleep=Recorder())
    assert policy.is_retryable(exc, idempotent=idempotent, is_write=is_write)


@pytest.mark.parametrize("exc", SENT, ids=lambda e: type(e).__name__)
def test_sent_request_is_retried_only_when_idempotent(exc):
    policy = RetryPolicy(sleep=Recorder())
    assert policy.is_retryable(exc, idempotent=True)
    assert not policy.is_retryable(exc, idempotent=False)


@pytest.mark.parametrize("exc", SENT, ids=lambda e: type(e).__name__)
def test_sent_write_is_retried_per_retry_writes(exc):
    assert RetryPolicy(sleep=Recorder()).is_retryable(exc, idempotent=True, is_write=True)
    assert not RetryPolicy(retry_writes=False, sleep=Recorder()).is_retryable(
        exc, idempotent=True, is_write=True)


@pytest.mark.parametrize("exc", NEVER, ids=lambda e: type(e).__name__)
def test_server_answers_pool_errors_and_others_are_never_retried(exc):
    policy = RetryPolicy(sleep=Recorder())
    for idempotent in (True, False):
        for is_write in (True, False):
            assert not policy.is_retryable(exc, idempotent=idempotent, is_write=is_write)


@pytest.mark.parametrize("exc", [errors.ElevatorKeyError("missing"), errors.PoolTimeout("full"),
                                 errors.PoolClosed("closed"), sent_timeout()],
                         ids=lambda e: type(e).__name__)
def test_non_retryable_first_failure_is_raised_as_is_without_retrying(exc, caplog):
    sleep = Recorder()
    policy = RetryPolicy(sleep=sleep)
    attempt = failing([])
    counted = []
    with caplog.at_level(logging.WARNING, logger="pyelevator_pool.retry"):
        with pytest.raises(type(exc)) as info:
            # a sent, non-idempotent request (DBCREATE): its fate is unknown
            policy.call_after_failure(exc, attempt, deadline=time.monotonic() + FAR,
                                      idempotent=False,
                                      on_retry=lambda *retry: counted.append(retry))
    assert info.value is exc
    assert attempt.calls == [] and sleep.waits == [] and counted == []
    assert policy.retries == 0
    assert caplog.records == []


def test_server_answer_during_retries_ends_them_at_once():
    sleep = Recorder()
    policy = RetryPolicy(sleep=sleep)
    final = errors.ElevatorKeyError("no such key")
    attempt = failing([unsent_timeout(), final, unsent_timeout()])
    with pytest.raises(errors.ElevatorKeyError) as info:
        policy.call_after_failure(unsent_timeout(), attempt, deadline=time.monotonic() + FAR,
                                  idempotent=True)
    assert info.value is final
    assert len(attempt.calls) == 2
    assert len(sleep.waits) == 2 and policy.retries == 2


def test_pool_timeout_during_retries_is_not_retried():
    policy = RetryPolicy(sleep=Recorder())
    exhausted = errors.PoolTimeout("pool exhausted")
    attempt = failing([exhausted])
    with pytest.raises(errors.PoolTimeout) as info:
        policy.call_after_failure(sent_timeout(), attempt, deadline=time.monotonic() + FAR,
                                  idempotent=True)
    assert info.value is exhausted and len(attempt.calls) == 1


def test_authentication_error_is_a_never_sent_connection_error_yet_not_retried():
    exc = errors.AuthenticationError("key refused", request_sent=True)
    assert isinstance(exc, errors.ConnectionError) and exc.request_sent is False
    policy = RetryPolicy(sleep=Recorder())
    attempt = failing([])
    with pytest.raises(errors.AuthenticationError) as info:
        policy.call_after_failure(exc, attempt, deadline=time.monotonic() + FAR, idempotent=True)
    assert info.value is exc and attempt.calls == [] and policy.retries == 0


def test_authentication_error_during_retries_ends_them_at_once():
    sleep = Recorder()
    policy = RetryPolicy(sleep=sleep)
    refused = errors.AuthenticationError("key refused")
    attempt = failing([refused, unsent_timeout()])
    with pytest.raises(errors.AuthenticationError) as info:
        policy.call_after_failure(unsent_timeout(), attempt, deadline=time.monotonic() + FAR,
                                  idempotent=True)
    assert info.value is refused and len(attempt.calls) == 1 and len(sleep.waits) == 1


# ----------------------------------------------------------------- retry loop

@pytest.mark.parametrize("failures", [0, 1, 4])
def test_retries_until_success_counting_each_retry(failures):
    sleep = Recorder()
    policy = RetryPolicy(sleep=sleep)
    counted: List[tuple] = []
    first = sent_timeout()
    causes = [unsent_timeout() for _ in range(failures)]
    attempt = failing(list(causes), result="value")
    got = policy.call_after_failure(first, attempt, deadline=time.monotonic() + FAR,
                                    idempotent=True,
                                    on_retry=lambda *retry: counted.append(retry))
    assert got == "value"
    assert len(attempt.calls) == failures + 1  # the first attempt is not re-run
    assert len(sleep.waits) == failures + 1
    assert policy.retries == failures + 1 and len(counted) == failures + 1
    # on_retry hears each failed attempt's number, its cause and the wait that follows
    assert [(n, cause) for n, cause, _ in counted] == list(enumerate([first] + causes, 1))
    assert [wait for _, _, wait in counted] == sleep.waits


def test_retry_counter_accumulates_across_calls_of_one_policy():
    policy = RetryPolicy(sleep=Recorder())
    for _ in range(3):
        policy.call_after_failure(unsent_timeout(), failing([unsent_timeout()]),
                                  deadline=time.monotonic() + FAR, idempotent=False)
    assert policy.retries == 6


def test_stop_after_attempt_counts_the_first_attempt_and_raises_the_last_error():
    sleep = Recorder()
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(3), sleep=sleep)
    errs = [unsent_timeout("second"), unsent_timeout("third"), unsent_timeout("fourth")]
    attempt = failing(list(errs))
    with pytest.raises(errors.ElevatorTimeout) as info:
        policy.call_after_failure(unsent_timeout("first"), attempt,
                                  deadline=time.monotonic() + FAR, idempotent=True)
    assert info.value is errs[1]  # attempts: first (given), second, third
    assert len(attempt.calls) == 2 and len(sleep.waits) == 2 and policy.retries == 2


def test_no_retry_policy_raises_even_a_never_sent_failure_at_once():
    first = unsent_timeout()
    calls = []
    with pytest.raises(errors.ElevatorTimeout) as info:
        NO_RETRY.call_after_failure(first, lambda: calls.append(1), deadline=time.monotonic() + FAR,
                                    idempotent=True)
    assert info.value is first and calls == []


def test_stop_after_delay_uses_time_slept(clock):
    policy = RetryPolicy(stop=tenacity.stop_after_delay(1.0), wait=tenacity.wait_fixed(0.3),
                         sleep=clock.sleep)
    attempt = failing([unsent_timeout() for _ in range(100)])
    with pytest.raises(errors.ElevatorTimeout):
        policy.call_after_failure(unsent_timeout(), attempt, deadline=clock.now + FAR,
                                  idempotent=True)
    # attempts at t=0, 0.3, 0.6, 0.9, 1.2: the one at 1.2 is past the delay, so stop there
    assert clock.waits == pytest.approx([0.3] * 4)
    assert len(attempt.calls) == 4


def test_composed_stop_strategies_end_at_the_first_that_says_stop(clock):
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(100),
                         wait=tenacity.wait_fixed(0.5) + tenacity.wait_fixed(0.25),
                         sleep=clock.sleep)
    with pytest.raises(errors.ElevatorTimeout):
        policy.call_after_failure(unsent_timeout(), failing([unsent_timeout()] * 10),
                                  deadline=clock.now + FAR, idempotent=True)
    assert clock.waits == pytest.approx([0.75, 0.75])


# ------------------------------------------------------------------- deadline

def test_deadline_stops_stop_never_and_clips_the_last_wait(clock):
    policy = RetryPolicy(wait=tenacity.wait_fixed(0.3), sleep=clock.sleep)  # stop_never
    start = clock.now
    last = []

    def attempt():
        last.append(unsent_timeout(f"attempt at +{clock.now - start:.1f}s"))
        raise last[-1]

    with pytest.raises(errors.ElevatorTimeout) as info:
        policy.call_after_failure(unsent_timeout(), attempt, deadline=start + 1.0, idempotent=True)
    # waits 0.3, 0.3, 0.3, then only the 0.1 s left before the deadline; no wait past it,
    # and no attempt at the deadline (it would have no time left, yet could send)
    assert clock.waits == pytest.approx([0.3, 0.3, 0.3, 0.1])
    assert clock.now == pytest.approx(start + 1.0)
    assert info.value is last[-1] and len(last) == 3


def test_no_attempt_starts_at_the_deadline_after_a_clipped_wait(clock):
    # A never-sent DBCREATE: retried, but not by an attempt with no time left, which would
    # send it and time out at once, turning "not created" into "outcome unknown".
    policy = RetryPolicy(wait=tenacity.wait_fixed(10.0), sleep=clock.sleep)
    first = unsent_timeout()
    attempt = failing([])
    with pytest.raises(errors.ElevatorTimeout) as info:
        policy.call_after_failure(first, attempt, deadline=clock.now + 1.0, idempotent=False)
    assert info.value is first and attempt.calls == []
    assert clock.waits == pytest.approx([1.0])
    assert policy.retries == 0  # the wait to the deadline is not a retry


def test_deadline_already_passed_raises_the_first_failure_without_retrying(clock):
    policy = RetryPolicy(sleep=clock.sleep)
    first = unsent_timeout()
    attempt = failing([])
    with pytest.raises(errors.ElevatorTimeout) as info:
        policy.call_after_failure(first, attempt, deadline=clock.now - 0.001, idempotent=True)
    assert info.value is first and attempt.calls == [] and clock.waits == []


def test_deadline_is_checked_even_when_stop_would_go_on(clock):
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(1000),
                         wait=tenacity.wait_fixed(2.0), sleep=clock.sleep)
    with pytest.raises(errors.ElevatorTimeout):
        policy.call_after_failure(unsent_timeout(), failing([unsent_timeout()] * 1000),
                                  deadline=clock.now + 5.0, idempotent=True)
    assert sum(clock.waits) == pytest.approx(5.0)
    assert clock.waits == pytest.approx([2.0, 2.0, 1.0])


# ---------------------------------------------------------------------- waits

def test_default_wait_is_jittered_exponential_within_bounds():
    random.seed(12345)
    firsts = set()
    for _ in range(30):
        sleep = Recorder()
        policy = RetryPolicy(stop=tenacity.stop_after_attempt(12), sleep=sleep)
        with pytest.raises(errors.ElevatorTimeout):
            policy.call_after_failure(unsent_timeout(), failing([unsent_timeout()] * 20),
                                      deadline=time.monotonic() + FAR, idempotent=True)
        assert len(sleep.waits) == 11
        for n, wait in enumerate(sleep.waits):
            base = min(0.01 * 2 ** n, 0.5)  # exponential from 10 ms, capped at 0.5 s
            assert base <= wait <= base + 0.05 + 1e-9, (n, wait)
        firsts.add(sleep.waits[0])
    # jitter: a thousand clients do not retry in lockstep
    assert len(firsts) > 20
    # tenacity's own default jitter is up to 1 s; ours stays millisecond-scale at first
    assert max(firsts) <= 0.06


def test_custom_wait_strategy_is_used_as_given():
    sleep = Recorder()
    policy = RetryPolicy(wait=tenacity.wait_incrementing(start=0.1, increment=0.2),
                         stop=tenacity.stop_after_attempt(4), sleep=sleep)
    with pytest.raises(errors.ElevatorTimeout):
        policy.call_after_failure(unsent_timeout(), failing([unsent_timeout()] * 5),
                                  deadline=time.monotonic() + FAR, idempotent=True)
    assert sleep.waits == pytest.approx([0.1, 0.3, 0.5])


def test_default_policy_emits_no_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = RetryPolicy()
    assert policy.stop is tenacity.stop_never


# ---------------------------------------------------------------------- logging

def test_each_retry_logs_one_warning_with_attempt_number_and_cause(caplog):
    policy = RetryPolicy(sleep=Recorder())
    causes = [errors.ConnectionError("connection lost while waiting", request_sent=True),
              unsent_timeout("no connection within 0.5s")]
    with caplog.at_level(logging.DEBUG, logger="pyelevator_pool.retry"):
        got = policy.call_after_failure(unsent_timeout("first cause"), failing(list(causes), 42),
                                        deadline=time.monotonic() + FAR, idempotent=True,
                                        describe="GET to tcp://127.0.0.1:1")
    assert got == 42
    records = [r for r in caplog.records if r.name == "pyelevator_pool.retry"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    messages = [r.getMessage() for r in records]
    for n, (msg, cause) in enumerate(zip(messages, ["first cause", *map(str, causes)]), 1):
        assert "GET to tcp://127.0.0.1:1" in msg
        assert f"attempt {n}" in msg
        assert cause in msg


def test_no_log_line_when_nothing_is_retried(caplog):
    policy = RetryPolicy(sleep=Recorder())
    with caplog.at_level(logging.DEBUG, logger="pyelevator_pool.retry"):
        with pytest.raises(errors.ServerError):
            policy.call_after_failure(errors.ServerError("x"), failing([]),
                                      deadline=time.monotonic() + FAR, idempotent=True)
    assert caplog.records == []


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs,exc,words", [
    ({"stop": 3}, TypeError, "stop must be a tenacity strategy"),
    ({"wait": 0.5}, TypeError, "wait must be a tenacity strategy"),
    ({"wait": "fast"}, TypeError, "wait must be a tenacity strategy"),
    ({"retry_writes": 1}, TypeError, "retry_writes must be a bool"),
    ({"retry_writes": None}, TypeError, "retry_writes must be a bool"),
    ({"sleep": None}, TypeError, "sleep must be callable"),
])
def test_retry_policy_argument_validation(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        RetryPolicy(**kwargs)


def test_retry_policy_is_keyword_only():
    with pytest.raises(TypeError):
        RetryPolicy(tenacity.stop_never)  # type: ignore[misc]


def test_repr_shows_strategies_and_retry_writes():
    text = repr(RetryPolicy(stop=tenacity.stop_after_attempt(2), retry_writes=False))
    assert text.startswith("RetryPolicy(") and "retry_writes=False" in text
    assert "stop_after_attempt" in text
