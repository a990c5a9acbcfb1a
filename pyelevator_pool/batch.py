"""PendingWrites: the operations of a WriteBatch, collected until they are written.

No I/O here: :class:`~pyelevator_pool.client.WriteBatch` adds the client that writes them.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, List, Tuple

from .args import Key, Value, to_bytes
from .protocol import BATCH_DELETE, BATCH_PUT

__all__ = ["PendingWrites", "Op"]

#: one operation of a BATCH: (BATCH_PUT, key, value) or (BATCH_DELETE, key)
Op = Tuple[Any, ...]


class PendingWrites:
    """Puts and deletes in the order they were added, safe to add from several threads."""

    def __init__(self) -> None:
        self._ops: List[Op] = []
        self._lock = threading.Lock()
        #: how many operations make :meth:`_filled` run (a subclass that streams lowers it)
        self._mark = sys.maxsize

    def __len__(self) -> int:
        return len(self._ops)

    # Put and Delete are the per-item hot path of a bulk load (python -m benchmarks):
    # an op is a tuple (packed as the same msgpack array; a tuple of bytes and an int
    # leaves the GC's tracking, a list never does), added with one list.append, atomic
    # without the lock (appends land after the prefix that written() removes).

    def Put(self, key: Key, value: Value) -> None:
        """Add a put of ``value`` under ``key`` (str or bytes; TypeError otherwise)."""
        ops = self._ops
        if key.__class__ is bytes and value.__class__ is bytes:
            ops.append((BATCH_PUT, key, value))
        else:
            ops.append((BATCH_PUT, to_bytes(key), to_bytes(value, "value")))
        if len(ops) >= self._mark:
            self._filled()

    def Delete(self, key: Key) -> None:
        """Add a delete of ``key``."""
        ops = self._ops
        ops.append((BATCH_DELETE, to_bytes(key)))
        if len(ops) >= self._mark:
            self._filled()

    def _filled(self) -> None:
        """Called when the operations reach ``_mark``: nothing to do here (no I/O)."""

    def Clear(self) -> None:
        """Discard every pending operation."""
        with self._lock:
            self._ops.clear()

    def pending(self) -> List[Op]:
        """A copy of the operations to write now."""
        with self._lock:
            return list(self._ops)

    def written(self, count: int) -> None:
        """The first ``count`` operations were written: drop them (later ones stay)."""
        with self._lock:
            del self._ops[:count]
