"""Commands: one request frame in, the two reply frames out. No sockets here.

:meth:`Dispatcher.handle` never raises: every request, however malformed, gets
a reply (a REQUEST failure for a malformed one), so no request goes unanswered.

Bulk commands keep per-item Python to a minimum: RANGE/SLICE are a ``list()``
of plyvel's iterator (its tuples pack as msgpack arrays), MGET is a C-level
``map`` of ``snapshot.get``, BATCH fills one LevelDB WriteBatch that is written
only once every op was checked (so a bad op leaves the database untouched).
"""
from __future__ import annotations

import functools
import logging
import time
from itertools import chain, islice
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Tuple

import msgpack
import plyvel

from .. import protocol
from ..protocol import (
    BATCH_DELETE, BATCH_PUT, CompressionUnavailable, ErrorCode, ProtocolError,
    Status, decode_request, encode_error_reply, encode_reply)
from .batches import DEFAULT_BATCH_IDLE, PendingBatch, PendingBatches
from .store import CommandError, Store, unknown_uid

__all__ = ["Dispatcher", "DEFAULT_MAX_KEYS", "DEFAULT_MAX_ITEMS", "DEFAULT_MAX_REPLY_SIZE",
           "MIN_LIMIT"]

log = logging.getLogger("elevator.server")

_SUCCESS = int(Status.SUCCESS)
_WARNING = int(Status.WARNING)

#: keys of one MGET, ops of one BATCH: a 1M-key MGET is ~40 MB of request, within
#: the default 64 MiB message size, and bounds the lists a request can make.
DEFAULT_MAX_KEYS = 1_000_000
#: items of one RANGE/SLICE reply; larger ranges are paged (the client does it).
DEFAULT_MAX_ITEMS = 1_000_000
#: bytes of keys and values in one RANGE/SLICE/MGET reply: what a reply may hold in memory.
DEFAULT_MAX_REPLY_SIZE = 256 * 1024 * 1024
#: no limit may be set below this: clients only ask for the limits (LIMITS) before calls
#: of more than this many keys or items.
MIN_LIMIT = 1000
#: items read from a LevelDB iterator between two checks of the limits.
_CHUNK = 16384
#: the commands whose reply may be streamed (protocol.STREAM)
_STREAMABLE = frozenset({protocol.RANGE, protocol.SLICE})
#: request frames the GET fast path looks at: a GET of this project's client is far smaller
FAST_GET_MAX_FRAME = 1024
#: meta fields a fast GET may carry: anything else (compression, stream...) is general
_FAST_META = frozenset({b"id", protocol.TIMEOUT_MS.encode()})
_TIMEOUT_KEY = protocol.TIMEOUT_MS.encode()
#: encode_reply's success header up to the id (the header's last field), and the start of
#: its content ``{"datas": [value]}``: the fast path appends the id and the value
_FAST_HEADER = (b"\x85" + b"".join(msgpack.packb(x) for x in (
    "status", _SUCCESS, "err_code", None, "err_msg", None, "compression", False, "id")))
_FAST_CONTENT = b"\x81" + msgpack.packb("datas") + b"\x91"


def _over_limit(cmd: str, what: str, limit: int, name: str, advice: str,
                value: Optional[int] = None) -> CommandError:
    detail: Dict[str, Any] = {"limit": name, "maximum": limit}
    if value is not None:
        detail["value"] = value
    return CommandError(f"{cmd}: {what} exceeds the server's limit of {limit} ({name}); {advice}",
                        ErrorCode.VALUE, detail=detail)


