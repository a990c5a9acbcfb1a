"""The rate-limited log as pure logic: an injected clock and a capturing logger, no sleep."""
from __future__ import annotations

import logging
from typing import List

import pytest

from pyelevator_pool.server.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def setup():
    logger = logging.getLogger("test.ratelog")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    cap = Capture()
    logger.addHandler(cap)
    clock = Clock()
    yield RateLimitedLog(1.0, clock=clock, logger=logger), clock, cap.lines
    logger.removeHandler(cap)


def test_a_flood_of_one_cause_is_one_line_a_second_with_the_count_held(setup):
    rl, clock, lines = setup
    for i in range(1235):
        rl(logging.INFO, "bad", "malformed request %d", i)
        clock.now += 0.0001  # 1235 lines in ~0.12 s
    assert lines == ["malformed request 0"]
    clock.now += 1.0
    rl(logging.INFO, "bad", "malformed request %d", 9999)
    assert lines[1] == "malformed request 9999 (and 1234 more in the last 1.1 s)"


def test_flush_reports_the_tail_of_a_flood_once_its_interval_is_over(setup):
    rl, clock, lines = setup
    for i in range(100):
        rl(logging.INFO, "bad", "line %d", i)
    assert rl.flush() == 0 and lines == ["line 0"]  # the interval is not over
    clock.now += 1.0
    assert rl.flush() == 1
    assert lines[1] == "line 99 (and 98 more in the last 1.0 s)"
    clock.now += 5.0
    assert rl.flush() == 0 and len(lines) == 2  # nothing held: nothing more to say
    rl(logging.INFO, "bad", "again")
    assert lines[2] == "again"


def test_causes_are_limited_separately(setup):
    rl, clock, lines = setup
    for _ in range(10):
        rl(logging.INFO, "a", "a")
        rl(logging.WARNING, "b", "b")
    assert lines == ["a", "b"]
    assert not rl.allows("a") and rl.allows("c")
    clock.now += 1.0
    assert rl.allows("a")


def test_lines_over_a_long_flood_are_bounded_by_its_seconds(setup):
    rl, clock, lines = setup
    for _ in range(10_000):  # 10 s of 1000 lines a second
        rl(logging.INFO, "bad", "x")
        rl.flush()
        clock.now += 0.001
    assert 9 <= len(lines) <= 11
    held = sum(int(line.split("and ")[1].split()[0]) for line in lines[1:])
    assert held + len(lines) <= 10_000


def test_the_number_of_causes_kept_is_bounded():
    logger = logging.getLogger("test.ratelog.bound")
    logger.propagate = False
    clock = Clock()
    rl = RateLimitedLog(1.0, clock=clock, logger=logger, max_causes=8)
    for i in range(100):
        rl(logging.INFO, f"cause{i}", "x")
    assert len(rl._causes) <= 8


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"interval": -1}, {"interval": "1"},
                                    {"max_causes": 0}, {"clock": 3}])
def test_arguments_are_checked(kwargs):
    with pytest.raises((TypeError, ValueError)):
        RateLimitedLog(**kwargs)
