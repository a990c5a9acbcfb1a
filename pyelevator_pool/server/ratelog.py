"""Rate-limited log lines: at most one line per cause per interval, with a count of the rest.

Pure logic (the clock and the logger are injected): a flood of failing requests yields a
few lines a second, each saying how many like it were held back, never one per request.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["RateLimitedLog"]

_log = logging.getLogger("elevator.server")


class _Cause:
    __slots__ = ("since", "held", "last")

    def __init__(self, since: float) -> None:
        self.since = since       # when this cause's last line went out
        self.held = 0            # lines held back since then
        self.last: Optional[Tuple[int, str, Tuple[Any, ...]]] = None  # the last one held


class RateLimitedLog:
    """``log(level, cause, message, *args)``: the line goes out unless a line of the same
    ``cause`` went out less than ``interval`` seconds ago; then it is counted, and the next
    line of that cause (or :meth:`flush`, once the interval is over) says how many were
    held: "... (and 1234 more in the last 1.0 s)"."""

    def __init__(self, interval: float = 1.0, *, clock: Callable[[], float] = time.monotonic,
                 logger: Optional[logging.Logger] = None, max_causes: int = 4096) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if isinstance(max_causes, bool) or not isinstance(max_causes, int) or max_causes < 1:
            raise ValueError(f"max_causes must be a positive integer, got {max_causes!r}")
        self.interval = float(interval)
        self._clock = clock
        self._logger = logger or _log
        self._max_causes = max_causes
        self._causes: Dict[str, _Cause] = {}
        self._next_flush = 0.0

    def allows(self, cause: str) -> bool:
        """Whether a line of ``cause`` would go out now (to skip building a held one)."""
        state = self._causes.get(cause)
        return state is None or self._clock() - state.since >= self.interval

    def __call__(self, level: int, cause: str, message: str, *args: Any) -> bool:
        """Log the line or hold it; True when it went out."""
        now = self._clock()
        state = self._causes.get(cause)
        if state is not None and now - state.since < self.interval:
            state.held += 1
            state.last = (level, message, args)
            return False
        if state is None:
            if len(self._causes) >= self._max_causes:
                self._prune(now)
            state = self._causes[cause] = _Cause(now)
        held, elapsed = state.held, now - state.since
        state.since, state.held, state.last = now, 0, None
        if held:
            message = f"{message} (and {held} more in the last {elapsed:.1f} s)"
        self._logger.log(level, message, *args)
        return True

    def flush(self) -> int:
        """Log the held lines of the causes whose interval is over (the last held line, with
        the count of the others), so the tail of a flood is reported too; returns how many
        lines went out. Cheap to call often: it looks at the causes once per interval/4."""
        now = self._clock()
        if now < self._next_flush:
            return 0
        self._next_flush = now + self.interval / 4
        out = 0
        for cause, state in list(self._causes.items()):
            if now - state.since < self.interval:
                continue
            if state.last is None:
                del self._causes[cause]  # idle: forget it (bounded memory)
                continue
            level, message, args = state.last
            more, elapsed = state.held - 1, now - state.since
            state.since, state.held, state.last = now, 0, None
            if more:
                message = f"{message} (and {more} more in the last {elapsed:.1f} s)"
            self._logger.log(level, message, *args)
            out += 1
        return out

    def _prune(self, now: float) -> None:
        """Too many causes: forget the idle ones, or all when none is idle."""
        for cause in [c for c, s in self._causes.items()
                      if s.last is None and now - s.since >= self.interval]:
            del self._causes[cause]
        if len(self._causes) >= self._max_causes:
            self._causes.clear()
