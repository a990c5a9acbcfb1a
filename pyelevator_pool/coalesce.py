"""Coalescer: concurrent small calls on one database, merged into one request.

Leader/follower, with no thread and no timer of its own. A caller that finds no request
of its group in flight sends its own plain request and pays one lock. A caller that
finds one in flight queues; when a request of the group completes, the thread that sent
it takes the queue as one batch and wakes one of the queued callers to send it as one
merged request (an MGET, a BATCH), then gives each caller its own part of the answer.

Each caller keeps its own deadline: queued past it, it leaves the queue (never sent);
taken into a batch, it stops waiting (sent, like any timed-out call). The leader is the
member with the latest deadline, so the merged request outlives no member's patience
and is cut short by none. Batches of one group are sent one after another, in queue
order, so concurrent writes to one key are applied in the order they were queued.

Pure logic: what a request is, and how it is sent, is given by the caller
(:class:`~pyelevator_pool.client.Elevator`).
"""
from __future__ import annotations

import copy
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Sequence

from . import errors

__all__ = ["Coalescer", "MAX_ITEMS", "MAX_BYTES"]

#: items (keys or operations) in one merged request: far below any server's max_keys
#: (LIMITS never goes under 1000), so a merged request never needs the limits.
MAX_ITEMS = 512
#: payload bytes in one merged request: below the smallest max_message_size a server
#: may set (64 KiB), so a merged request is never refused for its size.
MAX_BYTES = 48 * 1024

_QUEUED, _TAKEN, _LEAD, _DONE, _GONE = range(5)

Alone = Callable[[], Any]
Merged = Callable[[List[Any], float], Optional[List[Any]]]
#: told, in the caller's thread, that its call is answered by a merged request (True: the
#: caller's thread sends it)
Note = Callable[[bool], None]


class _Waiter:
    """One queued call: its items, its deadline, and a lock its thread blocks on."""

    __slots__ = ("items", "size", "deadline", "alone", "lock", "state", "batch", "result",
                 "error")

    def __init__(self, items: Sequence[Any], size: int, deadline: float, alone: Alone) -> None:
        self.items = items
        self.size = size
        self.deadline = deadline
        self.alone = alone
        self.lock = threading.Lock()
        self.lock.acquire()  # released by whoever decides this call's fate
        self.state = _QUEUED
        self.batch: List["_Waiter"] = []
        self.result: Any = None
        self.error: Optional[BaseException] = None


class _Group:
    __slots__ = ("in_flight", "queue")

    def __init__(self) -> None:
        self.in_flight = 0
        self.queue: Deque[_Waiter] = deque()


#: every Coalescer of this process. A forked child inherits queued waiters and in-flight
#: counts of threads it does not have: it starts each one empty, or its first caller
#: would queue forever.
_LIVE: "weakref.WeakSet[Coalescer]" = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for coalescer in list(_LIVE):
        coalescer._reset()


