"""One pause of the cyclic garbage collector, for the client and the server.

Building or unpacking a 100k-item structure (a BATCH's ops, a RANGE's pairs) triggers
collection after collection that find nothing (the Range and WriteBatch rows of
``python -m benchmarks`` show the cost). :func:`gc_paused` turns it off for such a stretch.

The collector is one switch for the whole process, so the pausers are counted under a
lock: it is turned off by the first one and put back by the last one to leave, in the
state it was in before the first paused (a GC the application had disabled stays
disabled). Pauses nest, in one thread or across several. A process forked while some
thread is inside a pause never inherits a paused collector: the child has none of those
threads, so its count starts again at zero and the state from before the pause comes back.
"""
from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["gc_paused", "pausers"]

_lock = threading.Lock()
#: pauses now in progress in this process
_pausers = 0
#: whether the GC was enabled before the first of them
_was_enabled = False
#: bumped in a forked child: a pause begun before the fork must not end one begun after
_generation = 0


def _after_fork_in_child() -> None:
    global _lock, _pausers, _generation
    _lock = threading.Lock()  # it may have been held by a thread that is gone
    _generation += 1
    if _pausers:
        _pausers = 0
        if _was_enabled:
            gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for the ``with`` block (re-entrant, across threads too)."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
        generation = _generation
    try:
        yield
    finally:
        with _lock:
            # After a fork in this very block the child's count was reset without it.
            if generation == _generation:
                _pausers -= 1
                if _pausers == 0 and _was_enabled:
                    gc.enable()


def pausers() -> int:
    """How many pauses are in progress in this process (for tests and diagnostics)."""
    return _pausers
