"""One exception hierarchy. Server error codes and low-level failures are mapped here, once.

Every exception raised by this package derives from :class:`ElevatorError`, and
also from the builtin a user would naturally catch: a missing key is a
``KeyError``, a timeout a ``TimeoutError``, a server TYPE error a ``TypeError``.
The protocol's error codes (:class:`ErrorCode`) are defined here, and a ZeroMQ failure
becomes a :class:`TransportError` here (:func:`from_zmq`). This module imports no other
of the package's: protocol.py and the server take :class:`ProtocolError` and
:class:`CompressionUnavailable` from it.
"""
from __future__ import annotations

import enum
from typing import Any, Dict, Optional, Type

import zmq

__all__ = [
    "ErrorCode", "ElevatorError", "ServerError", "ElevatorTypeError", "ElevatorKeyError",
    "ElevatorValueError", "ElevatorIndexError", "ElevatorRuntimeError", "ElevatorOSError",
    "DatabaseError", "SignalError", "RequestError", "TransportError", "ElevatorTimeout",
    "ConnectionError", "ProtocolError", "AuthenticationError", "AUTH_REASONS", "AddressError",
    "LimitExceeded", "RequestLimitExceeded", "PoolError", "PoolTimeout", "PoolClosed", "CompressionUnavailable",
    "error_from_reply", "from_zmq",
]


class ErrorCode(enum.IntEnum):
    """The ``err_code`` of a failure reply (docs/protocol.rst)."""

    TYPE = 0
    KEY = 1
    VALUE = 2
    INDEX = 3
    RUNTIME = 4
    OS = 5
    DATABASE = 6
    SIGNAL = 7
    REQUEST = 8  # malformed request (this project's server)
    # Extensions (docs/protocol.rst): only sent to clients that send meta.id.
    TIMEOUT = 9  # meta.timeout passed before the request started: nothing was done
    AUTH = 10    # the client's CURVE key is not (or no longer) authorized


class ElevatorError(Exception):
    """Root of every error this package raises."""


class ServerError(ElevatorError):
    """The server answered the request with a failure. Never retried: the answer is final.

    ``code`` is the protocol error code, ``command``/``db``/``endpoint`` say where.
    """

    code: Optional[int] = None

    def __init__(self, message: str, *, code: Optional[int] = None, command: Optional[str] = None,
                 db: Optional[str] = None, endpoint: Optional[str] = None,
                 detail: Optional[dict] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        #: the server's machine-readable facts (protocol.ERR_DETAIL), {} when it sent none
        self.detail: dict = dict(detail) if detail else {}
        self.message = message
        self.command = command
        self.db = db
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = " ".join(p for p in (
            self.command,
            f"db={self.db!r}" if self.db else None,
            f"at {self.endpoint}" if self.endpoint else None) if p)
        return f"{self.message} ({where})" if where else self.message


class ElevatorTypeError(ServerError, TypeError):
    code = ErrorCode.TYPE


class ElevatorKeyError(ServerError, KeyError):
    """A missing key (GET) or an unknown command. Also a builtin ``KeyError``."""

    code = ErrorCode.KEY

    # KeyError.__str__ would repr() the message; keep ServerError's.
    __str__ = ServerError.__str__


class ElevatorValueError(ServerError, ValueError):
    code = ErrorCode.VALUE


class ElevatorIndexError(ServerError, IndexError):
    code = ErrorCode.INDEX


class ElevatorRuntimeError(ServerError, RuntimeError):
    code = ErrorCode.RUNTIME


class ElevatorOSError(ServerError, OSError):
    code = ErrorCode.OS

    __str__ = ServerError.__str__


class DatabaseError(ServerError):
    """Unknown database, database already exists, refused path, LevelDB failure."""

    code = ErrorCode.DATABASE


class SignalError(ServerError):
    """An unknown WriteBatch operation."""

    code = ErrorCode.SIGNAL


class RequestError(ServerError, ValueError):
    """The server found the request malformed (this project's REQUEST code)."""

    code = ErrorCode.REQUEST


class TransportError(ElevatorError):
    """A failure below the protocol: no answer came. ``request_sent`` says whether the
    request may have reached the server (False: provably never sent, so any command
    may be retried; True: the outcome is unknown, only idempotent commands are)."""

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class ElevatorTimeout(TransportError, TimeoutError):
    """No reply within the call's timeout (or the retry policy's deadline)."""


class ConnectionError(TransportError, OSError):  # noqa: A001 - deliberately also the builtin's base
    """The socket failed or its peer went away (server killed, context closed)."""

    __str__ = Exception.__str__


class AuthenticationError(ConnectionError):
    """The security handshake failed: the server refused this client's CURVE key, or one
    side uses CURVE and the other does not, or the server's public key is wrong. Never
    retried (trying again gives the same answer); ``request_sent`` is always False.

    ``reason`` says which, for a program (the CLI) that words its own advice: one of
    :data:`AUTH_REASONS`, "" when unknown."""

    def __init__(self, message: str, *, request_sent: bool = False, reason: str = "") -> None:
        super().__init__(message, request_sent=False)
        if reason and reason not in AUTH_REASONS:
            raise ValueError(f"reason must be one of {', '.join(AUTH_REASONS)}, not {reason!r}")
        self.reason = reason


#: why the security handshake failed (AuthenticationError.reason)
AUTH_REASONS = (
    "key_refused",           # the server refused this client's CURVE key
    "key_revoked",           # the server no longer accepts it (answered AUTH to a request)
    "server_needs_curve",    # this client has no CURVE keys and the server requires them
    "server_without_curve",  # this client uses CURVE and the server does not
    "wrong_server_key",      # CURVE on both sides, but not the server's public key
)


class AddressError(ConnectionError):
    """The endpoint cannot be connected to at all: its host is not a valid name (so it
    does not resolve) or its port is not a number. Never retried (it never becomes valid);
    ``request_sent`` is always False."""

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message, request_sent=False)