class Coalescer:
    """Merges the concurrent calls of each group (a database and a kind of request).

    :param max_alone: requests of one group in flight before callers queue.
    :param max_in_flight: a queued batch is sent only while fewer than this are in
        flight (1: after every earlier request of the group completed).
    """

    def __init__(self, *, max_alone: int = 1, max_in_flight: int = 1,
                 max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self.max_alone = max_alone
        self.max_in_flight = max_in_flight
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._groups: Dict[Hashable, _Group] = {}
        #: calls answered by a merged request, and the merged requests sent for them
        self.merged_calls = 0
        self.merged_requests = 0
        self.timeouts = 0  # queued or merged calls whose deadline passed first

    def queued(self) -> int:
        """Calls waiting in a queue now."""
        with self._lock:
            return sum(len(g.queue) for g in self._groups.values())

    def call(self, group: Hashable, items: Sequence[Any], size: int, deadline: float,
             alone: Alone, merged: Merged, describe: str, note: Optional[Note] = None) -> Any:
        """The result of one call of ``group``: ``alone()`` when it goes on its own,
        else its share of ``merged(items of the batch, deadline)``, which returns one
        result per item (a read) or None (a write: every member gets None).

        ``items`` must already be checked: a merged request carries other callers' items
        too. ``size`` is their payload in bytes. ``describe`` names the call in errors.
        ``note``: told when the call is answered (or failed) by a merged request.
        """
        with self._lock:
            g = self._groups.get(group)
            if g is None:
                g = self._groups[group] = _Group()
            if g.in_flight < self.max_alone and not g.queue:
                g.in_flight += 1
                w = None
            else:
                w = _Waiter(items, size, deadline, alone)
                g.queue.append(w)
        if w is None:
            try:
                return alone()
            finally:
                self._finished(g)
        return self._wait(g, w, merged, describe, note)

    # ----------------------------------------------------------------- internals

    def _finished(self, g: _Group) -> None:
        """A request of ``g`` completed: send the queue on as the next batch."""
        with self._lock:
            g.in_flight -= 1
            if not g.queue or g.in_flight >= self.max_in_flight:
                return
            batch = self._take(g)
            g.in_flight += 1
            leader = max(batch, key=lambda m: m.deadline)
            for m in batch:
                m.state = _TAKEN
            leader.state = _LEAD
            leader.batch = batch
        leader.lock.release()

    def _take(self, g: _Group) -> List[_Waiter]:
        """The callers at the front of the queue that fit in one request (at least one)."""
        queue = g.queue
        batch = [queue.popleft()]
        items, size = len(batch[0].items), batch[0].size
        while queue:
            nxt = queue[0]
            items += len(nxt.items)
            size += nxt.size
            if items > self.max_items or size > self.max_bytes:
                break
            batch.append(queue.popleft())
        return batch

    def _wait(self, g: _Group, w: _Waiter, merged: Merged, describe: str,
              note: Optional[Note]) -> Any:
        remaining = w.deadline - time.monotonic()
        decided = w.lock.acquire(timeout=remaining) if remaining > 0 else w.lock.acquire(False)
        if not decided:
            with self._lock:
                state = w.state
                if state == _QUEUED:
                    g.queue.remove(w)
                    self.timeouts += 1
                elif state == _TAKEN:
                    w.state = _GONE
                    self.timeouts += 1
            if state == _QUEUED:
                raise errors.ElevatorTimeout(
                    f"{describe}: no reply within the call's timeout (it waited to be sent "
                    "with other threads' calls and was never sent)", request_sent=False)
            if state == _TAKEN:
                if note is not None:
                    note(False)
                raise errors.ElevatorTimeout(
                    f"{describe}: no reply within the call's timeout (sent merged with "
                    "other threads' calls)", request_sent=True)
            w.lock.acquire()  # its fate was decided at the deadline: wait the moment out
        if w.state == _LEAD:
            return self._lead(g, w, merged, describe, note)
        if note is not None:
            note(False)
        if w.error is not None:
            raise _own(w.error)
        return w.result

    def _lead(self, g: _Group, leader: _Waiter, merged: Merged, describe: str,
              note: Optional[Note]) -> Any:
        batch = leader.batch
        leader.batch = []
        results: Optional[List[Any]] = None
        error: Optional[BaseException] = None
        try:
            if leader.deadline <= time.monotonic():
                # woken at its deadline: the latest of the batch, so every member's passed
                raise errors.ElevatorTimeout(
                    f"{describe}: no reply within the call's timeout (it waited to be sent "
                    "with other threads' calls and was never sent)", request_sent=False)
            if len(batch) == 1:
                results = [leader.alone()]
            else:
                if note is not None:
                    note(True)
                flat = [item for m in batch for item in m.items]
                answers = merged(flat, leader.deadline)
                results = _split(batch, answers)
                with self._lock:
                    self.merged_calls += len(batch)
                    self.merged_requests += 1
        except BaseException as exc:  # every member must hear of it, whatever it is
            error = exc
        finally:
            self._finished(g)
        mine: Any = None
        with self._lock:
            for i, m in enumerate(batch):
                if m is leader:
                    mine = None if results is None else results[i]
                    continue
                if m.state == _GONE:
                    continue
                m.state = _DONE
                if error is not None:
                    m.error = error if isinstance(error, Exception) else errors.ConnectionError(
                        "the thread sending this call merged with its own was interrupted "
                        f"({type(error).__name__})", request_sent=True)
                else:
                    m.result = results[i]  # type: ignore[index]
                m.lock.release()
        if error is not None:
            raise error
        return mine


def _split(batch: List[_Waiter], answers: Optional[List[Any]]) -> List[Any]:
    """Each member's share of a merged answer: its slice of a read, None for a write."""
    if answers is None:
        return [None] * len(batch)
    out: List[Any] = []
    at = 0
    for m in batch:
        n = len(m.items)
        out.append(answers[at:at + n])
        at += n
    return out


def _own(exc: BaseException) -> BaseException:
    """A copy of a merged request's error for one member, so that threads raising it at
    once do not share (and rewrite) one traceback."""
    try:
        mine = copy.copy(exc)
    except Exception:
        return exc
    return mine if type(mine) is type(exc) else exc


os.register_at_fork(after_in_child=_reset_all_after_fork)
