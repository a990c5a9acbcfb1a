"""PageStream: an iteration streamed by the server page by page (one iterator, one
snapshot) over a socket leased from the pool for the iteration's life, given back when
the iteration ends, is closed, or is garbage-collected."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, Optional, Tuple

from . import pids
from .protocol import Reply

__all__ = ["PageStream", "StreamSlots", "RESUME_IDLE"]

#: a stream left untaken this long may have been closed by the server (which closes one
#: that gets no credit for 30 s): the iteration goes on from a new stream instead.
RESUME_IDLE = 15.0


class StreamSlots:
    """How many iterations of one pool may hold a socket at once: half its sockets, so
    that a thread iterating while it makes other calls (``for k, v in E.RangeIter():
    E.Put(...)``) never waits for a socket the iterations hold."""

    def __init__(self, max_size: int) -> None:
        self.maximum = max_size // 2
        self._lock = threading.Lock()
        self.open = 0
        self.opened = 0

    def take(self) -> bool:
        with self._lock:
            if self.open >= self.maximum:
                return False
            self.open += 1
            self.opened += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


class PageStream:
    """The pages of one streamed iteration, each a Reply (the last may be a failure), on
    ``conn``, which is given back by ``checkin`` when the stream ends or is closed.

    ``next_page()`` returns None when the stream has no more pages: it ended
    (``complete``), or it cannot go on and the iteration should resume after its last
    key on a new one: it was left untaken for RESUME_IDLE seconds, or the process forked
    (the child never touches the parent's socket).
    """

    def __init__(self, conn: Any, pages: Iterator[Tuple[Reply, bool]],
                 checkin: Callable[[Any], None], release: Callable[[], None]) -> None:
        self._conn = conn
        self._pages: Optional[Iterator[Tuple[Reply, bool]]] = pages
        self._checkin = checkin
        self._release = release
        self._pid = pids.current()
        self.taken: Optional[float] = None  # when the last page was taken
        self.complete = False
        self._ended = False  # the last page was taken

    def next_page(self) -> Optional[Reply]:
        """The next page; None when this stream has no more: at its end (``complete``
        is then True) or when the iteration must resume after its last key on a new
        stream. Raises the transport's errors (the stream is closed then)."""
        if self._pages is None:
            return None
        if self._ended:
            self.complete = True
            self.close()
            return None
        if self._pid != pids.current():
            self._pages = None  # the parent's socket and stream: leave them be
            return None
        if self.taken is not None and time.monotonic() - self.taken > RESUME_IDLE:
            self.close()
            return None
        try:
            page, self._ended = next(self._pages)
        except BaseException:
            self.close()
            raise
        self.taken = time.monotonic()
        return page

    def close(self) -> None:
        """Close the stream (the server releases its snapshot) and give the socket back."""
        pages, self._pages = self._pages, None
        if pages is None or self._pid != pids.current():
            return
        try:
            close = getattr(pages, "close", None)
            if close is not None:
                close()  # CREDIT [id, 0] unless the stream had ended
        finally:
            self._checkin(self._conn)
            self._release()

    def __del__(self) -> None:
        self.close()
