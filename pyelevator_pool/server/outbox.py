"""Replies on their way out: sent at once when the peer's queue has room, else held, bounded.

The ROUTER socket runs with ``ROUTER_MANDATORY``: a send to a peer whose queue is full
raises instead of dropping the reply silently (libzmq's default), and a send to a peer
that went away says so. A reply that cannot go out at once waits in that peer's backlog,
in order; the backlog is bounded per peer in count and bytes, so a client that stops
reading costs the server a bounded amount of memory and nothing of anyone else's.
"""
from __future__ import annotations

import errno
import logging
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Sequence

import zmq

from .ratelog import RateLimitedLog

__all__ = ["Outbox", "RateLimitedLog", "PEER_BACKLOG_BYTES", "PEER_BACKLOG_COUNT"]

log = logging.getLogger("elevator.server")

#: replies held for one peer that is not reading, beyond what ZeroMQ's own queue holds
PEER_BACKLOG_BYTES = 64 * 1024 * 1024
PEER_BACKLOG_COUNT = 10_000
#: messages ZeroMQ queues per peer before a send reports the queue full: small, because
#: each may be a large reply, and the backlog above takes over beyond it
ROUTER_SNDHWM = 32


_SENT, _FULL, _GONE = object(), object(), object()


class _Backlog:
    __slots__ = ("replies", "size")

    def __init__(self) -> None:
        self.replies: Deque[List[Any]] = deque()
        self.size = 0


class Outbox:
    """Sends reply frames to peers of a ROUTER socket without ever blocking the loop."""

    def __init__(self, front: zmq.Socket, on_gone: Callable[[bytes], None], *,
                 rate_log: RateLimitedLog) -> None:
        self._front = front
        self._on_gone = on_gone
        self._log = rate_log
        self._backlogs: Dict[bytes, _Backlog] = {}
        self.dropped = 0

    @staticmethod
    def configure(front: zmq.Socket) -> None:
        """The socket options this class relies on (set before bind)."""
        front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        front.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)

    def backlog_bytes(self, ident: bytes) -> int:
        backlog = self._backlogs.get(ident)
        return backlog.size if backlog is not None else 0

    def has_backlog(self) -> bool:
        return bool(self._backlogs)

    def backlogged_peers(self) -> int:
        """Clients with replies held for them."""
        return len(self._backlogs)

    def send(self, ident: bytes, frames: Sequence[Any]) -> None:
        """Send ``frames`` (one reply) to ``ident`` now, or hold them after its earlier ones."""
        backlog = self._backlogs.get(ident)
        if backlog is None:
            outcome = self._try_send(ident, frames)
            if outcome is not _FULL:
                return  # sent, or the peer is gone and the reply moot
            backlog = self._backlogs[ident] = _Backlog()
        size = sum(map(len, frames))
        if len(backlog.replies) >= PEER_BACKLOG_COUNT or backlog.size + size > PEER_BACKLOG_BYTES:
            self.dropped += 1
            self._log(logging.WARNING, "backlog-full",
                      "a client is not reading its replies (%d held, %d bytes): dropping a "
                      "reply to it", len(backlog.replies), backlog.size)
            return
        backlog.replies.append(list(frames))
        backlog.size += size

    def _try_send(self, ident: bytes, frames: Sequence[Any]) -> object:
        try:
            self._front.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            return _SENT
        except zmq.Again:
            return _FULL
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.forget(ident)
            self._on_gone(ident)
            return _GONE

    def flush(self) -> None:
        """Send what the peers' queues now have room for."""
        for ident in list(self._backlogs):
            backlog = self._backlogs.get(ident)
            while backlog is not None and backlog.replies:
                frames = backlog.replies[0]
                if self._try_send(ident, frames) is not _SENT:
                    break
                backlog.replies.popleft()
                backlog.size -= sum(map(len, frames))
            if backlog is not None and not backlog.replies:
                self._backlogs.pop(ident, None)

    def forget(self, ident: bytes) -> None:
        self._backlogs.pop(ident, None)
