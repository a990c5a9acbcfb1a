"""Elevator: the documented py-elevator API, in Python 3, over an :class:`ElevatorPool`.

The client knows commands and argument shapes; it knows nothing of sockets.
"""
from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generic, Iterator, List, Literal, Optional,
                    Sequence, Tuple, Union, overload)

from . import args as check
from . import errors, protocol, urls
from .args import Key, Value, to_bytes
from .batch import PendingWrites
from .decoding import check_errors, decode
from .pool import ElevatorPool
from .protocol import Status
from .tracing import CallTracer, Described
from .streambatch import STREAM_CHUNK, BatchStream

__all__ = ["Elevator", "WriteBatch", "Key", "Value", "to_bytes"]

if TYPE_CHECKING:
    # A default (PEP 696) makes a bare ``Elevator`` annotation mean ``Elevator[bytes]``;
    # typing.TypeVar takes one only from 3.13, and checkers bundle typing_extensions' stubs.
    from typing_extensions import TypeVar
    #: what a client returns keys and values as: bytes, or str with decode_responses
    Out = TypeVar("Out", bytes, str, default=bytes)
else:
    from typing import TypeVar
    Out = TypeVar("Out", bytes, str)


_DEFAULT_ENDPOINT = "127.0.0.1:4141"
#: items per page of RangeIter: about 0.5 MB of reply for 32-byte values, small
#: enough to bound memory, large enough that a page costs far more than a round trip.
RANGE_ITER_PAGE = 10_000
#: items per streamed page of Range and Slice: the server sends a page as soon as it is
#: read and packed, and the client decodes it while the server reads the next one
#: (the page-size experiment in benchmarks/README.rst).
STREAM_PAGE = 10_000
#: calls with more keys or items than this fetch the server's limits first (once per
#: pool, see LIMITS); the server never sets a limit below it, so smaller calls never need to.
LIMITS_MATTER = 1000
#: page size when a Range or Slice over the server's max_items is paged transparently.
_LIMIT_PAGE = 10 * RANGE_ITER_PAGE


#: an MGet of at most this many keys may be merged with concurrent reads (a larger one
#: gains nothing from company and would hold the others' answers back).
MERGED_MGET = 64

_ONLY_BYTES = {bytes}


# What the span of each traced method says (tracing.py): its wire command, its database
# (the bound one, the one named by its first argument, or none: a server command) and
# its number of keys or operations. They take the method's arguments and never raise.
def _bound(cmd: str) -> Callable[..., Described]:
    return lambda client, *a, **k: (cmd, client.db_name, None)


def _named(cmd: str) -> Callable[..., Described]:
    def describe(client: "Elevator[Any]", *a: Any, **k: Any) -> Described:
        name = a[0] if a else k.get("db_name")
        return cmd, name if isinstance(name, str) else client.db_name, None
    return describe


def _server(cmd: str) -> Callable[..., Described]:
    return lambda client, *a, **k: (cmd, None, None)


def _sized(cmd: str, param: str) -> Callable[..., Described]:
    def describe(client: "Elevator[Any]", *a: Any, **k: Any) -> Described:
        items = a[0] if a else k.get(param)
        return cmd, client.db_name, len(items) if isinstance(items, (list, tuple)) else None
    return describe


def _range(client: "Elevator[Any]", *a: Any, **k: Any) -> Described:
    limit = a[1] if len(a) > 1 else k.get("limit")
    counted = isinstance(limit, int) and not isinstance(limit, bool)  # Range's Slice
    return protocol.SLICE if counted else protocol.RANGE, client.db_name, None


#: the methods whose calls are spans when the pool traces (RangeIter: one span for the
#: whole iteration, see RangeIter); WriteBatch.Write's is _write_batch's
_SPANS: Dict[str, Callable[..., Described]] = {
    "Get": _bound(protocol.GET), "MGet": _sized(protocol.MGET, "keys"),
    "Put": _bound(protocol.PUT), "Delete": _bound(protocol.DELETE),
    "Exists": _bound(protocol.EXISTS), "Range": _range, "Slice": _bound(protocol.SLICE),
    "_write_batch": _sized(protocol.BATCH, "ops"), "Ping": _server(protocol.PING),
    "info": _server(protocol.INFO), "listdb": _server(protocol.DBLIST),
    "connect": _named(protocol.DBCONNECT), "createdb": _named(protocol.DBCREATE),
    "dropdb": _named(protocol.DBDROP), "repairdb": _named(protocol.DBREPAIR),
    "mount": _named(protocol.DBMOUNT), "unmount": _named(protocol.DBUMOUNT),
}


def _left(deadline: float) -> float:
    """The time left until ``deadline``, as a call's timeout (which must be > 0)."""
    return max(deadline - time.monotonic(), 1e-6)


def _check_flags(include_key: bool, include_value: bool) -> None:
    check.boolean("include_key", include_key)
    check.boolean("include_value", include_value)
    if not (include_key or include_value):
        raise ValueError("include_key and include_value cannot both be False")


def _after(key: bytes) -> bytes:
    """The smallest key greater than ``key`` (LevelDB orders keys bytewise)."""
    return key + b"\x00"


