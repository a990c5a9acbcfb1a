"""The Elevator wire protocol: pure encode/decode, no I/O.

Both the client and the server call these functions. See ``docs/protocol.rst``:
a request is ONE msgpack frame ``{"meta": {...}, "uid": str|nil, "cmd": str,
"args": [...]}``; a reply is TWO frames, a header map ``{"status", "err_code",
"err_msg", "compression"[, "id"]}`` and a content map ``{"datas": D}`` (lz4
block-compressed with a 4-byte size prefix when compression was asked for).

Keys and values travel as msgpack ``bin`` from this project; the original server
and client pack them as ``str``. Decoders here unpack with ``raw=True`` so both
arrive as the same ``bytes``.
"""
from __future__ import annotations

import enum
import io
from typing import Any, List, NamedTuple, Optional, Sequence

import msgpack

# The error codes and the two errors of this module are errors.py's, which the whole
# package's exceptions derive from (so a ProtocolError is also an ElevatorError).
from .errors import CompressionUnavailable, ErrorCode, ProtocolError

__all__ = [
    "Status", "ErrorCode", "ProtocolError", "CompressionUnavailable",
    "Request", "Reply", "DATA_COMMANDS", "DB_COMMANDS", "ALL_COMMANDS",
    "encode_request", "decode_request", "encode_reply", "encode_error_reply",
    "decode_reply", "compress", "decompress", "DEFAULT_MAX_MESSAGE_SIZE", "MIN_MAX_MESSAGE_SIZE",
    "peek", "peek_id", "encode_credit", "encode_notification",
]

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # 64 MiB: a 1M-pair batch of 32-byte values fits
#: the lowest --max-message-size a server accepts: a client checks only frames above it
MIN_MAX_MESSAGE_SIZE = 64 * 1024


class Status(enum.IntEnum):
    SUCCESS = 1
    FAILURE = -1
    WARNING = -2  # success with a remark (MGET with missing keys)


# Commands bound to a database uid.
GET, MGET, PUT, DELETE, EXISTS, RANGE, SLICE, BATCH = (
    "GET", "MGET", "PUT", "DELETE", "EXISTS", "RANGE", "SLICE", "BATCH")
# Database management.
PING, DBCONNECT, DBMOUNT, DBUMOUNT, DBCREATE, DBDROP, DBLIST, DBREPAIR = (
    "PING", "DBCONNECT", "DBMOUNT", "DBUMOUNT", "DBCREATE", "DBDROP", "DBLIST", "DBREPAIR")

DATA_COMMANDS = frozenset({GET, MGET, PUT, DELETE, EXISTS, RANGE, SLICE, BATCH})
# Extension: the server's limits, a map (nil uid, no args); the original answers KEY.
LIMITS = "LIMITS"
# Extension: the server's statistics, a map (nil uid, no args); the original answers KEY.
INFO = "INFO"

DB_COMMANDS = frozenset({PING, DBCONNECT, DBMOUNT, DBUMOUNT, DBCREATE, DBDROP, DBLIST, DBREPAIR,
                         LIMITS, INFO})
#: commands that may have no arguments: ``args`` may then also be ``{}`` or nil (the original
#: client sends {})
NO_ARGS = frozenset({PING, DBLIST, DBREPAIR, LIMITS, INFO})
ALL_COMMANDS = DATA_COMMANDS | DB_COMMANDS

