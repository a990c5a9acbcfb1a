"""Which heavy request runs next, and what each request may still cost: no sockets here.

The server's loop answers cheap requests itself and hands the rest (:meth:`is_heavy`)
to this scheduler, which gives them to the worker threads one at a time, so that:

* every client gets its turn: the queued requests of each client are taken round-robin,
  and one client may have only so many waiting (past that its requests are refused at
  once, with a RUNTIME failure whose ``err_detail`` says ``busy``), so a client sending
  hundreds of heavy requests delays only itself;
* writes to one database are applied in the order they were received: while one is
  queued or running, every later write to that database (even a cheap PUT) queues
  behind it in that database's lane, and a lane runs one task at a time;
* a request whose client stopped waiting (``meta.timeout``) before it could start is
  not started: it is answered with a TIMEOUT failure and nothing is done;
* a streamed reply (RANGE/SLICE with ``meta.stream``) sends a page only when its reader
  has credit for it (``meta.window`` pages, then one per CREDIT): a slow reader holds
  no worker and no more than ``window`` pages, and no page is ever dropped.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

from .. import protocol
from ..protocol import ErrorCode, ProtocolError, encode_error_reply
from .handlers import Dispatcher
from .outbox import PEER_BACKLOG_BYTES, Outbox, RateLimitedLog

__all__ = ["Scheduler", "Task", "WRITES"]

#: a streamed batch's chunks and abort take their turns in the lane too: in order
WRITES = (frozenset({protocol.PUT, protocol.DELETE, protocol.BATCH})
          | protocol.STREAM_BATCH_COMMANDS)
#: a streamed batch's chunks: run by a worker however small (the final one writes it all)
_STREAM_CHUNKS = frozenset({protocol.BATCHPART, protocol.BATCHEND})
_BULK = frozenset({protocol.MGET, protocol.BATCH, protocol.SLICE})
_SLOW_ADMIN = frozenset({protocol.DBREPAIR, protocol.DBCREATE, protocol.DBDROP,
                         protocol.DBMOUNT, protocol.DBUMOUNT, protocol.DBCONNECT})
_BIG_COUNT = 256          # MGET/BATCH/SLICE above this many items are heavy

#: heavy requests one client may have queued or running; more are refused at once
PEER_PENDING_MAX = 64
#: bytes of request frames queued for the workers, all clients together
PENDING_BYTES_MAX = 512 * 1024 * 1024
#: open streams per client, and in all
STREAMS_PER_PEER = 16
STREAMS_MAX = 1024
#: a stream whose reader sent no credit for this long is closed (its snapshot released)
STREAM_IDLE = 30.0
#: most credits a reader may hold ahead (a larger grant is capped)
_MAX_CREDITS = 1024


class Stream:
    """An open streamed reply: its page generator (one iterator, one snapshot) and credits."""

    __slots__ = ("key", "ident", "pages", "credits", "busy", "closing", "registered",
                 "last_active", "window")

    def __init__(self, ident: bytes, rid: Any, pages: Any, window: int) -> None:
        self.key = (ident, rid)
        self.ident = ident
        self.pages = pages
        self.window = window
        self.credits = window
        self.busy = True           # a page task is queued or running
        self.closing = False
        self.registered = False
        self.last_active = time.monotonic()


class Task:
    """One unit of work for a worker: a request (decoded or not) or a stream's next page."""

    __slots__ = ("ident", "frame", "request", "received", "lane", "stream", "size", "rid",
                 "more", "new_stream", "admitted", "request_size", "cmd")

    def __init__(self, ident: bytes, received: float, *, frame: Optional[bytes] = None,
                 request: Optional[protocol.Request] = None, lane: Optional[str] = None,
                 stream: Optional[Stream] = None, rid: Any = None,
                 request_size: int = 0, cmd: Optional[str] = None) -> None:
        self.ident = ident
        self.frame = frame
        self.request = request
        self.received = received
        self.lane = lane
        self.stream = stream
        self.size = len(frame) if frame is not None else 0
        #: bytes of the request frame, for the slow-request log (size counts queued frames)
        self.request_size = self.size or request_size
        self.rid = request.id if request is not None else rid
        self.more = False          # set by execute: a stream page that others follow
        self.new_stream: Optional[Stream] = None
        self.admitted = stream is None
        #: the command (peeked when the frame is not decoded yet), for the statistics
        self.cmd = request.cmd if request is not None else cmd


