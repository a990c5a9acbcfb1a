"""WriteBatch: puts and deletes applied atomically by one BATCH request."""
from __future__ import annotations

import threading
from typing import Any, List, Optional

from .client import Elevator, Key, Value, to_bytes
from .protocol import BATCH_DELETE, BATCH_PUT

__all__ = ["WriteBatch"]


class WriteBatch:
    """Collects ``Put`` and ``Delete`` operations and applies them all or none with ``Write``.

    ``WriteBatch(db_name, endpoint=..., ...)`` takes the same arguments as
    :class:`Elevator` and opens a client of its own; ``Elevator.WriteBatch()`` shares
    its parent's pool, database and settings.

    ``Write`` is atomic on the server. On success the batch is emptied; on failure it
    is kept, so it can be written again (PUT and DELETE converge when repeated).

    As a context manager it writes on a clean exit and discards the operations when
    the block raises. (The original py-elevator wrote even then, applying half of
    the caller's work; here an exception means nothing of the block is written.)
    Operations added by other threads while ``Write`` runs are kept for the next one.
    """

    def __init__(self, db_name: Optional[str] = None, *, elevator: Optional[Elevator] = None,
                 **elevator_options: Any) -> None:
        if elevator is not None:
            if not isinstance(elevator, Elevator):
                raise TypeError(f"elevator must be an Elevator, not {type(elevator).__name__}")
            if db_name is not None or elevator_options:
                raise ValueError("give db_name and client options to the Elevator, "
                                 "not to a WriteBatch made from it")
            self._client = elevator
            self._owns_client = False
        else:
            self._client = Elevator(db_name, **elevator_options)
            self._owns_client = True
        self._ops: List[tuple] = []
        self._lock = threading.Lock()

    @property
    def db_name(self) -> str:
        return self._client.db_name

    def __len__(self) -> int:
        return len(self._ops)

    def __repr__(self) -> str:
        return f"<WriteBatch db={self.db_name!r} ops={len(self._ops)}>"

    # Put and Delete are the per-item hot path of a bulk load (python -m benchmarks):
    # an op is a tuple (packed as the same msgpack array; a tuple of bytes and an int
    # leaves the GC's tracking, a list never does), and it is added with one
    # list.append, atomic without the lock (appends land after the prefix that Write
    # removes). Both measured: 36 ms -> 13 ms for 100,000 Puts.

    def Put(self, key: Key, value: Value) -> None:
        """Add a put of ``value`` under ``key`` (str or bytes; TypeError otherwise)."""
        if key.__class__ is bytes and value.__class__ is bytes:
            self._ops.append((BATCH_PUT, key, value))
        else:
            self._ops.append((BATCH_PUT, to_bytes(key), to_bytes(value, "value")))

    def Delete(self, key: Key) -> None:
        """Add a delete of ``key``."""
        self._ops.append((BATCH_DELETE, to_bytes(key)))

    def Clear(self) -> None:
        """Discard every pending operation."""
        with self._lock:
            self._ops.clear()

    def Write(self, *, timeout: Optional[float] = None) -> None:
        """Apply every pending operation atomically; empty the batch on success.

        ``timeout`` (seconds) overrides the client's default deadline. Raises what
        :class:`Elevator` calls raise (TypeError/SignalError from the server for a
        malformed op, ElevatorTimeout...); on any failure the operations are kept.
        """
        with self._lock:
            ops = list(self._ops)
        if not ops:
            return
        self._client._write_batch(ops, timeout)
        with self._lock:
            del self._ops[:len(ops)]

    def close(self) -> None:
        """Release the client's sockets if this batch opened its own client."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "WriteBatch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.Write()
            else:
                self.Clear()
        finally:
            self.close()
