"""PendingBatches: the streamed WriteBatches a server holds until their final chunk.

No sockets and no LevelDB calls here: the dispatcher (handlers.py) fills each batch's
LevelDB write batch and writes it; this module keeps them, keyed by (client, batch id),
within bounds: so many per client and in all, so many bytes in all, and an idle time
after which a batch is dropped (its client died or gave up). A dropped batch is never
written: a later chunk or the final one finds it missing, and the client is told so.

A batch is touched by one worker at a time (its chunks run in its database's write
lane, in order); the loop thread expires, aborts and reports. One lock guards the map.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["PendingBatch", "PendingBatches", "BATCHES_PER_PEER", "BATCHES_MAX",
           "BATCH_BYTES_MAX", "DEFAULT_BATCH_IDLE"]

#: pending batches one client may hold at once, and all clients together
BATCHES_PER_PEER = 16
BATCHES_MAX = 1024
#: bytes of chunk frames held by every pending batch together (their LevelDB write
#: batches hold about as much)
BATCH_BYTES_MAX = 1024 * 1024 * 1024
#: seconds a pending batch may wait for its next chunk before it is dropped
DEFAULT_BATCH_IDLE = 60.0

Key = Tuple[bytes, Any]


class PendingBatch:
    """One streamed batch being received: its LevelDB write batch (None once failed),
    the database handle it belongs to, and what the next chunk must be."""

    __slots__ = ("key", "uid", "handle", "wb", "ops", "size", "next_seq", "last_active",
                 "error", "busy")

    def __init__(self, key: Key, uid: str, handle: Any, wb: Any) -> None:
        self.key = key
        self.uid = uid
        self.handle = handle
        self.wb = wb
        self.ops = 0
        self.size = 0
        self.next_seq = 0
        self.last_active = time.monotonic()
        #: the failure the final chunk answers (a CommandError), once a chunk failed
        self.error: Optional[Exception] = None
        self.busy = False  # a worker is filling it: not expired under its feet

    def fail(self, error: Exception) -> None:
        """Nothing of this batch will be written: free its operations, keep the reason."""
        if self.error is None:
            self.error = error
        if self.wb is not None:
            self.wb.clear()
            self.wb = None


class PendingBatches:
    def __init__(self, idle: float = DEFAULT_BATCH_IDLE, *, per_peer: int = BATCHES_PER_PEER,
                 total: int = BATCHES_MAX, max_bytes: int = BATCH_BYTES_MAX) -> None:
        if idle <= 0:
            raise ValueError(f"the idle time of a pending batch must be > 0, not {idle!r}")
        self.idle = idle
        self.per_peer = per_peer
        self.total = total
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._batches: Dict[Key, PendingBatch] = {}
        self._per_peer: Dict[bytes, int] = {}
        self.bytes = 0
        #: batches dropped unwritten: idle too long, aborted by their client, refused at
        #: their first chunk (bounds), failed (a chunk missing, over a limit, a bad op)
        self.expired = self.aborted = self.refused = self.failed = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._batches)

    def open(self, key: Key, uid: str, handle: Any, make_wb: Any) -> Optional[PendingBatch]:
        """A new batch (its first chunk came), or None when the bounds refuse it (the
        final chunk will then find it missing)."""
        ident = key[0]
        with self._lock:
            old = self._batches.get(key)
            if old is not None:  # an id reused by its client: the old batch is abandoned
                self._remove(old)
                self.aborted += 1
            if (len(self._batches) >= self.total
                    or self._per_peer.get(ident, 0) >= self.per_peer
                    or self.bytes >= self.max_bytes):
                self.refused += 1
                return None
            batch = PendingBatch(key, uid, handle, make_wb())
            batch.busy = True
            self._batches[key] = batch
            self._per_peer[ident] = self._per_peer.get(ident, 0) + 1
            return batch

    def take(self, key: Key) -> Optional[PendingBatch]:
        """The batch a later chunk adds to, marked busy (give it back with :meth:`done`)."""
        with self._lock:
            batch = self._batches.get(key)
            if batch is not None:
                batch.busy = True
            return batch

    def grow(self, batch: PendingBatch, size: int) -> bool:
        """Count ``size`` more bytes held by ``batch``; False when over the total bound."""
        with self._lock:
            if self.bytes + size > self.max_bytes:
                return False
            self.bytes += size
            batch.size += size
            return True

    def spoil(self, batch: PendingBatch, error: Exception) -> None:
        """A chunk of ``batch`` failed: free what it holds, keep ``error`` for the final
        chunk to answer."""
        with self._lock:
            self.bytes -= batch.size
            batch.size = 0
            batch.fail(error)

    def done(self, batch: PendingBatch) -> None:
        with self._lock:
            batch.busy = False
            batch.last_active = time.monotonic()

    def pop(self, key: Key) -> Optional[PendingBatch]:
        """Remove the batch of ``key`` (its final chunk came), or None when not held."""
        with self._lock:
            batch = self._batches.get(key)
            if batch is not None:
                self._remove(batch)
            return batch

    def finished(self, batch: PendingBatch, written: bool) -> None:
        """Count how a popped batch ended."""
        with self._lock:
            if written:
                self.written += 1
            else:
                self.failed += 1

    def abort(self, key: Key) -> bool:
        """The client dropped the batch (Clear, or a Write it gave up on)."""
        batch = self.pop(key)
        if batch is None:
            return False
        with self._lock:
            self.aborted += 1
        if not batch.busy:  # else the worker filling it sees it gone and frees it
            batch.fail(RuntimeError("aborted"))
        return True

    def expire(self, now: Optional[float] = None) -> List[PendingBatch]:
        """Drop the batches that waited longer than the idle time for a chunk; them."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [b for b in self._batches.values()
                     if not b.busy and now - b.last_active > self.idle]
            for batch in stale:
                self._remove(batch)
            self.expired += len(stale)
        for batch in stale:
            batch.fail(RuntimeError("expired"))
        return stale

    def held(self, batch: PendingBatch) -> bool:
        """Whether ``batch`` is still the one held under its key (not aborted or expired)."""
        with self._lock:
            return self._batches.get(batch.key) is batch

    def _remove(self, batch: PendingBatch) -> None:
        del self._batches[batch.key]
        ident = batch.key[0]
        left = self._per_peer.get(ident, 1) - 1
        if left > 0:
            self._per_peer[ident] = left
        else:
            self._per_peer.pop(ident, None)
        self.bytes -= batch.size
        batch.size = 0

    def stats(self) -> Dict[str, int]:
        """What INFO reports under ``batches``."""
        with self._lock:
            return {"pending": len(self._batches), "bytes": self.bytes,
                    "written": self.written, "expired": self.expired, "aborted": self.aborted,
                    "refused": self.refused, "failed": self.failed}