# Streamed replies (extension): the request's meta key (items per reply), and the
# header key of every reply of the stream but the last.
STREAM = "stream"
MORE = "more"
#: header key of every page of a streamed reply: its index, 0, 1, 2... (a gap, repeat or
#: reversal is detected by the client and raised, never returned as a short answer)
SEQ = "seq"
#: request meta key: how many pages the server may send ahead of the reader's credits
WINDOW = "window"
DEFAULT_WINDOW = 4
#: request meta key (with ``stream``, RANGE): an iteration, read page by page as the
#: reader credits them, so ``max_items`` bounds each page, not the whole stream
ITER = "iter"
#: LIMITS key: the server streams iterations (ITER); absent on an original server
STREAM_ITER = "stream_iter"
#: a notification, never answered: ``args`` = [stream id, n]; n > 0 grants n more pages,
#: n == 0 closes the stream (the reader gave up)
CREDIT = "CREDIT"
# Streamed WriteBatch (extension): BATCHPART [batch id, seq, ops] accumulates, never
# answered; BATCHEND [batch id, parts, ops] writes the batch atomically and is the only
# one answered; BATCHABORT [batch id] drops it, never answered.
BATCHPART, BATCHEND, BATCHABORT = "BATCHPART", "BATCHEND", "BATCHABORT"
STREAM_BATCH_COMMANDS = frozenset({BATCHPART, BATCHEND, BATCHABORT})
#: LIMITS key announcing the streamed WriteBatch: the server's idle timeout (ms) of a
#: pending batch; absent on a server without it
STREAM_BATCH = "stream_batch"
#: reply ERR_DETAIL key of a streamed batch the server no longer holds whole (nothing of it
#: was written, the client may send it again): "missing", "incomplete" or "reset"
BATCH_LOST = "batch"
#: requests never answered
NOTIFICATIONS = frozenset({CREDIT, BATCHPART, BATCHABORT})
#: request meta key: milliseconds (int) the client will wait for this reply, counted
#: from when the server received it; a request not started by then fails with TIMEOUT
TIMEOUT_MS = "timeout"
#: reply header key: a map of machine-readable facts about a failure, e.g.
#: {"limit": "max_message_size", "maximum": N, "value": M} or {"unknown_uid": uid}
ERR_DETAIL = "err_detail"

# WriteBatch op codes.
BATCH_DELETE = 0
BATCH_PUT = 1


class Request(NamedTuple):
    cmd: str
    uid: Optional[str]
    args: list
    meta: dict
    #: the client's ``meta.id`` (extension), echoed in the reply header; None when absent
    id: Any
    compression: bool
    #: an original client's request (no ``meta.id``, no msgpack bin anywhere): answer it
    #: with keys and values packed as msgpack str, which msgpack-python < 0.4 can decode
    legacy: bool = False


class Reply(NamedTuple):
    status: int
    err_code: Optional[int]
    err_msg: Optional[str]
    id: Any
    datas: Any
    #: a failure's ERR_DETAIL map (None when the server sent none)
    detail: Optional[dict] = None


# ---------------------------------------------------------------- compression

def _lz4_block():
    try:
        import lz4.block
    except ImportError:  # pragma: no cover - depends on the environment
        raise CompressionUnavailable(
            "compression needs the 'lz4' package: pip install 'pyelevator_pool[lz4]'") from None
    return lz4.block


def compress(data: bytes) -> bytes:
    """lz4 block compression with a 4-byte little-endian size prefix (python-lz4's store_size)."""
    return _lz4_block().compress(data, store_size=True)


def decompress(data: bytes) -> bytes:
    try:
        return _lz4_block().decompress(data)
    except CompressionUnavailable:
        raise
    except Exception as exc:
        raise ProtocolError(f"bad lz4 content frame: {exc}") from None


# ------------------------------------------------------------------- requests

def encode_request(cmd: str, args: Sequence = (), uid: Optional[str] = None, *,
                   id: Any = None, compression: bool = False, stream: int = 0,
                   window: Optional[int] = None, timeout_ms: Optional[int] = None,
                   iterate: bool = False) -> bytes:
    """One request frame. ``id`` (extension) is echoed by this project's server.

    ``stream`` (extension, RANGE and SLICE, with an ``id``): ask this project's server to
    send the items as several replies of at most ``stream`` items each, from one
    iterator (one snapshot), every reply but the last with ``more: true`` in its
    header. A server that does not know it sends one reply, which is then the last.
    ``window`` (with ``stream``): pages the server may send ahead of the CREDITs.
    ``timeout_ms``: how long the client will still wait (TIMEOUT_MS); a server that
    cannot start the request within it answers TIMEOUT and does nothing.
    ``iterate`` (with ``stream``): the stream is an iteration (ITER), not bounded as a
    whole by ``max_items``.
    """
    meta: dict = {}
    if stream:
        meta[STREAM] = stream
        if window is not None:
            meta[WINDOW] = window
        if iterate:
            meta[ITER] = True
    if id is not None:
        meta["id"] = id
    if compression:
        meta["compression"] = True
    if timeout_ms is not None:
        meta[TIMEOUT_MS] = max(int(timeout_ms), 0)
    # A fresh Packer per call: Packer objects are not thread-safe.
    return msgpack.packb({"meta": meta, "uid": uid, "cmd": cmd, "args": args},
                         use_bin_type=True)


def encode_credit(stream_id: Any, pages: int) -> bytes:
    """A CREDIT notification (no uid, never answered): ``pages`` > 0 more pages of the
    stream ``stream_id`` may be sent; 0 closes the stream."""
    return msgpack.packb({"meta": {}, "uid": None, "cmd": CREDIT, "args": [stream_id, pages]},
                         use_bin_type=True)