class LimitExceeded(ElevatorError, ValueError):
    """A call the client cannot split exceeds one of the server's limits (a WriteBatch
    is atomic: it is never split; a request frame over ``max_message_size``). Raised
    before anything is sent, or (RequestLimitExceeded and the VALUE form) from the
    server's over-limit answer; never retried. ``limit`` names the server option
    (``max_keys``, ``max_message_size``...), ``value`` is the call's size, ``maximum``
    the limit (None when the server did not say)."""

    def __init__(self, message: str, *, limit: Optional[str] = None, value: Optional[int] = None,
                 maximum: Optional[int] = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class RequestLimitExceeded(RequestError, LimitExceeded):
    """The server refused a request over one of its limits (REQUEST with err_detail)."""


class ProtocolError(ElevatorError, ValueError):
    """A frame that does not follow the protocol: on the client, a malformed reply (the
    socket it came on is replaced); on the server, a request it cannot read, answered
    with ``code`` (an ErrorCode) and ``id`` (the request's ``meta.id`` when it parsed far
    enough to have one)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.REQUEST, *,
                 id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = id


class ElevatorDecodeError(ElevatorError, UnicodeDecodeError):
    """A key, value or name that is not UTF-8, read with ``decode_responses=True`` and
    ``encoding_errors='strict'``; ``object``, ``start`` and ``end`` locate the bad bytes."""

    def __str__(self) -> str:
        return (UnicodeDecodeError.__str__(self) + "; the value is not UTF-8 text: read it "
                "with decode_responses=False, or choose encoding_errors='replace' or "
                "'surrogateescape'")


class CompressionUnavailable(ElevatorError, RuntimeError):
    """Compression was asked for, but the optional ``lz4`` package is not installed."""


class PoolError(ElevatorError):
    """Root of the pool's own errors."""


class PoolTimeout(PoolError, TimeoutError):
    """No socket became free within the checkout timeout."""


class PoolClosed(PoolError):
    """The pool was closed."""


class _ValueLimitExceeded(ElevatorValueError, LimitExceeded):
    """The server refused a call over one of its limits (VALUE with err_detail)."""


_BY_CODE: Dict[int, Type[ServerError]] = {cls.code: cls for cls in (
    ElevatorTypeError, ElevatorKeyError, ElevatorValueError, ElevatorIndexError,
    ElevatorRuntimeError, ElevatorOSError, DatabaseError, SignalError, RequestError)}


def error_from_reply(code: Optional[int], message: Optional[str], *, command: Optional[str] = None,
                     db: Optional[str] = None, endpoint: Optional[str] = None,
                     detail: Optional[dict] = None) -> ServerError:
    """The exception for a server failure reply: the one place codes become classes.
    An over-limit failure (``detail`` names a ``limit``) is also a LimitExceeded."""
    cls = ServerError if code is None else _BY_CODE.get(code, ServerError)
    limit = detail.get("limit") if isinstance(detail, dict) else None
    if isinstance(limit, str) and code == ErrorCode.REQUEST:
        cls = RequestLimitExceeded
    elif isinstance(limit, str) and code == ErrorCode.VALUE:
        cls = _ValueLimitExceeded
    exc = cls(message or "server error", code=code, command=command, db=db, endpoint=endpoint,
              detail=detail)
    if isinstance(exc, LimitExceeded):
        exc.limit = limit
        exc.value = detail.get("value") if detail else None
        exc.maximum = detail.get("maximum") if detail else None
    return exc


def from_zmq(exc: zmq.ZMQError, what: str, *, request_sent: bool) -> TransportError:
    """The error for a ZeroMQ failure of ``what`` (``"GET to tcp://host:port"``), to be
    raised ``from exc``: the one place the client's ZeroMQ errors are mapped.

    ``zmq.Again`` (a non-blocking operation would block: the queue to the server is
    full) is an :class:`ElevatorTimeout`; any other ``ZMQError`` (a closed socket or
    context, no file descriptor left, a bad endpoint...) a :class:`ConnectionError`.
    ``request_sent``: whether the request may have reached the server (see
    :class:`TransportError`).
    """
    if isinstance(exc, zmq.Again):
        return ElevatorTimeout(f"{what}: the queue is full ({exc})", request_sent=request_sent)
    return ConnectionError(f"{what}: {exc}", request_sent=request_sent)