class Elevator(Generic[Out]):
    """A thread-safe client of one Elevator server, bound to one database.

    One ``Elevator`` may be shared by every thread of a program: each call checks a
    socket out of the pool underneath. With no ``pool`` it owns a private one.

    :param db_name: the database to bind to; ``"default"`` when None. The database
        must exist (:meth:`createdb` makes one); the binding is checked at once, so a
        wrong endpoint or name fails here and not at the first call (see ``open``).
    :param endpoint: ``"host:port"`` or a ZeroMQ URL (``"tcp://host:port"``,
        ``"ipc:///path"``). Default ``"127.0.0.1:4141"``.
    :param transport: ``"tcp"`` or ``"ipc"``, for an endpoint given without a scheme.
    :param timeout: default deadline of a call in seconds, covering checkout, send,
        receive and every retry; each method's ``timeout=`` overrides it. Default: the
        pool's (10 s). The original client used 1 s for calls and 10 s for batches; one
        default that also rides out a server restart and still bounds a hang is simpler.
    :param pool: an :class:`ElevatorPool` to share (several ``Elevator`` objects, on
        different databases, may share one); ``endpoint``, ``transport`` and the pool
        options must then not be given.
    :param decode_responses: return keys, values and names as ``str`` (UTF-8) instead
        of ``bytes``.
    :param encoding_errors: how ``decode_responses`` treats bytes that are not UTF-8:
        ``"strict"`` (default: raise :class:`ElevatorDecodeError`, also a
        ``UnicodeDecodeError``), ``"replace"``, ``"surrogateescape"`` (as redis-py).
    :param compression: ask for lz4-compressed replies by default (needs ``lz4``).
    :param coalesce: merge this client's ``Get``/``Exists``/small ``MGet`` calls with
        other threads' concurrent ones into one MGET, and ``Put``/``Delete`` into one
        BATCH, while a request of the database is in flight (a lone caller sends its
        own request). Default: the pool's ``coalesce`` (True).
    :param open: resolve the binding at construction (True, the default: a wrong
        endpoint or database fails here, within ``timeout``). False does no I/O at all:
        the binding is resolved by :meth:`open` or by the first call that needs it, so a
        program can start before its server.
    :param pool_options: passed to the private :class:`ElevatorPool` (``max_size``,
        ``checkout_timeout``, ``health_check_interval``, ``retry``, ...).

    Raises DatabaseError for an unknown database, ElevatorTimeout/ConnectionError
    when the server cannot be reached.

    For type checkers it is ``Elevator[bytes]``, or ``Elevator[str]`` when made with
    ``decode_responses=True`` (``docs/typing.rst``).
    """

    @overload
    def __init__(self: Elevator[bytes], db_name: Optional[str] = None, *,
                 endpoint: Optional[str] = None, transport: Optional[str] = None,
                 timeout: Optional[float] = None, pool: Optional[ElevatorPool] = None,
                 decode_responses: Literal[False] = False, compression: bool = False,
                 coalesce: Optional[bool] = None, encoding_errors: str = "strict",
                 open: bool = True, **pool_options: Any) -> None: ...

    @overload
    def __init__(self: Elevator[str], db_name: Optional[str] = None, *,
                 endpoint: Optional[str] = None, transport: Optional[str] = None,
                 timeout: Optional[float] = None, pool: Optional[ElevatorPool] = None,
                 decode_responses: Literal[True], compression: bool = False,
                 coalesce: Optional[bool] = None, encoding_errors: str = "strict",
                 open: bool = True, **pool_options: Any) -> None: ...

    @overload
    def __init__(self: Elevator[Any], db_name: Optional[str] = None, *,
                 endpoint: Optional[str] = None, transport: Optional[str] = None,
                 timeout: Optional[float] = None, pool: Optional[ElevatorPool] = None,
                 decode_responses: bool = False, compression: bool = False,
                 coalesce: Optional[bool] = None, encoding_errors: str = "strict",
                 open: bool = True, **pool_options: Any) -> None: ...

    def __init__(self, db_name: Optional[str] = None, *, endpoint: Optional[str] = None,
                 transport: Optional[str] = None, timeout: Optional[float] = None,
                 pool: Optional[ElevatorPool] = None, decode_responses: bool = False,
                 compression: bool = False, coalesce: Optional[bool] = None,
                 encoding_errors: str = "strict", open: bool = True,
                 **pool_options: Any) -> None:
        if pool is None and endpoint is None:
            env = urls.from_environment()
            if env is not None:
                endpoint, env_db, env_pool = env
                db_name = env_db if db_name is None else db_name
                pool_options = {**env_pool, **pool_options}
        name = "default" if db_name is None else check.db_name(db_name)
        check_errors(encoding_errors)
        check.timeout(timeout)
        check.boolean("decode_responses", decode_responses)
        check.boolean("compression", compression)
        check.boolean("open", open)
        if coalesce is not None:
            check.boolean("coalesce", coalesce)
        if compression:
            self._require_lz4()
        if pool is None:
            if timeout is not None:
                pool_options["timeout"] = timeout
            pool = ElevatorPool(endpoint or _DEFAULT_ENDPOINT, transport=transport or "tcp",
                                **pool_options)
            self._owns_pool = True
        else:
            if not isinstance(pool, ElevatorPool):
                raise TypeError(f"pool must be an ElevatorPool, not {type(pool).__name__}")
            if endpoint is not None or transport is not None or pool_options:
                given = sorted(["endpoint"] * (endpoint is not None)
                               + ["transport"] * (transport is not None) + list(pool_options))
                raise ValueError(f"{', '.join(given)}: give these to the ElevatorPool, "
                                 "not to an Elevator that shares it")
            self._owns_pool = False
        self._pool = pool
        self.coalesce: bool = pool.coalesce if coalesce is None else coalesce
        self.timeout = timeout
        self.decode_responses = decode_responses
        self.encoding_errors = encoding_errors
        self.compression = compression
        #: the database and its uid; the uid is "" until the binding is resolved (open)
        self._binding: Tuple[str, str] = (name, "")
        self._open_lock = threading.Lock()
        self._tracer = pool.tracer
        #: told by the pool's coalescers that a call went merged (None: not traced)
        self._note = None if self._tracer is None else self._tracer.coalesced
        if self._tracer is not None:
            self._trace(self._tracer)
        if open:
            try:
                self._open(*self._budget(timeout))
            except BaseException:
                self.close()
                raise

    def _trace(self, tracer: CallTracer) -> None:
        # Wrapped on this instance, not in the class: a client that does not trace runs
        # the plain methods and pays nothing per call.
        for name, describe in _SPANS.items():
            setattr(self, name, tracer.traced(getattr(self, name),
                                              functools.partial(describe, self)))

    def open(self, *, timeout: Optional[float] = None) -> "Elevator[Out]":
        """Resolve the binding to the database now (DBCONNECT) and return this client;
        nothing to do once resolved (at construction, by an earlier call or ``open``).
        Thread-safe: threads opening at once send one DBCONNECT. Raises what
        construction would: DatabaseError for an unknown database, ElevatorTimeout or
        ConnectionError when the server cannot be reached within ``timeout`` (default
        the client's); the client stays usable, and may be opened again."""
        check.timeout(timeout)
        if not self._binding[1]:
            self._open(*self._budget(timeout))
        return self

    def _open(self, whole: float, deadline: float) -> None:
        # one thread resolves while the others wait for it, each within its own deadline
        if not self._open_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise errors.ElevatorTimeout(
                f"{protocol.DBCONNECT} {self.db_name!r} to {self._pool.endpoint}: another "
                f"thread's open of the database did not finish within {whole:g}s",
                request_sent=False)
        try:
            name = self._binding[0]
            if self._binding[1]:
                return
            try:
                self._resolve_uid(name, _left(deadline), refresh=False, call_timeout=whole)
            except errors.DatabaseError as exc:
                if not check.looks_like_endpoint(name):
                    raise
                raise errors.DatabaseError(
                    f"{exc.message}; {name!r} looks like an endpoint, given as the database "
                    f"name: write Elevator(endpoint={name!r}) (or Elevator(db, endpoint=...))",
                    code=exc.code, command=exc.command, db=exc.db, endpoint=exc.endpoint,
                    detail=exc.detail) from exc
        finally:
            self._open_lock.release()

    def _opened(self, timeout: Optional[float]) -> Optional[float]:
        """``timeout`` for a call that needs the binding; a client made with ``open=False``
        resolves it first, and the call gets what is left of its timeout."""
        if self._binding[1]:
            return timeout
        whole, deadline = self._budget(timeout)
        self._open(whole, deadline)
        return _left(deadline)

    # A URL's decode_responses is only known at run time: Elevator[Any] unless the
    # keyword (which overrides the URL's) says.
    @overload
    @classmethod
    def from_url(cls, url: str, *, decode_responses: Literal[False],
                 **options: Any) -> Elevator[bytes]: ...

    @overload
    @classmethod
    def from_url(cls, url: str, *, decode_responses: Literal[True],
                 **options: Any) -> Elevator[str]: ...

    @overload
    @classmethod
    def from_url(cls, url: str, **options: Any) -> Elevator[Any]: ...

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Elevator[Any]:
        """A client configured by an Elevator URL (:mod:`pyelevator_pool.urls`):
        ``elevator://host:4141/mydb?timeout=5&max_size=16`` or
        ``elevator+ipc:///run/elevator.sock?db=mydb``. ``options`` override the URL's."""
        endpoint, db, pool_options, client_options = urls.parse(url)
        merged: Dict[str, Any] = {**pool_options, **client_options, **options}
        return cls(merged.pop("db_name", db), endpoint=endpoint, **merged)

    @staticmethod
    def _require_lz4() -> None:
        try:
            import lz4.block  # noqa: F401
        except ImportError:
            raise errors.CompressionUnavailable(
                "compression=True needs the 'lz4' package: pip install 'pyelevator_pool[lz4]'"
            ) from None

    # ------------------------------------------------------------------ plumbing

    @property
    def pool(self) -> ElevatorPool:
        """The :class:`ElevatorPool` this client sends through."""
        return self._pool

    @property
    def db_name(self) -> str:
        """The name of the database this client is bound to."""
        return self._binding[0]

    @property
    def endpoint(self) -> str:
        return self._pool.endpoint

    def __repr__(self) -> str:
        return f"<Elevator db={self.db_name!r} {self._pool!r}>"

    def _request(self, cmd: str, args: Sequence, uid: Optional[str], timeout: Optional[float],
                 compression: Optional[bool], idempotent: bool = True,
                 is_write: bool = False, stream: int = 0,
                 call_timeout: Optional[float] = None) -> protocol.Reply:
        check.timeout(timeout)
        if compression is None:
            compression = self.compression
        elif compression:
            check.boolean("compression", compression)
            self._require_lz4()
        return self._pool.request(cmd, args, uid,
                                  timeout=self.timeout if timeout is None else timeout,
                                  compression=compression, idempotent=idempotent,
                                  is_write=is_write, stream=stream, call_timeout=call_timeout)

    def _raise(self, reply: protocol.Reply, cmd: str, db: Optional[str]) -> None:
        if reply.detail and reply.detail.get("limit") == "max_message_size":
            self._pool.facts.forget_limits()  # the server may have restarted with another
        raise errors.error_from_reply(reply.err_code, reply.err_msg, command=cmd, db=db,
                                      endpoint=self._pool.endpoint, detail=reply.detail)

    def _call(self, cmd: str, args: Sequence, *, timeout: Optional[float] = None,
              compression: Optional[bool] = None, is_write: bool = False,
              stream: int = 0, binding: Optional[Tuple[str, str]] = None,
              call_timeout: Optional[float] = None) -> protocol.Reply:
        """A data command on the bound database (or ``binding``, a name and its uid);
        refreshes a uid the server forgot. ``call_timeout``: the whole timeout of the
        user's call, when ``timeout`` is what is left of it."""
        if binding is None:
            if not self._binding[1]:
                call_timeout = self._whole(timeout if call_timeout is None else call_timeout)
                timeout = self._opened(timeout)
            binding = self._binding
        name, uid = binding
        reply = self._request(cmd, args, uid, timeout, compression, is_write=is_write,
                              stream=stream, call_timeout=call_timeout)
        if self._uid_forgotten(reply):
            uid = self._new_uid(name, uid, timeout, cmd)
            reply = self._request(cmd, args, uid, timeout, compression, is_write=is_write,
                                  stream=stream, call_timeout=call_timeout)
        if reply.status == Status.FAILURE:
            self._raise(reply, cmd, name)
        return reply

    @staticmethod
    def _uid_forgotten(reply: protocol.Reply) -> bool:
        return bool(reply.status == Status.FAILURE and reply.detail
                    and "unknown_uid" in reply.detail)

    def _new_uid(self, name: str, stale: str, timeout: Optional[float], cmd: str) -> str:
        """The uid of ``name`` after the server forgot ``stale``: the database was dropped
        (and maybe created again, with a new uid). Raises DatabaseError when it is gone."""
        try:
            return self._resolve_uid(name, timeout, refresh=True, stale=stale)
        except errors.DatabaseError as exc:
            raise errors.DatabaseError(
                f"database {name!r}, which this client is bound to, was dropped: "
                f"rebind with E.connect('other_db'), or E.createdb({name!r}) to make "
                "it again", code=exc.code, command=cmd, db=name,
                endpoint=self._pool.endpoint, detail=exc.detail) from exc

    def _admin(self, cmd: str, args: Sequence, *, timeout: Optional[float],
               bound: bool = True, idempotent: bool = True) -> Any:
        """A management command; returns its datas."""
        call_timeout = None
        if bound and not self._binding[1]:
            call_timeout = self._whole(timeout)
            timeout = self._opened(timeout)
        name, uid = self._binding
        reply = self._request(cmd, args, uid if bound else None, timeout, False,
                              idempotent=idempotent, call_timeout=call_timeout)
        if reply.status == Status.FAILURE:
            self._raise(reply, cmd, name if bound else None)
        return reply.datas

    def _resolve_uid(self, name: str, timeout: Optional[float], *, refresh: bool,
                     stale: Optional[str] = None, call_timeout: Optional[float] = None) -> str:
        def dbconnect(name: str) -> str:
            reply = self._request(protocol.DBCONNECT, [name], None, timeout, False,
                                  call_timeout=call_timeout)
            if reply.status == Status.FAILURE:
                self._raise(reply, protocol.DBCONNECT, None)
            return self._text(reply.datas[0])

        uid = self._pool.facts.uid(name, dbconnect, stale=stale if refresh else None)
        if self._binding[0] == name:
            self._binding = (name, uid)
        return uid

    def _limits(self, timeout: Optional[float]) -> Dict[str, int]:
        """The server's limits (``max_keys``, ``max_items``...), fetched once per pool.
        ``{}`` for a server without the LIMITS extension (the original one)."""
        return self._pool.facts.limits(
            lambda: self._request(protocol.LIMITS, [], None, timeout, False))

    def _limit(self, name: str, size: int, timeout: Optional[float]) -> Optional[int]:
        """The server's ``name`` limit when ``size`` exceeds it, else None."""
        if size <= LIMITS_MATTER:
            return None
        maximum = self._limits(timeout).get(name)
        return maximum if maximum is not None and size > maximum else None

    def _over_limit(self, exc: errors.ServerError, name: str) -> bool:
        """Whether ``exc`` is the server's over-limit answer for ``name``; forgets the
        cached limits then (the server may have restarted with others)."""
        if isinstance(exc, errors.ElevatorValueError) and exc.detail \
                and exc.detail.get("limit") == name:
            self._pool.facts.forget_limits()
            return True
        return False

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def _out(self, value: bytes) -> Out:
        """A key or value for the user: bytes, or str with decode_responses."""
        # The ignores: decode_responses is what makes Out str or bytes, a checker cannot see it.
        if self.decode_responses and isinstance(value, bytes):
            return decode(value, self.encoding_errors)  # type: ignore[return-value]
        return value  # type: ignore[return-value]

    def _out_values(self, values: List[Optional[bytes]]) -> List[Any]:
        if self.decode_responses:
            return [None if v is None else decode(v, self.encoding_errors) for v in values]
        return values

    def _out_items(self, items: List, include_key: bool, include_value: bool) -> List:
        if not self.decode_responses:
            return items
        if include_key and include_value:
            errs = self.encoding_errors
            return [[decode(k, errs), decode(v, errs)] for k, v in items]
        return [decode(x, self.encoding_errors) for x in items]

    # --------------------------------------------------------- database store

    def connect(self, db_name: str, *, timeout: Optional[float] = None) -> None:
        """Bind this client to ``db_name``. Raises DatabaseError when it does not exist;
        the client then stays bound where it was."""
        name = check.db_name(db_name)
        check.timeout(timeout)
        uid = self._resolve_uid(name, timeout, refresh=True,
                                stale=self._pool.facts.known_uid(name))
        self._binding = (name, uid)

    def listdb(self, *, timeout: Optional[float] = None) -> List[str]:
        """The names of the server's databases (always including ``"default"``)."""
        return [self._text(n) for n in
                self._admin(protocol.DBLIST, [], timeout=timeout, bound=False) or []]

    def createdb(self, db_name: str, options: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> None:
        """Create a database. ``options`` are LevelDB's (``create_if_missing``,
        ``bloom_filter_bits``, ``lru_cache_size``, ``write_buffer_size``, ``block_size``,
        ``max_open_files``, ``paranoid_checks``...). A name that is an absolute path
        registers a LevelDB directory there, if the server's operator allowed that root.

        Raises DatabaseError if it exists (or the path is refused). Not retried after an
        ambiguous failure (the error then says the outcome is unknown: see listdb()).
        """
        name = check.db_name(db_name)
        if options is None:
            options = {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise TypeError("options must be a dict with str keys (LevelDB's option names)")
        self._ambiguous(protocol.DBCREATE, [name, options], timeout)

    def dropdb(self, db_name: str, *, timeout: Optional[float] = None) -> None:
        """Drop a database and delete its files. Raises DatabaseError if it does not exist."""
        name = check.db_name(db_name)
        self._ambiguous(protocol.DBDROP, [name], timeout)
        self._pool.facts.forget_uid(name)

    def _ambiguous(self, cmd: str, args: List, timeout: Optional[float]) -> None:
        try:
            # needs no database: works from a client whose database was dropped
            self._admin(cmd, args, timeout=timeout, bound=False, idempotent=False)
        except errors.TransportError as exc:
            if exc.request_sent:
                raise type(exc)(f"{exc}; the outcome of {cmd} {args[0]!r} is unknown "
                                "(check listdb())") from exc
            raise

    def repairdb(self, db_name: Optional[str] = None, *,
                 timeout: Optional[float] = None) -> None:
        """Run LevelDB's repair on the bound database, or on ``db_name``: a database whose
        files are missing or damaged cannot be bound to (DatabaseError), but is repaired
        by name. Raises DatabaseError when it does not exist or the repair fails."""
        if db_name is None:
            self._admin(protocol.DBREPAIR, [], timeout=timeout)
        else:
            self._admin(protocol.DBREPAIR, [check.db_name(db_name)], timeout=timeout,
                        bound=False)

    def mount(self, db_name: Optional[str] = None, *, timeout: Optional[float] = None) -> None:
        """Open a database on the server (the bound one by default)."""
        name = self.db_name if db_name is None else check.db_name(db_name)
        self._admin(protocol.DBMOUNT, [name], timeout=timeout, bound=False)

    def unmount(self, db_name: Optional[str] = None, *, timeout: Optional[float] = None) -> None:
        """Close a database on the server, releasing LevelDB's files and cache; it is
        mounted again by the next request that uses it."""
        name = self.db_name if db_name is None else check.db_name(db_name)
        self._admin(protocol.DBUMOUNT, [name], timeout=timeout, bound=False)

    # -------------------------------------------------------------------- data

    def Ping(self, *, timeout: Optional[float] = None) -> bool:
        """True when the server answers PING."""
        datas = self._admin(protocol.PING, [], timeout=timeout, bound=False)
        return bool(datas) and datas[0] == b"PONG"

    def info(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's statistics (the INFO extension) as a dict: version, pid, uptime,
        data_dir, requests, failures, and per command requests, failures by error code (a string) and
        latency p50/p90/p99/max in seconds over a recent window."""
        datas = self._admin(protocol.INFO, [], timeout=timeout, bound=False)
        if not isinstance(datas, dict):
            raise errors.ProtocolError(f"INFO: expected a map, got {type(datas).__name__}")
        return _texts(datas)

    def Get(self, key: Key, *, timeout: Optional[float] = None,
            compression: Optional[bool] = None) -> Out:
        """The value of ``key`` (bytes, or str with decode_responses).

        Raises ElevatorKeyError (a ``KeyError``) when the key does not exist.
        """
        bkey = to_bytes(key)
        if not self._merges():
            reply = self._call(protocol.GET, [bkey], timeout=timeout, compression=compression)
            return self._out(reply.datas[0])
        whole, deadline = self._budget(timeout)
        value = self._read(protocol.GET, [bkey], True, deadline, whole, lambda: self._call(
            protocol.GET, [bkey], timeout=_left(deadline), compression=compression,
            call_timeout=whole).datas)[0]
        if value is None:  # a merged MGET's answer for a missing key: GET's error
            raise errors.error_from_reply(
                errors.ErrorCode.KEY, f"Key {bkey!r} does not exist", command=protocol.GET,
                db=self.db_name, endpoint=self._pool.endpoint)
        return self._out(value)

    def MGet(self, keys: Sequence[Key], fill_cache: bool = False, *,
             timeout: Optional[float] = None,
             compression: Optional[bool] = None) -> List[Optional[Out]]:
        """The values of ``keys`` (a list or tuple), in order, ``None`` for each missing key.

        ``fill_cache``: let the reads fill LevelDB's block cache (True for small,
        repeated random reads; keep False for bulk reads). More keys than the server's
        ``max_keys`` are sent as several MGETs (``timeout`` then applies to each); the
        values are then not read from one snapshot.
        """
        if not isinstance(keys, (list, tuple)):
            raise TypeError(f"keys must be a list or tuple, not {type(keys).__name__}")
        check.boolean("fill_cache", fill_cache)
        # All bytes (the common case) is checked by one C-level pass (~0.1 ms for 10k
        # keys) instead of a Python call per key (~0.3 ms).
        bkeys = keys if set(map(type, keys)) == _ONLY_BYTES else [to_bytes(k) for k in keys]
        if not bkeys:
            return []
        if len(bkeys) <= MERGED_MGET and self._merges():
            whole, deadline = self._budget(timeout)
            values = self._read(protocol.MGET, bkeys, fill_cache, deadline, whole,
                                lambda: self._call(protocol.MGET, [bkeys, fill_cache],
                                                   timeout=_left(deadline),
                                                   compression=compression,
                                                   call_timeout=whole).datas)
            return self._out_values(values)
        chunk = self._limit("max_keys", len(bkeys), timeout)
        if chunk is None:
            try:
                values = self._call(protocol.MGET, [bkeys, fill_cache], timeout=timeout,
                                    compression=compression).datas
            except errors.ElevatorValueError as exc:
                # Limits cached before the server restarted with lower ones: split now.
                chunk = self._limit("max_keys", len(bkeys), timeout) \
                    if self._over_limit(exc, "max_keys") else None
                if chunk is None:
                    raise
        if chunk is not None:
            values = []
            for i in range(0, len(bkeys), chunk):
                values.extend(self._call(protocol.MGET, [bkeys[i:i + chunk], fill_cache],
                                         timeout=timeout, compression=compression).datas)
        return self._out_values(values)

    def Put(self, key: Key, value: Value, *, timeout: Optional[float] = None) -> None:
        """Store ``value`` under ``key``. Acknowledged once LevelDB accepted it.

        Raises LimitExceeded, before sending, when the request is larger than the
        server's max_message_size."""
        bkey, bvalue = to_bytes(key), to_bytes(value, "value")
        if not self._merges():
            self._call(protocol.PUT, [bkey, bvalue], timeout=timeout, is_write=True)
            return
        whole, deadline = self._budget(timeout)
        self._write(protocol.PUT, (protocol.BATCH_PUT, bkey, bvalue), len(bkey) + len(bvalue),
                    deadline, whole, lambda: self._call(protocol.PUT, [bkey, bvalue],
                                                        timeout=_left(deadline), is_write=True,
                                                        call_timeout=whole))

    def Delete(self, key: Key, *, timeout: Optional[float] = None) -> None:
        """Delete ``key`` (no error when it does not exist)."""
        bkey = to_bytes(key)
        if not self._merges():
            self._call(protocol.DELETE, [bkey], timeout=timeout, is_write=True)
            return
        whole, deadline = self._budget(timeout)
        self._write(protocol.DELETE, (protocol.BATCH_DELETE, bkey), len(bkey), deadline, whole,
                    lambda: self._call(protocol.DELETE, [bkey], timeout=_left(deadline),
                                       is_write=True, call_timeout=whole))

    def Exists(self, key: Key, *, timeout: Optional[float] = None) -> bool:
        """Whether ``key`` exists."""
        bkey = to_bytes(key)
        if not self._merges():
            return self._exists(bkey, timeout)
        whole, deadline = self._budget(timeout)
        found = self._read(protocol.EXISTS, [bkey], True, deadline, whole, lambda: [
            b"" if self._exists(bkey, _left(deadline), whole) else None])
        return found[0] is not None

    def _exists(self, bkey: bytes, timeout: Optional[float],
                call_timeout: Optional[float] = None) -> bool:
        datas = self._call(protocol.EXISTS, [bkey], timeout=timeout,
                           call_timeout=call_timeout).datas
        # The original server answers [true] or a bare false; this project's [false].
        return bool(datas) and bool(datas[0])

    # ------------------------------------------------------------- coalescing

    def _merges(self) -> bool:
        """Whether this call may be merged with other threads' (a thread that pinned a
        socket with ``pool.connection()`` keeps every call on it)."""
        return self.coalesce and not self._pool.pinned()

    def _whole(self, timeout: Optional[float]) -> float:
        """A call's whole timeout: ``timeout``, else the client's, else the pool's."""
        if timeout is not None:
            return timeout
        return self._pool.timeout if self.timeout is None else self.timeout

    def _budget(self, timeout: Optional[float]) -> Tuple[float, float]:
        """A call's whole timeout and its deadline."""
        check.timeout(timeout)
        whole = self._whole(timeout)
        return whole, time.monotonic() + whole

    def _read(self, cmd: str, keys: Sequence[bytes], fill_cache: bool, deadline: float,
              whole: float, alone: Callable[[], List[Optional[bytes]]]
              ) -> List[Optional[bytes]]:
        """The values of ``keys`` (None where missing): ``alone()`` when no read of this
        database is in flight, else this call's share of one MGET with the concurrent
        reads of other threads (same ``fill_cache``; GET's is True). ``whole``: the
        call's whole timeout."""
        if not self._binding[1]:
            self._open(whole, deadline)
        binding = self._binding

        def merged(flat: List[bytes], deadline: float) -> List[Optional[bytes]]:
            values: List[Optional[bytes]] = self._call(
                protocol.MGET, [flat, fill_cache], timeout=_left(deadline),
                binding=binding).datas
            return values

        return self._pool.reads.call((binding, fill_cache), keys, sum(map(len, keys)), deadline,
                                     alone, merged, f"{cmd} to {self._pool.endpoint}",
                                     self._note)

    def _write(self, cmd: str, op: tuple, size: int, deadline: float, whole: float,
               alone: Callable[[], Any]) -> None:
        """``alone()`` when no write of this database is in flight, else ``op`` sent in one
        BATCH with the concurrent writes of other threads, in the order they queued."""
        if not self._binding[1]:
            self._open(whole, deadline)
        binding = self._binding

        def merged(ops: List[tuple], deadline: float) -> None:
            self._call(protocol.BATCH, [ops], timeout=_left(deadline), is_write=True,
                       binding=binding)

        self._pool.writes.call(binding, [op], size, deadline, alone, merged,
                               f"{cmd} to {self._pool.endpoint}", self._note)

    # The item shapes (also Slice's and RangeIter's): [key, value] by default; the bare key
    # or value when a flag is False; Any when a flag is a bool known only at run time.
    @overload
    def Range(self, start: Optional[Key] = None, limit: Union[Key, int, None] = None, *,
              include_key: Literal[True] = True, include_value: Literal[True] = True,
              prefix: Optional[Key] = None, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[List[Out]]: ...

    @overload
    def Range(self, start: Optional[Key] = None, limit: Union[Key, int, None] = None, *,
              include_key: bool = True, include_value: Literal[False],
              prefix: Optional[Key] = None, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Out]: ...

    @overload
    def Range(self, start: Optional[Key] = None, limit: Union[Key, int, None] = None, *,
              include_key: Literal[False], include_value: bool = True,
              prefix: Optional[Key] = None, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Out]: ...

    @overload
    def Range(self, start: Optional[Key] = None, limit: Union[Key, int, None] = None, *,
              include_key: bool = True, include_value: bool = True,
              prefix: Optional[Key] = None, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Any]: ...

    def Range(self, start: Optional[Key] = None, limit: Union[Key, int, None] = None, *,
              include_key: bool = True, include_value: bool = True,
              prefix: Optional[Key] = None, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Any]:
        """The items from ``start`` on, as a list of ``[key, value]`` (or bare keys or
        values when one of ``include_key``/``include_value`` is False). A range of more
        items than the server's ``max_items`` is fetched page by page (``timeout`` then
        applies to each page), not from one snapshot.

        ``limit``: a str/bytes is an inclusive stop key; an int is a count (as
        :meth:`Slice`); None is the end of the database. ``prefix`` keeps only keys that
        start with it. ``start`` None is the beginning of the database.
        """
        if isinstance(limit, int) and not isinstance(limit, bool):
            if prefix is not None:
                raise ValueError("prefix cannot be combined with an int limit (use RangeIter)")
            return self._slice(start, limit, include_key, include_value, timeout, compression)
        _check_flags(include_key, include_value)
        start_b = check.optional_bytes(start, "start")
        stop_b = check.optional_bytes(limit, "limit (a stop key or a count)")
        pfx = check.optional_bytes(prefix, "prefix")
        args = [start_b, stop_b, include_key, include_value, pfx]
        try:
            items = self._call(protocol.RANGE, args, timeout=timeout,
                               compression=compression, stream=STREAM_PAGE).datas
        except errors.ElevatorValueError as exc:
            if not self._over_limit(exc, "max_items"):
                raise
            if pfx is not None and (start_b is None or start_b < pfx):
                start_b = pfx
            page = min(self._limits(timeout).get("max_items", _LIMIT_PAGE), _LIMIT_PAGE)
            return list(itertools.chain.from_iterable(self._range_pages(
                start_b, stop_b, pfx, include_key, include_value, page, timeout)))
        return self._out_items(items or [], include_key, include_value)

    @overload
    def Slice(self, key_from: Optional[Key], count: int, *, include_key: Literal[True] = True,
              include_value: Literal[True] = True, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[List[Out]]: ...

    @overload
    def Slice(self, key_from: Optional[Key], count: int, *, include_key: bool = True,
              include_value: Literal[False], timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Out]: ...

    @overload
    def Slice(self, key_from: Optional[Key], count: int, *, include_key: Literal[False],
              include_value: bool = True, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Out]: ...

    @overload
    def Slice(self, key_from: Optional[Key], count: int, *, include_key: bool = True,
              include_value: bool = True, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Any]: ...

    def Slice(self, key_from: Optional[Key], count: int, *, include_key: bool = True,
              include_value: bool = True, timeout: Optional[float] = None,
              compression: Optional[bool] = None) -> List[Any]:
        """The first ``count`` items from ``key_from`` (inclusive), same shapes as Range.

        A ``count`` over the server's ``max_items`` is fetched page by page (``timeout``
        then applies to each page)."""
        return self._slice(key_from, count, include_key, include_value, timeout, compression)

    def _slice(self, key_from: Optional[Key], count: int, include_key: bool,
               include_value: bool, timeout: Optional[float],
               compression: Optional[bool]) -> List[Any]:
        check.integer("count", count)
        _check_flags(include_key, include_value)
        if count == 0:
            return []
        start = check.optional_bytes(key_from, "key_from")
        maximum = self._limit("max_items", count, timeout)
        if maximum is not None:
            pages = self._range_pages(start, None, None, include_key, include_value,
                                      min(maximum, _LIMIT_PAGE), timeout)
            return list(itertools.islice(itertools.chain.from_iterable(pages), count))
        args = [start, count, include_key, include_value]
        items = self._call(protocol.SLICE, args, timeout=timeout, compression=compression,
                           stream=STREAM_PAGE if count > STREAM_PAGE else 0).datas
        return self._out_items(items or [], include_key, include_value)

    @overload
    def RangeIter(self, key_from: Optional[Key] = None, key_to: Optional[Key] = None, *,
                  include_key: Literal[True] = True, include_value: Literal[True] = True,
                  prefix: Optional[Key] = None, page_size: int = RANGE_ITER_PAGE,
                  timeout: Optional[float] = None) -> Iterator[List[Out]]: ...

    @overload
    def RangeIter(self, key_from: Optional[Key] = None, key_to: Optional[Key] = None, *,
                  include_key: bool = True, include_value: Literal[False],
                  prefix: Optional[Key] = None, page_size: int = RANGE_ITER_PAGE,
                  timeout: Optional[float] = None) -> Iterator[Out]: ...

    @overload
    def RangeIter(self, key_from: Optional[Key] = None, key_to: Optional[Key] = None, *,
                  include_key: Literal[False], include_value: bool = True,
                  prefix: Optional[Key] = None, page_size: int = RANGE_ITER_PAGE,
                  timeout: Optional[float] = None) -> Iterator[Out]: ...

    @overload
    def RangeIter(self, key_from: Optional[Key] = None, key_to: Optional[Key] = None, *,
                  include_key: bool = True, include_value: bool = True,
                  prefix: Optional[Key] = None, page_size: int = RANGE_ITER_PAGE,
                  timeout: Optional[float] = None) -> Iterator[Any]: ...

    def RangeIter(self, key_from: Optional[Key] = None, key_to: Optional[Key] = None, *,
                  include_key: bool = True, include_value: bool = True,
                  prefix: Optional[Key] = None, page_size: int = RANGE_ITER_PAGE,
                  timeout: Optional[float] = None) -> Iterator[Any]:
        """Lazily iterate from ``key_from`` to ``key_to`` (both inclusive; None = open).

        Fetches ``page_size`` items at a time, so memory stays bounded however large
        the range. Each item is ``[key, value]`` (or the bare key or value). ``timeout``
        applies to each page.

        This project's server streams the pages from one iterator (one snapshot), a few
        ahead of the reader, on a socket the iteration holds until it ends, is closed
        (``close()`` on the iterator) or is garbage-collected; at most half the pool's
        sockets are held so, and an iteration that finds none to spare pages with
        SLICE. An iteration whose stream is lost (a dropped connection, a pause of
        over 15 s, a fork) goes on after its last key from the database as it is then.
        """
        _check_flags(include_key, include_value)
        check.integer("page_size", page_size, minimum=1)
        check.timeout(timeout)
        start = check.optional_bytes(key_from, "key_from")
        stop = check.optional_bytes(key_to, "key_to")
        pfx = check.optional_bytes(prefix, "prefix")
        if pfx is not None and (start is None or start < pfx):
            start = pfx
        pages = self._iterate(start, stop, pfx, include_key, include_value, page_size, timeout)
        if self._tracer is not None:
            # one span from the first page to the end of the iteration, current while a
            # page is fetched (its retries are its events)
            pages = self._tracer.iterate(pages, protocol.RANGE, self.db_name)
        return _flatten(pages)

    def _iterate(self, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
                 include_key: bool, include_value: bool, page_size: int,
                 timeout: Optional[float]) -> Iterator[List[Any]]:
        """RangeIter's pages: streamed pages of RANGE (always with keys, so that a lost
        stream resumes after the last one), or SLICE pages when the server cannot
        stream iterations or no socket is to spare."""
        if not self._binding[1]:
            self._opened(timeout)
        limits = self._limits(timeout)
        if not limits.get(protocol.STREAM_ITER):
            yield from self._range_pages(start, stop, prefix, include_key, include_value,
                                         page_size, timeout)
            return
        page_size = min(page_size, limits.get("max_items", page_size))
        budget = self._whole(timeout)
        pool = self._pool
        name, uid = self._binding
        refreshed = False
        while True:
            opened = pool.iterate(protocol.RANGE, [start, stop, True, include_value, prefix],
                                  uid, page=page_size, timeout=budget)
            if opened is None:
                yield from self._range_pages(start, stop, prefix, include_key, include_value,
                                             page_size, timeout)
                return
            stream, first = opened
            page: Optional[protocol.Reply] = first
            try:
                while page is not None:
                    if page.status == Status.FAILURE:
                        if not refreshed and self._uid_forgotten(page):
                            refreshed = True
                            uid = self._new_uid(name, uid, timeout, protocol.RANGE)
                            break
                        self._raise(page, protocol.RANGE, name)
                    items = page.datas
                    if items:
                        start = _after(items[-1][0] if include_value else items[-1])
                        if include_key or not include_value:
                            yield self._out_items(items, include_key, include_value)
                        else:
                            yield self._out_items([p[1] for p in items], False, True)
                    try:
                        page = stream.next_page()
                    except errors.TransportError as exc:
                        # the items so far were whole pages: go on after the last one
                        if not pool.retry.is_retryable(exc, idempotent=True):
                            raise
                        break
                if stream.complete:
                    return
                if first.status != Status.FAILURE and not first.datas:
                    # a new stream that ends nowhere: never loop on it
                    raise errors.ProtocolError(
                        f"RANGE: a stream from {self._pool.endpoint} sent no item and no end")
            finally:
                stream.close()

    def _range_pages(self, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
                     include_key: bool, include_value: bool, page_size: int,
                     timeout: Optional[float]) -> Iterator[List[Any]]:
        """The items, page by page (lists). A page is one SLICE: never more items than the
        server's max_items."""
        page_size = self._limit("max_items", page_size, timeout) or page_size
        while True:
            try:
                page = self._call(protocol.SLICE, [start, page_size, True, include_value],
                                  timeout=timeout).datas or []
            except errors.ElevatorValueError as exc:
                # Limits cached before the server restarted with lower ones: page smaller.
                smaller = self._limit("max_items", page_size, timeout) \
                    if self._over_limit(exc, "max_items") else None
                if smaller is None:
                    raise
                page_size = smaller
                continue
            if not page:
                return
            keys = [p[0] for p in page] if include_value else page
            last = keys[-1]
            cut = len(page)
            if (stop is not None and last > stop) or (prefix is not None
                                                     and not last.startswith(prefix)):
                cut = next(i for i, k in enumerate(keys)
                           if (stop is not None and k > stop)
                           or (prefix is not None and not k.startswith(prefix)))
            if include_key and include_value:
                out = page[:cut] if cut < len(page) else page
            elif include_key:
                out = keys[:cut]
            else:
                out = [p[1] for p in page[:cut]]
            yield self._out_items(out, include_key, include_value)
            if cut < len(page) or len(page) < page_size:
                return
            start = _after(last)

    # ------------------------------------------------------------------ batches

    def WriteBatch(self) -> "WriteBatch":
        """A :class:`WriteBatch` on this client's server, database and settings."""
        return WriteBatch(elevator=self)

    def _write_batch(self, ops: List, timeout: Optional[float],
                     stream: Optional[BatchStream] = None) -> None:
        """Write ``ops`` atomically: the final chunk of ``stream`` (its earlier chunks
        already sent), else as one BATCH, or streamed whole when larger than a chunk."""
        try:
            maximum = self._limit("max_keys", len(ops), timeout)
            if maximum is not None:
                raise errors.LimitExceeded(
                    f"WriteBatch of {len(ops)} operations exceeds the server's limit of "
                    f"{maximum} operations per batch (max_keys): a batch is atomic, so it "
                    "cannot be split; write several smaller batches", limit="max_keys",
                    value=len(ops), maximum=maximum)
            whole, deadline = self._budget(timeout)
            if stream is None or stream.broken:
                if stream is not None:
                    stream.abort()  # its socket back before the batch is sent again
                self._write_whole(ops, deadline, whole)
                return
            try:
                reply = stream.end(ops[stream.sent:], deadline, whole)
            except errors.TransportError as exc:
                if time.monotonic() >= deadline or not self._pool.retry.is_retryable(
                        exc, idempotent=False, is_write=True):
                    raise
            else:
                if reply.status != Status.FAILURE:
                    return
                if not self._batch_lost(reply):
                    self._raise(reply, protocol.BATCH, self.db_name)
            # Nothing of it was written (or, after an unanswered final chunk, writing the
            # same operations again converges): the whole batch again, under a new id.
            stream.abort()
            self._write_whole(ops, deadline, whole)
        finally:
            if stream is not None:
                stream.abort()  # its socket back; the server drops an unwritten batch

    def _batch_lost(self, reply: protocol.Reply) -> bool:
        """Whether a streamed batch's final chunk was refused with nothing written in a
        way that sending the whole batch again may cure: the server dropped it (idle,
        restarted), the database's uid changed, or it does not know BATCHEND."""
        detail = reply.detail or {}
        if protocol.BATCH_LOST in detail or "unknown_uid" in detail:
            return True
        if reply.err_code == protocol.ErrorCode.KEY:  # a server without the extension
            self._pool.facts.forget_limits()
            return True
        return False

    def _write_whole(self, ops: List, deadline: float, whole: float) -> None:
        """Send every operation now: as chunks and a final chunk when the batch is larger
        than a chunk and the server streams batches, else as one BATCH."""
        stream = self._batch_stream(deadline) if len(ops) > STREAM_CHUNK else None
        if stream is None:
            self._call(protocol.BATCH, [ops], timeout=_left(deadline), is_write=True,
                       call_timeout=whole)
            return
        try:
            last = (len(ops) - 1) // STREAM_CHUNK * STREAM_CHUNK
            for start in range(0, last, STREAM_CHUNK):
                if not stream.part(ops[start:start + STREAM_CHUNK]):
                    break
            if stream.broken:  # the connection went away while sending: once, as one BATCH
                stream.abort()
                self._call(protocol.BATCH, [ops], timeout=_left(deadline), is_write=True,
                           call_timeout=whole)
                return
            reply = stream.end(ops[last:], deadline, whole)
        finally:
            stream.abort()
        if reply.status == Status.FAILURE:
            self._raise(reply, protocol.BATCH, self.db_name)

    def _batch_stream(self, deadline: Optional[float] = None) -> Optional[BatchStream]:
        """A stream for a WriteBatch's chunks, or None: the server does not stream
        batches (the original one), no socket is free now, or the server cannot be
        reached (the batch is then sent at Write, as one BATCH)."""
        try:
            timeout = None if deadline is None else _left(deadline)
            if not self._binding[1]:
                self._open(*self._budget(timeout))
            limits = self._limits(timeout)
        except errors.ElevatorError:
            return None
        return BatchStream.open(self._pool, self._binding[1], limits)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the sockets (closes the pool if this client owns it)."""
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> "Elevator[Out]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class WriteBatch(PendingWrites):
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

    def __init__(self, db_name: Optional[str] = None, *, elevator: Optional[Elevator[Any]] = None,
                 **elevator_options: Any) -> None:
        super().__init__()
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
        # Streaming: the chunks sent so far (their socket, batch id), under one lock.
        self._slot = _StreamSlot()
        self._stream_lock = threading.Lock()
        self._mark = STREAM_CHUNK
        finalizer = weakref.finalize(self, self._slot.abandon)
        setattr(finalizer, "atexit", False)  # at exit the sockets go with the process

    @property
    def db_name(self) -> str:
        return self._client.db_name

    def __repr__(self) -> str:
        return f"<WriteBatch db={self.db_name!r} ops={len(self)}>"

    def _filled(self) -> None:
        """A chunk's worth of operations is waiting: send it now, unanswered (streaming)."""
        with self._stream_lock:
            stream = self._slot.stream
            if stream is None:
                stream = self._slot.stream = self._client._batch_stream()
                if stream is None:
                    self._mark = sys.maxsize  # written as one BATCH at Write
                    return
            ops = self._ops
            while len(ops) - stream.sent >= STREAM_CHUNK:
                if not stream.part(ops[stream.sent:stream.sent + STREAM_CHUNK]):
                    break
            self._mark = sys.maxsize if stream.broken else stream.sent + STREAM_CHUNK

    def _take_stream(self) -> Optional[BatchStream]:
        """The stream of the operations so far (the caller ends or aborts it); the next
        operations start afresh. Called under the stream lock."""
        stream, self._slot.stream = self._slot.stream, None
        self._mark = STREAM_CHUNK
        return stream

    def Write(self, *, timeout: Optional[float] = None) -> None:
        """Apply every pending operation atomically; empty the batch on success.

        ``timeout`` (seconds) overrides the client's default deadline. Raises what
        :class:`Elevator` calls raise (TypeError/SignalError from the server for a
        malformed op, ElevatorTimeout...); on any failure the operations are kept.

        On a server that streams batches, the operations already went as chunks while
        they were added; Write sends the rest and waits for the server's one answer.
        """
        with self._stream_lock:
            stream = self._take_stream()
            ops = self.pending()
            if not ops:
                if stream is not None:
                    stream.abort()
                return
            self._client._write_batch(ops, timeout, stream)
            self.written(len(ops))

    def Clear(self) -> None:
        """Discard every pending operation (the server drops the chunks it holds)."""
        with self._stream_lock:
            stream = self._take_stream()
            if stream is not None:
                stream.abort()
            super().Clear()

    def close(self) -> None:
        """Release the client's sockets if this batch opened its own client (the chunks
        streamed so far are dropped by the server; the operations are kept)."""
        with self._stream_lock:
            stream = self._take_stream()
            if stream is not None:
                stream.abort()
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


def _flatten(pages: Iterator[List[Any]]) -> Iterator[Any]:
    """The items of ``pages``, which are closed when this is closed or collected (a
    streamed iteration gives its socket back then)."""
    try:
        for page in pages:
            yield from page
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()


class _StreamSlot:
    """Where a WriteBatch keeps its stream: also reachable by the finalizer that gives the
    socket back when the batch is dropped without Write or Clear."""

    __slots__ = ("stream",)

    def __init__(self) -> None:
        self.stream: Optional[BatchStream] = None

    def abandon(self) -> None:
        stream = self.stream
        if stream is None:
            return
        # not here: the garbage collector may run this inside the pool's own locked code
        try:
            threading.Thread(target=stream.abort, name="elevator-batch-abandoned",
                             daemon=True).start()
        except RuntimeError:  # the interpreter is shutting down
            pass


def _texts(value: Any) -> Any:
    """INFO's reply with its strings as str (an old msgpack packs them as raw bytes)."""
    if isinstance(value, dict):
        return {_texts(k): _texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v) for v in value]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