def encode_notification(cmd: str, args: Sequence, uid: Optional[str]) -> bytes:
    """A request that is never answered (BATCHPART, BATCHABORT): no id, no deadline."""
    return msgpack.packb({"meta": {}, "uid": uid, "cmd": cmd, "args": args}, use_bin_type=True)


#: peek_id reads at most this many top-level and meta entries (a request has 4)
_PEEK_ENTRIES = 16


def _peek_key(unpacker: "msgpack.Unpacker") -> Any:
    key = unpacker.unpack()
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return key


class Peek(NamedTuple):
    """What :func:`peek` read of a request frame; None for each field it could not read."""
    id: Any
    cmd: Optional[str]
    uid: Optional[str]


def _peek_text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _peek_meta_id(unpacker: "msgpack.Unpacker") -> Any:
    for _ in range(min(unpacker.read_map_header(), _PEEK_ENTRIES)):
        if _peek_key(unpacker) != "id":
            unpacker.skip()
            continue
        rid = unpacker.unpack()
        if isinstance(rid, bytes):
            try:
                rid = rid.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if isinstance(rid, bool) or not isinstance(rid, (int, str, bytes)):
            return None
        return rid
    return None


def peek(frame: Any) -> Peek:
    """``meta.id``, ``cmd`` and ``uid`` of a request frame, read without decoding the rest
    (bounded work: only map headers and those entries are decoded, other values skipped,
    so a huge ``args`` costs nothing when it comes last, as this client packs it). Never
    raises: what cannot be read is None."""
    rid = cmd = uid = None
    try:
        unpacker = msgpack.Unpacker(io.BytesIO(bytes(frame)), raw=True, strict_map_key=False,
                                    read_size=4096)
        seen = 0
        for _ in range(min(unpacker.read_map_header(), _PEEK_ENTRIES)):
            key = _peek_key(unpacker)
            if key == "meta":
                rid = _peek_meta_id(unpacker)
            elif key == "cmd":
                cmd = _peek_text(unpacker.unpack())
            elif key == "uid":
                uid = _peek_text(unpacker.unpack())
            else:
                unpacker.skip()
                continue
            seen += 1
            if seen == 3:
                break
    except Exception:  # noqa: BLE001 - a frame that is not a map, truncated, or garbage
        pass
    return Peek(rid, cmd, uid)


def peek_id(frame: Any) -> Any:
    """The ``meta.id`` of a request frame (see :func:`peek`), or None. Never raises."""
    return peek(frame).id


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise ProtocolError(f"{what} must be a string, not {type(value).__name__}")


