"""Operator log lines about requests: each slow one, and failed ones rate-limited per cause.

The loop calls :meth:`RequestLog.answered` only for a request that failed or took at
least :attr:`RequestLog.slow_after` seconds (the comparison is inline in the loop, against
the clock read it takes for its statistics anyway), so a fast, successful request costs
nothing here. A slow request is one WARNING line with the command, the database, the
sizes, the duration and the client; failures are grouped by cause (malformed, over a
limit, unknown database, refused...) and logged at most once a second per cause.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional, Sequence

import msgpack

from .. import protocol
from ..protocol import ErrorCode
from .peers import PeerBook
from .ratelog import RateLimitedLog

__all__ = ["RequestLog", "slow_threshold"]

log = logging.getLogger("elevator.server")

_INF = float("inf")
#: data commands whose KEY failure is a miss (an answer, not a problem): never logged
_MISS = frozenset({protocol.GET, protocol.EXISTS, protocol.DELETE})
_KNOWN = protocol.DATA_COMMANDS | protocol.DB_COMMANDS | protocol.STREAM_BATCH_COMMANDS
_SERVER_FAULTS = frozenset({ErrorCode.DATABASE, ErrorCode.OS, ErrorCode.RUNTIME})
_MSG_MAX = 200


def slow_threshold(slow_log_ms: float) -> float:
    """Seconds from ``--slow-log-ms`` (0: never, i.e. infinity)."""
    if isinstance(slow_log_ms, bool) or not isinstance(slow_log_ms, (int, float)) \
            or not slow_log_ms >= 0 or slow_log_ms == _INF:
        raise ValueError(f"slow_log_ms must be a finite number of ms >= 0, got {slow_log_ms!r}")
    return slow_log_ms / 1000.0 if slow_log_ms > 0 else _INF


def _token(text: str) -> str:
    """``text`` as one word of a key=value line (JSON-quoted when it has spaces etc.)."""
    if text and text.isprintable() and not any(c in text for c in ' ="'):
        return text
    return json.dumps(text)


def _header(frames: Sequence[Any]) -> dict:
    raw = frames[0]
    try:
        header = msgpack.unpackb(raw if isinstance(raw, bytes) else bytes(raw), raw=False)
    except Exception:  # never: the server packed it
        return {}
    return header if isinstance(header, dict) else {}


class RequestLog:
    """Builds the lines; ``name_of(uid)`` gives a database's name (None: unknown)."""

    def __init__(self, slow_log_ms: float, *, name_of: Callable[[str], Optional[str]],
                 peers: PeerBook, rate_log: RateLimitedLog) -> None:
        if not callable(name_of):
            raise TypeError(f"name_of must be callable, got {name_of!r}")
        #: a request at least this long (seconds) is logged; infinity: never
        self.slow_after = slow_threshold(slow_log_ms)
        self._name_of = name_of
        self._peers = peers
        self._rate_log = rate_log

    def _db(self, uid: Optional[str]) -> str:
        if not uid:
            return "-"
        name = self._name_of(uid)
        return _token(name) if name is not None else f"uid:{_token(uid)}"

    def answered(self, ident: bytes, cmd: Optional[str], uid: Optional[str], size_in: int,
                 reply: Sequence[Any], seconds: float, error: Optional[int]) -> None:
        """A request answered with ``reply`` after ``seconds``; ``error``: its error code
        when it failed (stats.reply_error). Logs the slow line and/or the failure line."""
        if seconds >= self.slow_after:
            size_out = sum(map(len, reply))
            log.warning("slow request: cmd=%s db=%s ms=%.1f request_bytes=%d reply_bytes=%d "
                        "status=%s %s", _token(cmd or "?"), self._db(uid), seconds * 1000.0,
                        size_in, size_out, "ok" if error is None else f"error:{error}",
                        self._peers.describe(ident))
        if error is not None:
            self.failed(ident, cmd, uid, reply, error)

    def failed(self, ident: bytes, cmd: Optional[str], uid: Optional[str],
               reply: Sequence[Any], error: int) -> None:
        """A failure reply: one line per cause per second, with the count of the others."""
        if error == ErrorCode.KEY and cmd in _MISS:
            return
        command = cmd if cmd in _KNOWN else "?"
        if error == ErrorCode.REQUEST:
            cause, level = "malformed request", logging.INFO
        elif error == ErrorCode.AUTH:
            cause, level = "refused: CURVE key not authorized", logging.WARNING
        elif error == ErrorCode.TIMEOUT:
            cause, level = "not started: the client's deadline passed", logging.WARNING
        elif error == ErrorCode.KEY:
            cause, level = "unknown command", logging.INFO
        else:
            cause, level = "", logging.INFO  # known from the header's detail, read below
        key = f"{error}:{command}:{cause}"
        rate_log = self._rate_log
        if cause and not rate_log.allows(key):
            # held: counted, and kept as the flood's summary line without decoding anything
            rate_log(level, key, "request failed: %s: cmd=%s", cause, command)
            return
        header = _header(reply)
        detail = header.get(protocol.ERR_DETAIL)
        if not cause:
            if isinstance(detail, dict) and "limit" in detail:
                cause = f"over the limit {detail.get('limit')}"
            elif isinstance(detail, dict) and "unknown_uid" in detail:
                cause = "unknown database"
            elif isinstance(detail, dict) and "busy" in detail:
                cause, level = "refused: busy", logging.WARNING
            elif error in _SERVER_FAULTS:
                cause, level = f"server error {ErrorCode(error).name}", logging.ERROR
            else:
                name = ErrorCode(error).name if error in ErrorCode._value2member_map_ \
                    else str(error)
                cause = f"bad request ({name})"
            key = f"{error}:{command}:{cause}"
        message = str(header.get("err_msg") or "").replace("\n", " ")[:_MSG_MAX]
        rate_log(level, key, "request failed: %s: cmd=%s db=%s %s: %s", cause, command,
                 self._db(uid), self._peers.describe(ident), message)