def _arity(cmd: str, args: list, low: int, high: Optional[int] = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise CommandError(f"{cmd} takes {want} argument(s), got {len(args)}", ErrorCode.REQUEST)


def _key(value: Any, what: str = "key") -> bytes:
    if not isinstance(value, bytes):
        raise CommandError(f"{what} must be a string, not {type(value).__name__}", ErrorCode.TYPE)
    return value


def _opt_key(value: Any, what: str) -> Optional[bytes]:
    return None if value is None else _key(value, what)


def _flag(value: Any, what: str) -> bool:
    if value is None:
        return True
    if not isinstance(value, (bool, int)):
        raise CommandError(f"{what} must be a boolean, not {type(value).__name__}", ErrorCode.TYPE)
    return bool(value)


def _name(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("database name is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise CommandError(f"database name must be a string, not {type(value).__name__}",
                       ErrorCode.TYPE)


def _lost(kind: str, message: str) -> CommandError:
    """The failure of a streamed batch the server no longer holds whole: nothing of it
    was written, and the client may send it all again."""
    return CommandError(message, ErrorCode.RUNTIME, detail={protocol.BATCH_LOST: kind})


def _batch_id(value: Any) -> bool:
    """Whether ``value`` may name a streamed batch: an int or a short string."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, bytes) and len(value) <= 64)


def _count_arg(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_flat(ops: list) -> bool:
    """Whether a streamed chunk is flat puts ``[k1, v1, k2, v2...]`` rather than ops."""
    return bool(ops) and isinstance(ops[0], bytes)


def _op_count(ops: list, flat: bool) -> int:
    return len(ops) // 2 if flat and _is_flat(ops) else len(ops)


def _fill(wb: Any, ops: Any, flat: bool = False) -> None:
    """Add BATCH ops to a LevelDB write batch, checking each (CommandError for a bad one;
    the caller then clears the batch: nothing of it is written). ``flat``: a streamed
    chunk may also be flat puts (no list per op: a third of the decoding)."""
    if not isinstance(ops, list):
        raise CommandError(f"BATCH ops must be an array, not {type(ops).__name__}",
                           ErrorCode.TYPE)
    put, delete = wb.put, wb.delete
    if flat and _is_flat(ops):
        if len(ops) % 2:
            raise CommandError("a chunk of puts must be pairs: [key, value, key, value...]",
                               ErrorCode.TYPE)
        it = iter(ops)
        try:
            for k, v in zip(it, it):
                put(k, v)
        except (TypeError, ValueError):
            raise CommandError("BATCH: the keys and values of a chunk of puts must be strings",
                               ErrorCode.TYPE) from None
        return
    for op in ops:
        try:
            n = len(op) if op.__class__ is list else 0
            if n == 3 and op[0] == BATCH_PUT:
                put(op[1], op[2])
            elif n == 2 and op[0] == BATCH_DELETE:
                delete(op[1])
            else:
                _bad_op(op)
        except (TypeError, ValueError):  # a non-bytes key or value
            _bad_op(op)


def _bad_op(op: Any) -> None:
    if not isinstance(op, list) or not op:
        raise CommandError(f"BATCH op must be a non-empty array, not {op!r:.80}",
                           ErrorCode.TYPE)
    code = op[0]
    if isinstance(code, bool) or code not in (BATCH_PUT, BATCH_DELETE):
        raise CommandError(f"BATCH: unknown operation {code!r:.40}", ErrorCode.SIGNAL)
    raise CommandError(
        f"BATCH: malformed op {op!r:.80}: expected [1, key, value] or [0, key] with string "
        "key and value", ErrorCode.TYPE)


def _prefix_end(prefix: bytes) -> Optional[bytes]:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Dispatcher:
    """Decodes a request, runs its command against the :class:`Store`, encodes the reply."""

    def __init__(self, store: Store, *, max_message_size: int = protocol.DEFAULT_MAX_MESSAGE_SIZE,
                 sync: bool = False, max_keys: int = DEFAULT_MAX_KEYS,
                 max_items: int = DEFAULT_MAX_ITEMS,
                 max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
                 batch_idle: float = DEFAULT_BATCH_IDLE) -> None:
        self.store = store
        #: streamed WriteBatches waiting for their final chunk
        self.batches = PendingBatches(batch_idle)
        self.max_message_size = max_message_size
        self.sync = sync
        self.max_keys = max_keys
        self.max_items = max_items
        self.max_reply_size = max_reply_size
        self._data: Dict[str, Callable[[plyvel.DB, list], Tuple[int, Any]]] = {
            protocol.GET: self._get, protocol.MGET: self._mget, protocol.PUT: self._put,
            protocol.DELETE: self._delete, protocol.EXISTS: self._exists,
            protocol.RANGE: self._range, protocol.SLICE: self._slice, protocol.BATCH: self._batch,
        }
        self._admin: Dict[str, Callable[[Optional[str], list], Any]] = {
            protocol.PING: self._ping, protocol.DBCONNECT: self._dbconnect,
            protocol.DBMOUNT: self._dbmount, protocol.DBUMOUNT: self._dbumount,
            protocol.DBCREATE: self._dbcreate, protocol.DBDROP: self._dbdrop,
            protocol.DBLIST: self._dblist, protocol.DBREPAIR: self._dbrepair,
            protocol.LIMITS: self._limits, protocol.INFO: self._info,
        }
        #: what INFO answers (the server sets it); None: INFO fails as unknown
        self.info_source: Optional[Callable[[], Dict[str, Any]]] = None

    # ------------------------------------------------------------------ entry

    def decode(self, frame: bytes) -> protocol.Request:
        """decode_request with this server's size limit (raises ProtocolError)."""
        return decode_request(frame, self.max_message_size)

    @staticmethod
    def decode_failure(exc: ProtocolError) -> List[bytes]:
        """The failure reply for a request that did not decode (with its id, when read)."""
        return encode_error_reply(exc.code, str(exc), id=exc.id,
                                  detail=getattr(exc, "detail", None))

    def handle(self, frame: bytes) -> List[bytes]:
        """The reply frames ``[header, content]`` for one request frame. Never raises."""
        try:
            request = decode_request(frame, self.max_message_size)
        except ProtocolError as exc:
            return self.decode_failure(exc)
        except Exception as exc:  # pragma: no cover - a decoder bug must not kill the loop
            log.exception("decoding a request")
            return encode_error_reply(ErrorCode.REQUEST, f"undecodable request: {exc}")
        return self.run(request)

    def fast_get(self, frame: bytes, received: float) -> Optional[List[bytes]]:
        """The reply frames to a plain GET of a present key (an int ``meta.id``, at most a
        ``meta.timeout`` not yet passed since ``received``, bytes key, known uid), the same
        bytes :meth:`run` gives, without the general decode and dispatch; None for any
        other request, which the general path then answers with all its checks."""
        if len(frame) > FAST_GET_MAX_FRAME:
            return None
        try:
            msg = msgpack.unpackb(frame, raw=True)
        except Exception:
            return None
        if type(msg) is not dict or msg.get(b"cmd") != b"GET":
            return None
        meta, args, uid = msg.get(b"meta"), msg.get(b"args"), msg.get(b"uid")
        if (type(meta) is not dict or type(args) is not list or len(args) != 1
                or type(args[0]) is not bytes or type(uid) is not bytes
                or not _FAST_META.issuperset(meta)):
            return None
        rid = meta.get(b"id")
        timeout = meta.get(_TIMEOUT_KEY)
        if type(rid) is not int or not (timeout is None or type(timeout) is int):
            return None
        if timeout is not None and time.monotonic() > received + timeout / 1000.0:
            return None  # the general path answers TIMEOUT
        try:
            name = uid.decode("ascii")
            store = self.store
            db = store.acquire(name)
        except (UnicodeDecodeError, CommandError):
            return None
        try:
            value = db.get(args[0])
        finally:
            store.release(name)
        if value is None:
            return None  # a KeyError reply: the general path words it
        packb = msgpack.packb
        return [_FAST_HEADER + packb(rid), _FAST_CONTENT + packb(value)]

    def run(self, request: protocol.Request, peer: bytes = b"") -> List[bytes]:
        """The reply frames for a decoded request from client ``peer`` (its routing id).
        Never raises."""
        rid = request.id
        try:
            status, datas = self._execute(request, peer)
        except Exception as exc:
            return self._failure(request, exc)
        try:
            return encode_reply(datas, status=status, compression=request.compression, id=rid,
                                legacy=request.legacy)
        except CompressionUnavailable:
            # The header says compression=false, which a client honours.
            return encode_reply(datas, status=status, compression=False, id=rid,
                                legacy=request.legacy)
        except Exception as exc:  # e.g. a result msgpack cannot pack
            log.exception("encoding the reply of %s", request.cmd)
            return encode_error_reply(ErrorCode.RUNTIME, f"{request.cmd}: {exc}", id=rid)

    @staticmethod
    def _failure(request: protocol.Request, exc: Exception,
                 seq: Optional[int] = None) -> List[bytes]:
        """The failure reply for an exception raised while running ``request`` (``seq``:
        the page of a stream it ends)."""
        rid = request.id
        if isinstance(exc, (CommandError, ProtocolError)):
            return encode_error_reply(exc.code, str(exc), id=rid, seq=seq,
                                      detail=getattr(exc, "detail", None))
        return Dispatcher._unexpected_failure(request, exc, seq)

    @staticmethod
    def _unexpected_failure(request: protocol.Request, exc: Exception,
                            seq: Optional[int]) -> List[bytes]:
        rid, cmd = request.id, request.cmd
        if isinstance(exc, TypeError):  # plyvel's answer to a non-bytes key or value
            code = ErrorCode.TYPE
        elif isinstance(exc, plyvel.Error):
            code = ErrorCode.DATABASE
        elif isinstance(exc, (ValueError, OverflowError)):
            code = ErrorCode.VALUE
        elif isinstance(exc, OSError):
            code = ErrorCode.OS
        else:
            log.error("%s failed", cmd, exc_info=exc)
            code = ErrorCode.RUNTIME
        return encode_error_reply(code, f"{cmd}: {exc}", id=rid, seq=seq)

    # -------------------------------------------------------- streamed replies

    def stream_page(self, request: protocol.Request) -> int:
        """Items per reply when ``request`` asks for a streamed reply this server gives
        (RANGE or SLICE with ``meta.stream`` and an id); 0 for one reply."""
        if request.cmd not in _STREAMABLE or request.id is None:
            return 0
        page = request.meta.get(protocol.STREAM)
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            return 0
        return min(page, self.max_items)

    def run_stream(self, request: protocol.Request,
                   page: int) -> Iterator[Tuple[List[bytes], bool]]:
        """``(reply frames, is_last)`` of a streamed RANGE/SLICE: pages of at most ``page``
        items read from ONE iterator (one snapshot, as the single reply), each yielded as
        soon as it is packed, every one but the last marked ``more``; so the client decodes
        page n while page n+1 is read. ``max_items`` bounds the whole stream as it bounds
        the single reply; ``max_reply_size`` bounds each page, each page being one reply.
        Never raises: an error ends the stream with a failure reply."""
        pages = self._pages(request, page)
        compression = request.compression
        seq = 0
        try:
            while True:
                try:
                    chunk, last = next(pages)
                except StopIteration:  # pragma: no cover - _pages always ends with last=True
                    return
                except Exception as exc:
                    yield self._failure(request, exc, seq), True
                    return
                try:
                    frames = encode_reply(chunk, compression=compression, id=request.id,
                                          more=not last, seq=seq)
                except CompressionUnavailable:
                    compression = False  # the header says so; the client honours it
                    frames = encode_reply(chunk, id=request.id, more=not last, seq=seq)
                if len(frames[1]) > self.max_reply_size:
                    yield self._failure(request, _over_limit(
                        request.cmd, f"a page of more than {self.max_reply_size} bytes",
                        self.max_reply_size, "max_reply_size", "ask for smaller pages"),
                        seq), True
                    return
                yield frames, last
                if last:
                    return
                seq += 1
        finally:
            pages.close()  # the iterator and the database handle, however the stream ends

    def _pages(self, request: protocol.Request, page: int
               ) -> Generator[Tuple[list, bool], None, None]:
        cmd, uid, args = request.cmd, request.uid, request.args
        if not uid:
            raise CommandError(f"{cmd} needs the uid of a database (DBCONNECT gives it)",
                               ErrorCode.REQUEST)
        store = self.store
        db = store.acquire(uid)
        try:
            if cmd == protocol.RANGE:
                it, pairs = self._range_iterator(db, args)
                count = None
            else:
                it, count, pairs = self._slice_iterator(db, args)
            try:
                # an iteration is read as its reader credits pages: only each page is bounded
                limit = None if request.meta.get(protocol.ITER) is True else self.max_items
                sent = 0
                while True:
                    want = page if count is None else min(page, count - sent)
                    chunk = list(islice(it, want)) if want > 0 else []
                    sent += len(chunk)
                    if limit is not None and sent > limit:
                        raise _over_limit(cmd, f"a reply of more than {limit} items", limit,
                                          "max_items", "page through the range with SLICE")
                    # Each page is one reply: run_stream checks its packed size against
                    # max_reply_size (free, where summing 20k lengths costs ~0.4 ms).
                    last = len(chunk) < want or (count is not None and sent >= count)
                    yield chunk, last
                    if last:
                        return
            finally:
                it.close()
        finally:
            store.release(uid)

    def _execute(self, request: protocol.Request, peer: bytes = b"") -> Tuple[int, Any]:
        cmd, uid, args = request.cmd, request.uid, request.args
        handler = self._data.get(cmd)
        if handler is None and cmd == protocol.BATCHEND:
            handler = functools.partial(self._batch_end, uid=uid or "", peer=peer)
        if handler is not None:
            if not uid:
                raise CommandError(f"{cmd} needs the uid of a database (DBCONNECT gives it)",
                                   ErrorCode.REQUEST)
            store = self.store
            db = store.acquire(uid)
            try:
                return handler(db, args)
            finally:
                store.release(uid)
        admin = self._admin.get(cmd)
        if admin is None:
            if uid and not self.store.has_uid(uid):
                raise unknown_uid(uid)
            raise CommandError(f"Command {cmd} not handled", ErrorCode.KEY)
        if uid and not self.store.has_uid(uid):
            raise unknown_uid(uid)
        return _SUCCESS, admin(uid, args)

    # ----------------------------------------------------------- data commands

    def _get(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        _arity("GET", args, 1)
        value = db.get(_key(args[0]))
        if value is None:
            raise CommandError(f"Key {args[0]!r} does not exist", ErrorCode.KEY)
        return _SUCCESS, [value]

    def _mget(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        _arity("MGET", args, 1, 2)
        keys = args[0]
        if not isinstance(keys, list):
            raise CommandError(f"MGET keys must be an array, not {type(keys).__name__}",
                               ErrorCode.TYPE)
        fill_cache = bool(args[1]) if len(args) > 1 else False
        if not keys:
            return _SUCCESS, []
        if len(keys) > self.max_keys:
            raise _over_limit("MGET", f"{len(keys)} keys", self.max_keys, "max_keys",
                              "split the keys into several MGETs", len(keys))
        # One snapshot: every value read at the same instant. map() keeps the loop in C;
        # plyvel raises TypeError for a non-bytes key. Read in chunks so that the reply's
        # size is checked before it can outgrow max_reply_size.
        snapshot = db.snapshot()
        get = functools.partial(snapshot.get, fill_cache=fill_cache)
        try:
            if len(keys) <= _CHUNK:
                values = list(map(get, keys))
                self._check_reply_size("MGET", sum(map(len, filter(None, values))))
            else:
                values = []
                size = 0
                for i in range(0, len(keys), _CHUNK):
                    chunk = list(map(get, keys[i:i + _CHUNK]))
                    size += sum(map(len, filter(None, chunk)))
                    self._check_reply_size("MGET", size)
                    values.extend(chunk)
        finally:
            snapshot.close()
        return (_WARNING if None in values else _SUCCESS), values

    def _check_reply_size(self, cmd: str, size: int) -> None:
        if size > self.max_reply_size:
            raise _over_limit(cmd, "the reply's keys and values (more than "
                              f"{self.max_reply_size} bytes)", self.max_reply_size,
                              "max_reply_size", "ask for fewer items at a time")

    def _collect(self, cmd: str, it: Any, count: Optional[int], pairs: bool) -> list:
        """At most ``count`` items (None: all) of a plyvel iterator, within the limits.

        Reads ``max_items + 1`` items at most and checks the reply's size every chunk,
        so an over-limit request costs a bounded amount of memory and then fails.
        """
        limit = self.max_items
        want = (limit + 1) if count is None else min(count, limit + 1)
        out: list = []
        size = 0
        while len(out) < want:
            chunk = list(islice(it, min(_CHUNK, want - len(out))))
            if not chunk:
                break
            out.extend(chunk)
            size += sum(map(len, chain.from_iterable(chunk) if pairs else chunk))
            self._check_reply_size(cmd, size)
        if len(out) > limit:
            raise _over_limit(cmd, f"a reply of more than {limit} items", limit, "max_items",
                              "page through the range with SLICE")
        return out

    def _put(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        _arity("PUT", args, 2)
        db.put(_key(args[0]), _key(args[1], "value"), sync=self.sync)
        return _SUCCESS, None

    def _delete(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        _arity("DELETE", args, 1)
        db.delete(_key(args[0]), sync=self.sync)
        return _SUCCESS, None

    def _exists(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        _arity("EXISTS", args, 1)
        # [false], not the original's bare false: every answer has the same shape.
        return _SUCCESS, [db.get(_key(args[0])) is not None]

    def _range_iterator(self, db: plyvel.DB, args: list) -> Tuple[Any, bool]:
        """RANGE's plyvel iterator, and whether it yields pairs."""
        _arity("RANGE", args, 2, 5)
        key_from = _opt_key(args[0], "key_from")
        key_to = _opt_key(args[1], "key_to")
        include_key = _flag(args[2], "include_key") if len(args) > 2 else True
        include_value = _flag(args[3], "include_value") if len(args) > 3 else True
        prefix = _opt_key(args[4], "prefix") if len(args) > 4 else None
        include_stop = True
        if prefix:
            # Narrow [key_from, key_to] to the prefix's keys without a per-item check.
            if key_from is None or key_from < prefix:
                key_from = prefix
            end = _prefix_end(prefix)
            if end is not None and (key_to is None or key_to >= end):
                key_to, include_stop = end, False
        it = db.iterator(start=key_from, stop=key_to, include_stop=include_stop,
                         include_key=include_key, include_value=include_value)
        return it, include_key and include_value

    def _range(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        it, pairs = self._range_iterator(db, args)
        try:
            return _SUCCESS, self._collect("RANGE", it, None, pairs)
        finally:
            it.close()

    def _slice_iterator(self, db: plyvel.DB, args: list) -> Tuple[Any, int, bool]:
        """SLICE's plyvel iterator, its count, and whether it yields pairs."""
        _arity("SLICE", args, 2, 4)
        key_from = _opt_key(args[0], "key_from")
        count = args[1]
        if isinstance(count, bool) or not isinstance(count, int):
            raise CommandError(f"SLICE count must be an integer, not {type(count).__name__}",
                               ErrorCode.TYPE)
        if count < 0:
            raise CommandError("SLICE count must not be negative", ErrorCode.VALUE)
        include_key = _flag(args[2], "include_key") if len(args) > 2 else True
        include_value = _flag(args[3], "include_value") if len(args) > 3 else True
        it = db.iterator(start=key_from, include_key=include_key, include_value=include_value)
        return it, count, include_key and include_value

    def _slice(self, db: plyvel.DB, args: list) -> Tuple[int, Any]:
        it, count, pairs = self._slice_iterator(db, args)
        try:
            return _SUCCESS, self._collect("SLICE", it, count, pairs)
        finally:
            it.close()

    def _batch(self, db: plyvel.DB, args: list, flat: bool = False) -> Tuple[int, Any]:
        _arity("BATCH", args, 1)
        ops = args[0]
        if not isinstance(ops, list):
            raise CommandError(f"BATCH ops must be an array, not {type(ops).__name__}",
                               ErrorCode.TYPE)
        self._check_batch_keys(_op_count(ops, flat))
        # A WriteBatch is only buffered until write(): a bad op anywhere means nothing is written.
        wb = db.write_batch(sync=self.sync)
        try:
            _fill(wb, ops, flat)
        except BaseException:
            wb.clear()
            raise
        wb.write()
        return _SUCCESS, None

    def _check_batch_keys(self, count: int) -> None:
        if count > self.max_keys:
            raise _over_limit("BATCH", f"{count} operations", self.max_keys, "max_keys",
                              "a batch is atomic: write several smaller batches", count)

    # ------------------------------------------------------- streamed batches

    def notify(self, request: protocol.Request, peer: bytes, size: int) -> None:
        """Run a request that is never answered (BATCHPART, BATCHABORT) from client
        ``peer``; ``size``: its frame's bytes. Never raises: a chunk that cannot be
        added spoils its batch, whose final chunk then answers why."""
        try:
            if request.cmd == protocol.BATCHPART:
                self._batch_part(request, peer, size)
            elif request.cmd == protocol.BATCHABORT:
                args = request.args
                if len(args) == 1 and _batch_id(args[0]):
                    self.batches.abort((peer, args[0]))
        except Exception:  # pragma: no cover - a bug must not kill the loop or a worker
            log.exception("%s failed", request.cmd)

    def _batch_part(self, request: protocol.Request, peer: bytes, size: int) -> None:
        uid, args = request.uid, request.args
        if not uid or len(args) != 3 or not _batch_id(args[0]) or not _count_arg(args[1]):
            log.debug("ignored a malformed BATCHPART")
            return  # its final chunk finds the batch missing or incomplete
        bid, seq, ops = args
        store, batches = self.store, self.batches
        key = (peer, bid)
        try:
            db = store.acquire(uid)
        except CommandError:
            return  # an unknown uid: the final chunk is answered so
        try:
            if seq == 0:
                batch = batches.open(key, uid, db, functools.partial(db.write_batch,
                                                                     sync=self.sync))
            else:
                batch = batches.take(key)
            if batch is None:
                return
            try:
                self._add_part(batch, db, uid, seq, ops, size)
            finally:
                batches.done(batch)
                if not batches.held(batch):  # aborted or expired while it was filled
                    batch.fail(RuntimeError("dropped"))
        finally:
            store.release(uid)

    def _add_part(self, batch: PendingBatch, db: plyvel.DB, uid: str, seq: int, ops: Any,
                  size: int) -> None:
        if batch.error is not None:
            return  # already failed: its final chunk answers the first failure
        batches = self.batches
        try:
            if seq != batch.next_seq:
                raise _lost("incomplete", f"BATCHEND: chunk {batch.next_seq} of the batch "
                            f"never arrived (chunk {seq} came next); nothing was written")
            batch.next_seq += 1
            self._check_same_db(batch, db, uid)
            if not isinstance(ops, list):
                raise CommandError(f"BATCH ops must be an array, not {type(ops).__name__}",
                                   ErrorCode.TYPE)
            count = _op_count(ops, True)
            self._check_batch_keys(batch.ops + count)
            if not batches.grow(batch, size):
                reason = (f"the server holds {batches.max_bytes} bytes of streamed batches "
                          "already: retry later")
                raise CommandError(f"BATCH refused: {reason}", ErrorCode.RUNTIME,
                                   detail={"busy": reason})
            _fill(batch.wb, ops, True)
            batch.ops += count
        except CommandError as exc:
            batches.spoil(batch, exc)
        except Exception as exc:  # plyvel failing: the final chunk reports it
            batches.spoil(batch, CommandError(f"BATCH: {exc}", ErrorCode.DATABASE))

    @staticmethod
    def _check_same_db(batch: PendingBatch, db: plyvel.DB, uid: str) -> None:
        # a write batch belongs to one open handle: unmounted and reopened, it is void
        if uid != batch.uid or db is not batch.handle:
            raise _lost("reset", "BATCHEND: the database was closed or changed while the "
                        "batch was streamed; nothing was written")

    def _batch_end(self, db: plyvel.DB, args: list, *, uid: str,
                   peer: bytes) -> Tuple[int, Any]:
        _arity("BATCHEND", args, 3)
        bid, parts, ops = args
        if not _batch_id(bid) or not _count_arg(parts):
            raise CommandError("BATCHEND takes [batch id (int or string), chunks sent "
                               "before it (int >= 0), ops]", ErrorCode.REQUEST)
        batch = self.batches.pop((peer, bid))
        if parts == 0:  # the whole batch in one chunk
            if batch is not None:
                batch.fail(RuntimeError("replaced"))
            return self._batch(db, [ops], flat=True)
        if batch is None:
            raise _lost("missing", f"BATCHEND: the server holds none of the {parts} chunks "
                        "sent before it (the batch waited too long and was dropped, the "
                        "server restarted, or it held too many batches); nothing was written")
        written = False
        try:
            if batch.error is not None:
                raise batch.error
            if batch.next_seq != parts:
                raise _lost("incomplete", f"BATCHEND: {parts} chunks were sent before it, "
                            f"{batch.next_seq} arrived; nothing was written")
            self._check_same_db(batch, db, uid)
            if not isinstance(ops, list):
                raise CommandError(f"BATCH ops must be an array, not {type(ops).__name__}",
                                   ErrorCode.TYPE)
            self._check_batch_keys(batch.ops + _op_count(ops, True))
            _fill(batch.wb, ops, True)
            batch.wb.write()
            written = True
        finally:
            self.batches.finished(batch, written)
            batch.fail(RuntimeError("finished"))  # frees its buffer now, written or not
        return _SUCCESS, None

    # ------------------------------------------------------- admin commands

    def _ping(self, uid: Optional[str], args: list) -> Any:
        return ["PONG"]

    def _limits(self, uid: Optional[str], args: list) -> Any:
        _arity("LIMITS", args, 0)
        return {"max_message_size": self.max_message_size, "max_keys": self.max_keys,
                "max_items": self.max_items, "max_reply_size": self.max_reply_size,
                protocol.STREAM_ITER: 1,
                protocol.STREAM_BATCH: max(1, int(self.batches.idle * 1000))}

    def _info(self, uid: Optional[str], args: list) -> Any:
        _arity("INFO", args, 0)
        if self.info_source is None:
            raise CommandError("INFO: this server keeps no statistics", ErrorCode.RUNTIME)
        return self.info_source()

    def _dbconnect(self, uid: Optional[str], args: list) -> Any:
        _arity("DBCONNECT", args, 1)
        return [self.store.connect(_name(args[0]))]

    def _dbmount(self, uid: Optional[str], args: list) -> Any:
        _arity("DBMOUNT", args, 1)
        self.store.mount(_name(args[0]))
        return None

    def _dbumount(self, uid: Optional[str], args: list) -> Any:
        _arity("DBUMOUNT", args, 1)
        self.store.unmount(_name(args[0]))
        return None

    def _dbcreate(self, uid: Optional[str], args: list) -> Any:
        _arity("DBCREATE", args, 1, 2)
        self.store.create(_name(args[0]), args[1] if len(args) > 1 else None)
        return None

    def _dbdrop(self, uid: Optional[str], args: list) -> Any:
        _arity("DBDROP", args, 1)
        self.store.drop(_name(args[0]))
        return None

    def _dblist(self, uid: Optional[str], args: list) -> Any:
        return self.store.list()

    def _dbrepair(self, uid: Optional[str], args: list) -> Any:
        _arity("DBREPAIR", args, 0, 1)
        if args:  # by name: reaches a registered database that cannot be opened
            self.store.repair(name=_name(args[0]))
            return None
        if not uid:
            raise CommandError("DBREPAIR needs the uid of the database to repair, or its name "
                               "in args", ErrorCode.REQUEST)
        self.store.repair(uid)
        return None
