"""How every benchmark here measures, written once: the clock, the statistics (median,
percentile, spread), the interleaving of implementations, CPU meters, and what was
measured where (machine, commit).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

__all__ = ["timed", "median", "percentile", "spread", "rotated", "interleaved", "process_cpu",
           "CpuMeter", "machine", "machine_line", "code_version"]

T = TypeVar("T")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ the clock

def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` took (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------- statistics

def median(values: Sequence[float]) -> float:
    """The median; nan when there is no value."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> Optional[float]:
    """How noisy repeated measurements were: (max - min) / median; None for fewer than
    two values (one run says nothing about noise)."""
    if len(values) < 2:
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else None


# --------------------------------------------------------------- interleaving

def rotated(items: Sequence[T], round_: int) -> List[T]:
    """``items`` in the order of round ``round_``: rotated each round, so that none always
    runs right after the same other one (caches, compactions)."""
    if not items:
        return []
    k = round_ % len(items)
    return list(items[k:]) + list(items[:k])


def interleaved(runs: Mapping[str, Callable[[], float]], repeat: int) -> Dict[str, List[float]]:
    """Call every one of ``runs`` (each returns the seconds it measured) ``repeat`` times,
    round r of all before round r+1 of any, in a rotating order: a burst of load from
    elsewhere on a shared machine falls on every implementation alike."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    order = list(runs.items())
    for r in range(repeat):
        for name, run in rotated(order, r):
            times[name].append(run())
    return times


# ---------------------------------------------------------------------- CPU

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: Optional[int]) -> Optional[float]:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU used by this process (all its threads) and by a server process between
    :meth:`start` and :meth:`per_op`: on two shared cores, CPU is what bounds a rate."""

    def __init__(self, server_pid: Optional[int]) -> None:
        self.server_pid = server_pid
        self._client = 0.0
        self._server: Optional[float] = None

    def start(self) -> None:
        self._client = time.process_time()
        self._server = process_cpu(self.server_pid)

    def per_op(self, ops: int) -> Tuple[Optional[float], Optional[float]]:
        """(client, server) CPU seconds per operation since :meth:`start`."""
        client = (time.process_time() - self._client) / ops if ops else None
        now = process_cpu(self.server_pid)
        server = (now - self._server) / ops if ops and now is not None \
            and self._server is not None else None
        return client, server


# ------------------------------------------------------ what ran, and where

def machine() -> Dict[str, str]:
    """CPU count and model, Python, OS: the facts a figure depends on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux
        pass
    return {"cpus": str(os.cpu_count()), "cpu_model": model,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "os": f"{platform.system()} {platform.release()} ({platform.machine()})"}


def machine_line() -> str:
    """``"<cpu model>, <n> CPUs, <OS>"``."""
    m = machine()
    return f"{m['cpu_model']}, {m['cpus']} CPUs, {m['os']}"


def code_version(root: str = ROOT) -> str:
    """The git commit of the checkout at ``root``, and whether the measured code (the
    ``.py`` files of ``pyelevator_pool/`` and ``benchmarks/``) has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain", "--", "pyelevator_pool", "benchmarks")
    except (OSError, subprocess.SubprocessError):
        commit, status = "", ""
    if not commit:
        return "unknown (not a git checkout)"
    # Code only: the generated README and results of a previous run do not count.
    dirty = [line for line in status.splitlines() if line.endswith(".py")]
    return commit + (" + uncommitted changes" if dirty else "")
