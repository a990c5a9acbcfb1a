"""Server statistics: request counts and latency per command, in fixed memory.

Pure (no socket, no clock of its own): the loop calls :meth:`Stats.record` once per
answered request with the duration it measured; INFO reads :meth:`Stats.snapshot`.
Latency is kept in a log-bucket histogram per command over a recent window: two
histograms, the current one and the previous one, swapped every ``window`` seconds,
so memory is bounded by the number of commands times the number of buckets. An all-time
histogram per command is kept beside them for Prometheus (metrics.py), whose histograms
must only grow. Not locked: only the loop's thread touches it (the metrics thread gets
copies from the loop, :meth:`Stats.all_time`).
"""

import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

__all__ = ["LatencyHistogram", "Stats", "CommandTotals"]

#: bucket i holds durations in [_BASE * 2**(i/_PER_OCTAVE), next); 4 per octave ~ 19 % error
_BASE = 1e-6
_PER_OCTAVE = 4
_BUCKETS = 4 * 28  # 1 us .. ~4.5 min; longer lands in the last bucket


def _bucket(seconds: float) -> int:
    if seconds <= _BASE:
        return 0
    i = int(math.log2(seconds / _BASE) * _PER_OCTAVE)
    return i if i < _BUCKETS else _BUCKETS - 1


def _upper(i: int) -> float:
    """The upper bound of bucket ``i`` (what a quantile in it reports)."""
    return _BASE * 2.0 ** ((i + 1) / _PER_OCTAVE)


class LatencyHistogram:
    """Counts of durations in fixed log buckets, plus their count, sum and max."""

    __slots__ = ("counts", "count", "total", "max")

    def __init__(self) -> None:
        self.counts: List[int] = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> int:
        """Count ``seconds``; returns its bucket (for a histogram kept beside this one)."""
        if seconds < 0:
            raise ValueError(f"a duration cannot be negative, got {seconds!r}")
        bucket = _bucket(seconds)
        self.counts[bucket] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        return bucket

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        out = LatencyHistogram()
        out.counts = [a + b for a, b in zip(self.counts, other.counts)]
        out.count = self.count + other.count
        out.total = self.total + other.total
        out.max = max(self.max, other.max)
        return out

    def quantile(self, q: float) -> Optional[float]:
        """The upper bound of the bucket holding the ``q`` quantile (capped at the max
        seen); None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, got {q!r}")
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.max if i == _BUCKETS - 1 else min(_upper(i), self.max)
        return self.max  # pragma: no cover - the counts sum to count


def cumulative_buckets(counts: List[int]) -> List[Tuple[float, int]]:
    """``(upper bound, count of durations <= it)`` at every octave of the buckets' range
    (a bucket boundary, so exact), ending with ``(inf, total)``: Prometheus's ``le``
    buckets, 28 of them rather than one per log bucket."""
    if len(counts) != _BUCKETS:
        raise ValueError(f"expected {_BUCKETS} bucket counts, got {len(counts)}")
    out: List[Tuple[float, int]] = []
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if i == _BUCKETS - 1:
            out.append((math.inf, seen))  # the last bucket also holds every longer one
        elif (i + 1) % _PER_OCTAVE == 0:
            out.append((_upper(i), seen))
    return out


class CommandTotals(NamedTuple):
    """One command's figures since start (a copy: safe to read on any thread)."""

    requests: int
    failures: Dict[int, int]  # error code -> count
    counts: List[int]         # all-time log-bucket counts (see cumulative_buckets)
    seconds: float            # the sum of the durations


class _CommandStats:
    __slots__ = ("requests", "failures", "current", "previous", "all_counts", "all_seconds")

    def __init__(self) -> None:
        self.requests = 0
        self.failures: Dict[int, int] = {}  # error code -> count
        self.current = LatencyHistogram()
        self.previous = LatencyHistogram()
        #: since start (their count is ``requests``): bare fields, cheap on the hot path
        self.all_counts: List[int] = [0] * _BUCKETS
        self.all_seconds = 0.0


class Stats:
    """Counts and recent latency of the requests a server answered.

    ``window``: seconds a latency histogram covers before it becomes the previous one
    (quantiles cover between one and two windows)."""

    def __init__(self, window: float = 60.0, now: float = 0.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        self.window = float(window)
        self._rotated = now
        self._commands: Dict[str, _CommandStats] = {}
        self.bytes_in = 0
        self.bytes_out = 0

    def record(self, cmd: str, seconds: float, now: float, error: Optional[int] = None,
               size_in: int = 0, size_out: int = 0) -> None:
        """One answered request: ``cmd`` took ``seconds``, ``error`` its error code when
        it failed; ``now`` is the caller's monotonic clock (for the window);
        ``size_in``/``size_out``: the request's and the reply's bytes."""
        if now - self._rotated >= self.window:
            self._rotate(now)
        entry = self._commands.get(cmd)
        if entry is None:
            entry = self._commands[cmd] = _CommandStats()
        entry.requests += 1
        if error is not None:
            entry.failures[error] = entry.failures.get(error, 0) + 1
        entry.all_counts[entry.current.add(seconds)] += 1
        entry.all_seconds += seconds
        self.bytes_in += size_in
        self.bytes_out += size_out

    def _rotate(self, now: float) -> None:
        stale = now - self._rotated >= 2 * self.window  # nothing recent in current either
        for entry in self._commands.values():
            entry.previous = LatencyHistogram() if stale else entry.current
            entry.current = LatencyHistogram()
        self._rotated = now

    def snapshot(self, now: float) -> Dict[str, Any]:
        """``{"commands": {cmd: {requests, failures, p50, p90, p99, max}}, "bytes_in",
        "bytes_out"}``; latencies in seconds over the recent window (None when none)."""
        if now - self._rotated >= self.window:
            self._rotate(now)
        commands: Dict[str, Any] = {}
        for cmd, entry in sorted(self._commands.items()):
            recent = entry.current.merge(entry.previous)
            commands[cmd] = {
                "requests": entry.requests,
                "failures": {str(code): n for code, n in entry.failures.items()},
                "p50": recent.quantile(0.5), "p90": recent.quantile(0.9),
                "p99": recent.quantile(0.99),
                "max": recent.max if recent.count else None,
            }
        return {"commands": commands, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    def totals(self) -> Tuple[int, int]:
        """(requests, failures) over every command since start."""
        requests = sum(e.requests for e in self._commands.values())
        failures = sum(sum(e.failures.values()) for e in self._commands.values())
        return requests, failures

    def all_time(self) -> Dict[str, CommandTotals]:
        """Each command's figures since start, copied (another thread may keep them)."""
        return {cmd: CommandTotals(e.requests, dict(e.failures), list(e.all_counts),
                                   e.all_seconds) for cmd, e in self._commands.items()}


def reply_error(frames: List[Any]) -> Optional[int]:
    """The error code of a reply ``[header, content]`` when it is a failure, else None;
    a success costs one byte comparison (the header's first value is its status)."""
    header = frames[0]
    # fixmap, "status" as a 6-byte fixstr, then the status: -1 (FAILURE) packs as 0xff
    if len(header) > 8 and header[8] == 0xff:
        import msgpack
        code = msgpack.unpackb(header, raw=False).get("err_code")
        return code if isinstance(code, int) else -1
    return None