class _Peer:
    __slots__ = ("pending", "streams")

    def __init__(self) -> None:
        self.pending = 0
        self.streams = 0


def _window(request: protocol.Request) -> int:
    window = request.meta.get(protocol.WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        return protocol.DEFAULT_WINDOW
    return min(window, _MAX_CREDITS)


def _stream_id(value: Any) -> Any:
    if isinstance(value, bytes):  # a str id, as decoded with raw=True
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class Scheduler:
    """Queues, lanes and streams of the heavy requests. Used by the loop thread only, except
    :meth:`execute`, which a worker runs on a task the loop gave it."""

    def __init__(self, dispatcher: Dispatcher, outbox: Outbox, rate_log: RateLimitedLog) -> None:
        self._dispatcher = dispatcher
        self._outbox = outbox
        self._log = rate_log
        #: sources of work taken round-robin: ("p", client ident) or ("l", database uid)
        self._ready: "OrderedDict[Tuple[str, Any], Deque[Task]]" = OrderedDict()
        self._busy_lanes: Set[str] = set()
        self._peers: Dict[bytes, _Peer] = {}
        self._streams: Dict[Tuple[bytes, Any], Stream] = {}
        self.pending_bytes = 0
        self.refused = 0

    # ------------------------------------------------------------- admission

    @staticmethod
    def is_heavy(request: protocol.Request) -> bool:
        """Whether ``request`` may take long (it then goes to a worker)."""
        cmd, args = request.cmd, request.args
        if cmd == protocol.RANGE or cmd in _SLOW_ADMIN or cmd in _STREAM_CHUNKS:
            return True
        if cmd in _BULK and args:
            first = args[1] if cmd == protocol.SLICE and len(args) > 1 else args[0]
            if isinstance(first, int):
                return first > _BIG_COUNT
            return isinstance(first, list) and len(first) > _BIG_COUNT
        return False

    def write_must_wait(self, cmd: Optional[str], uid: Optional[str]) -> bool:
        """Whether a write must queue behind earlier writes to its database."""
        return cmd in WRITES and uid is not None and (
            uid in self._busy_lanes or ("l", uid) in self._ready)

    def submit(self, ident: bytes, received: float, *, request: Optional[protocol.Request] = None,
               frame: Optional[bytes] = None, rid: Any = None, cmd: Optional[str] = None,
               uid: Optional[str] = None, request_size: int = 0) -> None:
        """Queue a heavy request (decoded, or a frame too big to decode on the loop, with
        what :func:`peek` read of it), or refuse it at once when its client has too much
        waiting already. ``request_size``: the bytes of a decoded request's frame (for the logs)."""
        if request is not None:
            cmd, uid = request.cmd, request.uid
        peer = self._peers.get(ident)
        if peer is None:
            peer = self._peers[ident] = _Peer()
        size = len(frame) if frame is not None else 0
        reason = None
        unanswered = cmd in protocol.NOTIFICATIONS
        # a client pipelines a batch's chunks unanswered: bounded by bytes, not by count
        if peer.pending >= PEER_PENDING_MAX and not unanswered:
            reason = (f"this client already has {peer.pending} heavy requests waiting "
                      f"(at most {PEER_PENDING_MAX}): wait for their replies")
        elif self._outbox.backlog_bytes(ident) >= PEER_BACKLOG_BYTES // 2:
            reason = "this client is not reading its replies: read them before sending more"
        elif self.pending_bytes + size > PENDING_BYTES_MAX:
            reason = "the server has too many large requests waiting: retry later"
        elif request is not None and self._dispatcher.stream_page(request) and (
                peer.streams >= STREAMS_PER_PEER or len(self._streams) >= STREAMS_MAX):
            reason = (f"too many open streams (at most {STREAMS_PER_PEER} per client): "
                      "read or close the others first")
        if reason is not None:
            if unanswered:  # dropped: the batch's final chunk finds it incomplete
                self.refused += 1
                self._log(logging.WARNING, "refused-busy", "dropped %s from a client: %s",
                          cmd, reason)
            else:
                self._refuse(ident, rid if request is None else request.id, cmd, reason)
            return
        lane = uid if cmd in WRITES and uid else None
        task = Task(ident, received, frame=frame, request=request, lane=lane, rid=rid,
                    request_size=request_size, cmd=cmd)
        peer.pending += 1
        self.pending_bytes += size
        self._enqueue(("l", lane) if lane is not None else ("p", ident), task)

    def _refuse(self, ident: bytes, rid: Any, cmd: Optional[str], reason: str) -> None:
        self.refused += 1
        self._log(logging.WARNING, "refused-busy", "refused %s from a client: %s", cmd, reason)
        self._outbox.send(ident, encode_error_reply(
            ErrorCode.RUNTIME, f"{cmd or 'request'} refused: {reason}", id=rid,
            detail={"busy": reason}))

    def _enqueue(self, key: Tuple[str, Any], task: Task) -> None:
        queue = self._ready.get(key)
        if queue is None:
            queue = self._ready[key] = deque()
        queue.append(task)

    @staticmethod
    def expired_reply(request: protocol.Request, received: float) -> Optional[List[bytes]]:
        """The TIMEOUT failure for a request whose client stopped waiting before it could
        start (``meta.timeout`` ms after ``received``); None when it may start."""
        timeout = request.meta.get(protocol.TIMEOUT_MS) if request.meta else None
        if timeout is None or isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            return None
        if time.monotonic() <= received + timeout / 1000.0:
            return None
        return encode_error_reply(
            ErrorCode.TIMEOUT, f"{request.cmd}: not started: the client's deadline "
            f"({timeout} ms) passed while it waited; nothing was done", id=request.id)

    # -------------------------------------------------------------- dispatch

    def next_task(self) -> Optional[Task]:
        """The next task to run, taking the sources of work in turn; None when none may run."""
        for key in self._ready:
            if key[0] == "l" and key[1] in self._busy_lanes:
                continue  # that database's previous write is still running
            queue = self._ready[key]
            task = queue.popleft()
            if queue:
                self._ready.move_to_end(key)
            else:
                del self._ready[key]
            if task.lane is not None:
                self._busy_lanes.add(task.lane)
            return task  # the loop above ends here, so changing the dict is safe
        return None

    def has_work(self) -> bool:
        return bool(self._ready)

    def waiting(self) -> int:
        """Tasks queued, not yet handed to a worker."""
        return sum(len(q) for q in self._ready.values())

    def execute(self, task: Task) -> List[bytes]:
        """Run ``task`` (on a worker): its reply frames, or a stream's next page. Never
        raises but for a bug or MemoryError (the caller answers those)."""
        dispatcher = self._dispatcher
        if task.stream is not None:
            return self._page(task, task.stream)
        request = task.request
        if request is None:
            try:
                request = dispatcher.decode(task.frame or b"")
            except ProtocolError as exc:
                return dispatcher.decode_failure(exc)
        if request.cmd in protocol.NOTIFICATIONS:
            dispatcher.notify(request, task.ident, task.request_size)
            return []  # never answered
        expired = self.expired_reply(request, task.received)
        if expired is not None:
            return expired
        page = dispatcher.stream_page(request)
        if page:
            stream = Stream(task.ident, request.id, dispatcher.run_stream(request, page),
                            _window(request))
            task.new_stream = stream
            return self._page(task, stream)
        return dispatcher.run(request, task.ident)

    @staticmethod
    def _page(task: Task, stream: Stream) -> List[bytes]:
        frames, last = next(stream.pages)  # run_stream never raises, and ends with last
        task.more = not last
        return frames

    def complete(self, task: Task, frames: List[Any]) -> None:
        """Book a finished task and send its reply (on the loop thread)."""
        if task.admitted:
            peer = self._peers.get(task.ident)
            if peer is not None:
                peer.pending -= 1
            self.pending_bytes -= task.size
        if task.lane is not None:
            self._busy_lanes.discard(task.lane)
        stream = task.stream or task.new_stream
        if frames:  # none for a notification (a streamed batch's chunk)
            self._outbox.send(task.ident, frames)
        if stream is not None:
            stream.busy = False
            if not task.more or stream.closing:
                self._close(stream)
            else:
                if not stream.registered:
                    self._register(stream)
                stream.credits -= 1
                stream.last_active = time.monotonic()
                self._schedule_page(stream)
        self._forget_idle_peer(task.ident)

    # --------------------------------------------------------------- streams

    def _register(self, stream: Stream) -> None:
        old = self._streams.get(stream.key)
        if old is not None:
            self._close(old)  # an id reused by its client: the old stream is abandoned
        self._streams[stream.key] = stream
        stream.registered = True
        peer = self._peers.get(stream.ident)
        if peer is None:
            peer = self._peers[stream.ident] = _Peer()
        peer.streams += 1

    def _schedule_page(self, stream: Stream) -> None:
        if stream.busy or stream.closing or stream.credits <= 0:
            return
        stream.busy = True
        self._enqueue(("p", stream.ident), Task(stream.ident, time.monotonic(), stream=stream))

    def credit(self, ident: bytes, args: Any) -> None:
        """A CREDIT notification: ``[stream id, n]``; never answered."""
        if not isinstance(args, list) or len(args) != 2 or isinstance(args[1], bool) \
                or not isinstance(args[1], int) or args[1] < 0:
            self._log(logging.INFO, "bad-credit", "ignored a malformed CREDIT: %.80r", args)
            return
        stream = self._streams.get((ident, _stream_id(args[0])))
        if stream is None:
            return  # already ended: credits and closes may cross the last page
        if args[1] == 0:
            self._close(stream)
            return
        stream.credits = min(stream.credits + args[1], _MAX_CREDITS)
        stream.last_active = time.monotonic()
        self._schedule_page(stream)

    def _close(self, stream: Stream) -> None:
        if stream.registered:
            stream.registered = False
            self._streams.pop(stream.key, None)
            peer = self._peers.get(stream.ident)
            if peer is not None:
                peer.streams -= 1
        if stream.busy:
            stream.closing = True  # its running page task finishes, then complete closes it
            return
        stream.pages.close()  # releases the iterator, snapshot and database handle
        self._forget_idle_peer(stream.ident)

    def close_idle_streams(self, idle: float = STREAM_IDLE) -> int:
        """Close streams whose reader sent no credit for ``idle`` seconds; how many."""
        now = time.monotonic()
        stale = [s for s in self._streams.values()
                 if not s.busy and now - s.last_active > idle]
        for stream in stale:
            self._log(logging.WARNING, "stream-idle", "closed a stream whose reader sent no "
                      "credit for %gs", idle)
            self._close(stream)
        return len(stale)

    def end_streams(self, message: str) -> None:
        """End every open stream with a failure page (the server is stopping)."""
        for stream in list(self._streams.values()):
            if stream.busy:
                continue
            self._outbox.send(stream.ident, encode_error_reply(
                ErrorCode.RUNTIME, message, id=stream.key[1]))
            self._close(stream)

    def open_streams(self) -> int:
        return len(self._streams)

    # ----------------------------------------------------------------- peers

    def peer_gone(self, ident: bytes) -> None:
        """The client went away: its queued reads and its streams are moot. Its queued
        writes still run, in order: they were received."""
        queue = self._ready.pop(("p", ident), None)
        peer = self._peers.get(ident)
        if queue:
            for task in queue:
                if task.stream is not None:
                    task.stream.busy = False
                elif peer is not None:
                    peer.pending -= 1
                    self.pending_bytes -= task.size
        for stream in [s for s in self._streams.values() if s.ident == ident]:
            self._close(stream)
        self._forget_idle_peer(ident)

    def _forget_idle_peer(self, ident: bytes) -> None:
        peer = self._peers.get(ident)
        if peer is not None and peer.pending <= 0 and peer.streams <= 0:
            del self._peers[ident]
