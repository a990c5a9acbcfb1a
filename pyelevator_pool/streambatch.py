"""BatchStream: the sending side of one streamed WriteBatch (docs/protocol.rst).

A WriteBatch on a server that announces ``stream_batch`` (LIMITS) sends its operations
as chunks while they are being added (BATCHPART, never answered, so never waited for),
and the rest with the final chunk at ``Write`` (BATCHEND, answered once the server wrote
the whole batch atomically). All the chunks of a batch go on one socket, held from the
first chunk to the end (the server keys the batch by connection and batch id, and one
connection keeps them in order). A socket is held only when another stays free.
"""
from __future__ import annotations

import itertools
import time
from operator import itemgetter
from typing import Any, List, Optional

from . import errors, protocol
from .connection import Connection
from .pool import ElevatorPool
from .protocol import Reply

__all__ = ["BatchStream", "STREAM_CHUNK"]

#: operations per chunk. A chunk is encoded while the caller adds the next ones and the
#: server adds it to the pending batch on a worker meanwhile; what is left for Write is
#: at most one chunk plus LevelDB's write. 10,000 (about 0.4 MB for small pairs) is far
#: above a message's fixed cost, small enough that Write's last chunk costs a few ms and
#: that other writes to the database get their turn between chunks.
STREAM_CHUNK = 10_000

#: batch ids: unique per process, so a new one on every attempt (a resend never
#: meets an older attempt's chunks on the server)
_ids = itertools.count(1)


_KEY, _VALUE = itemgetter(1), itemgetter(2)


def wire_chunk(ops: List[Any]) -> List[Any]:
    """A chunk as sent: flat ``[k1, v1, k2, v2...]`` when it holds only puts (the server
    decodes a third as many objects), else the ops as BATCH has them."""
    flat: List[Any] = [None] * (2 * len(ops))
    try:
        # C-level maps: a comprehension over the ops cost twice as much
        flat[1::2] = list(map(_VALUE, ops))
    except IndexError:  # a delete, (0, key), has no value
        return ops
    flat[::2] = list(map(_KEY, ops))
    return flat


class BatchStream:
    """One streamed batch: its socket, id and the chunks sent. Not thread-safe (the
    WriteBatch calls it under its lock)."""

    def __init__(self, pool: ElevatorPool, conn: Connection, uid: str, max_keys: int) -> None:
        self._pool = pool
        self._conn: Optional[Connection] = conn
        self.uid = uid
        self.max_keys = max_keys
        self.id = next(_ids)
        #: chunks and operations sent so far
        self.parts = 0
        self.sent = 0
        #: a chunk could not be sent (or went on a connection that was lost since): the
        #: server cannot hold the whole batch, so Write sends it again
        self.broken = False

    @classmethod
    def open(cls, pool: ElevatorPool, uid: str, limits: dict) -> Optional["BatchStream"]:
        """A stream on a socket free now, or None (the server does not stream batches, or
        every socket is busy: the batch is then written as one BATCH)."""
        if protocol.STREAM_BATCH not in limits:
            return None
        # never the pool's last free socket: the batch's own thread may call on meanwhile
        if pool.stats()["in_use"] >= pool.max_size - 1:
            return None
        try:
            conn = pool.checkout(0)
        except errors.ElevatorError:  # none free now, or the pool is closed
            return None
        return cls(pool, conn, uid, limits.get("max_keys", 0) or 1 << 62)

    def part(self, ops: List[Any]) -> bool:
        """Send ``ops`` as the next chunk, without waiting; False when the stream broke."""
        conn = self._conn
        if self.broken or conn is None:
            return False
        if self.sent + len(ops) > self.max_keys:
            self.broken = True  # over the server's max_keys: Write refuses it before sending
            return False
        if not conn.notify(protocol.BATCHPART, [self.id, self.parts, wire_chunk(ops)], self.uid,
                           first=self.parts == 0, connect_timeout=self._pool.connect_timeout):
            self.broken = True
            return False
        self.parts += 1
        self.sent += len(ops)
        return True

    def end(self, ops: List[Any], deadline: float, whole: float) -> Reply:
        """Send the final chunk and return the server's answer (raises TransportError as
        a request does); :meth:`abort` then gives the socket back, and tells the server
        to drop the batch unless it was written."""
        conn = self._conn
        assert conn is not None and not self.broken
        reply = conn.request(protocol.BATCHEND, [self.id, self.parts, wire_chunk(ops)],
                             self.uid, timeout=max(deadline - time.monotonic(), 0.0),
                             connect_timeout=self._pool.connect_timeout, call_timeout=whole)
        if reply.status != protocol.Status.FAILURE:
            self.parts = 0  # written: nothing left to drop
        return reply

    def abort(self) -> None:
        """Tell the server to drop the batch (nothing of it is written), and give the
        socket back. Idempotent."""
        conn = self._conn
        if conn is not None and self.parts:
            conn.notify(protocol.BATCHABORT, [self.id], self.uid, first=False,
                        connect_timeout=0.0)
        self.release()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.checkin(conn)