def decode_request(frame: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Request:
    """Parse one request frame; raise ProtocolError (code REQUEST) when it is malformed.

    Decoding is bounded: the frame size is checked first, and msgpack's own
    limits (lengths never beyond the frame, nesting depth) apply.
    """
    if len(frame) > max_size:
        # The id first (bounded: see peek_id), so the refusal reaches its own request.
        raise ProtocolError(f"request of {len(frame)} bytes exceeds the limit of {max_size} bytes",
                            id=peek_id(frame))
    try:
        # raw=True: the original client packs binary keys as msgpack str.
        msg = msgpack.unpackb(frame, raw=True, strict_map_key=False)
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError...
        raise ProtocolError(f"request is not valid msgpack: {type(exc).__name__}: {exc}",
                            id=peek_id(frame)) from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a msgpack map, not {type(msg).__name__}")
    fields = {}
    for k, v in msg.items():
        if isinstance(k, bytes):
            k = k.decode("utf-8", "replace")
        fields[k] = v
    # meta (and its id) first, so that every later complaint can echo the id.
    raw_meta = fields.get("meta") or {}
    if not isinstance(raw_meta, dict):
        raise ProtocolError(f"'meta' must be a map, not {type(raw_meta).__name__}")
    meta = {}
    for k, v in raw_meta.items():
        if isinstance(k, bytes):
            k = k.decode("utf-8", "replace")
        meta[k] = v
    rid = meta.get("id")
    if isinstance(rid, bytes):
        try:
            rid = rid.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if rid is not None and not isinstance(rid, (int, str, bytes)):
        raise ProtocolError("'meta.id' must be an integer or a string")
    try:
        if "cmd" not in fields:
            raise ProtocolError("request has no 'cmd'")
        cmd = _text(fields["cmd"], "'cmd'")
        args = fields.get("args", None)
        if cmd in NO_ARGS and (args is None or args == {}):
            args = []  # the original client sends {} for DBLIST and DBREPAIR
        if args is None:
            raise ProtocolError(f"{cmd}: request has no 'args' (send [] for none)")
        if not isinstance(args, list):
            raise ProtocolError(f"{cmd}: 'args' must be an array, not {type(args).__name__}")
        uid = fields.get("uid")
        if uid is not None:
            uid = _text(uid, "'uid'")
    except ProtocolError as exc:
        exc.id = rid
        raise
    # an extension's request is never an original client's: no second pass over its frame
    return Request(cmd, uid, args, meta, rid, bool(meta.get("compression", False)),
                   rid is None and cmd not in NOTIFICATIONS and not _has_bin(frame))


def _has_bin(frame: bytes) -> bool:
    """Whether a (valid, size-checked) request frame holds any msgpack bin value."""
    try:
        stack = [msgpack.unpackb(frame, raw=False, unicode_errors="surrogateescape",
                                 strict_map_key=False)]
    except Exception:  # decoded once already with raw=True; be safe all the same
        return True
    while stack:
        value = stack.pop()
        if isinstance(value, bytes):
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


# -------------------------------------------------------------------- replies

def encode_reply(datas: Any, *, status: int = Status.SUCCESS, compression: bool = False,
                 id: Any = None, err_msg: Optional[str] = None,
                 more: bool = False, seq: Optional[int] = None,
                 legacy: bool = False) -> List[bytes]:
    """The two reply frames ``[header, content]`` of a successful (or warning) reply.
    ``more``: a page of a streamed reply that other pages follow (see encode_request);
    ``seq``: the page's index in its stream (SEQ); ``legacy``: pack bytes as msgpack str,
    as the original server did (see Request.legacy)."""
    header = {"status": int(status), "err_code": None, "err_msg": err_msg,
              "compression": bool(compression)}
    if more:
        header[MORE] = True
    if seq is not None:
        header[SEQ] = seq
    if id is not None:
        header["id"] = id
    content = msgpack.packb({"datas": datas}, use_bin_type=not legacy)
    if compression:
        content = compress(content)
    return [msgpack.packb(header, use_bin_type=True), content]


def encode_error_reply(code: int, message: str, *, id: Any = None,
                       detail: Optional[dict] = None, seq: Optional[int] = None) -> List[bytes]:
    """The two reply frames of a failure; never compressed. ``detail``: see ERR_DETAIL;
    ``seq``: the failure ends a stream, as its page ``seq``."""
    header = {"status": int(Status.FAILURE), "err_code": int(code), "err_msg": str(message),
              "compression": False}
    if id is not None:
        header["id"] = id
    if seq is not None:
        header[SEQ] = seq
    if detail:
        header[ERR_DETAIL] = detail
    return [msgpack.packb(header, use_bin_type=True),
            msgpack.packb({"datas": None}, use_bin_type=True)]


def decode_header(frame: bytes) -> dict:
    try:
        header = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ProtocolError(f"reply header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict) or "status" not in header:
        raise ProtocolError("reply header is not a map with a 'status'")
    return header


def decode_content(frame: bytes, compressed: bool) -> Any:
    """The ``datas`` of a content frame; keys and values (str or bin) come back as bytes."""
    if compressed:
        frame = decompress(frame)
    try:
        content = msgpack.unpackb(frame, raw=True)
    except Exception as exc:
        raise ProtocolError(f"reply content is not valid msgpack: {exc}") from None
    if not isinstance(content, dict):
        raise ProtocolError("reply content is not a map")
    return content.get(b"datas")


def decode_reply(frames: Sequence[bytes]) -> Reply:
    """Parse ``[header, content]``; raise ProtocolError when the reply is malformed."""
    if len(frames) != 2:
        raise ProtocolError(f"reply has {len(frames)} frames, expected 2")
    header = decode_header(frames[0])
    status = header.get("status")
    if status not in (1, -1, -2):
        raise ProtocolError(f"reply has an unknown status {status!r}")
    err_msg = header.get("err_msg")
    if isinstance(err_msg, bytes):
        err_msg = err_msg.decode("utf-8", "replace")
    datas = None
    if status != Status.FAILURE:
        datas = decode_content(frames[1], bool(header.get("compression")))
    detail = header.get(ERR_DETAIL)
    return Reply(status, header.get("err_code"), err_msg, header.get("id"), datas,
                 detail if isinstance(detail, dict) else None)
