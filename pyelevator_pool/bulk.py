"""Bulk loading and export: millions of pairs in, through server restarts; a range out, in order.

>>> report = load(client, ((b"k%09d" % i, b"v") for i in range(10_000_000)))
>>> for key, value in dump(client, prefix=b"k"):
...     ...

:func:`load` cuts any iterable of ``(key, value)`` pairs into batches, writes each as
one atomic BATCH request (an Elevator WriteBatch) from several worker threads, and
retries each batch after a transport failure (server killed, restarted, timeout)
under a :class:`~pyelevator_pool.RetryPolicy`. Repeating a batch is harmless: its
puts converge to the same state. The input is read lazily through a bounded number
of batches, so a generator of any length is never materialized.

When it gives up it raises :class:`BulkLoadError`, whose ``written`` is the number of
input pairs durably written as a contiguous prefix *in input order* (batches can
complete out of order across workers; a batch past the prefix may also be written,
and is simply written again on resume): ``load(..., skip=exc.written)`` resumes.

:func:`dump` streams the pairs of a key range in key order through paged SLICE
requests, so memory stays bounded however large the range.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union, cast, overload

from . import args, errors
from .batch import Op
from .client import RANGE_ITER_PAGE, Elevator, Key, Out
from .pool import ElevatorPool
from .protocol import BATCH_PUT
from .retry import RetryPolicy

__all__ = ["load", "dump", "LoadReport", "BulkLoadError", "DEFAULT_BATCH_SIZE", "DEFAULT_WORKERS"]

#: pairs per BATCH request: the smallest size where CPU per pair stops falling (the batch
#: size sweep in benchmarks/README.rst), a small unit to retry and to hold in memory.
DEFAULT_BATCH_SIZE = 2_000
#: worker threads, i.e. batches in flight. Two keep the server busy with the next
#: batch while a reply travels back: at 500 and 1,000 pairs a batch (where the round
#: trip weighs most) 2 workers reached 0.94 and 0.85 of plyvel against 0.58 and 0.74
#: for 1; 3 or 4 workers were no faster on 2 cores and use more sockets and memory.
DEFAULT_WORKERS = 2

Pair = Tuple[Key, Any]
ClientOrPool = Union[Elevator[Any], ElevatorPool]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load` did.

    ``pairs``: pairs written by this call; ``skipped``: input pairs passed over
    (``skip=``); ``written``: ``skipped + pairs``, the input position reached (the
    ``skip=`` of a later resume); ``batches``: BATCH requests acknowledged;
    ``retries``: requests retried after a transport failure; ``elapsed``: seconds;
    ``rate``: ``pairs / elapsed`` in pairs per second.
    """

    pairs: int
    batches: int
    retries: int
    elapsed: float
    rate: float
    skipped: int = 0

    @property
    def written(self) -> int:
        return self.skipped + self.pairs

    def __str__(self) -> str:
        skipped = f" (after skipping {self.skipped})" if self.skipped else ""
        return (f"{self.pairs} pairs{skipped} in {self.batches} batches, {self.elapsed:.2f}s, "
                f"{self.rate:,.0f} pairs/s, {self.retries} retries")


class BulkLoadError(errors.ElevatorError):
    """:func:`load` gave up. ``written`` input pairs (counted from the start of the
    input, skipped ones included) are durably written as a contiguous prefix: resume
    with ``load(..., skip=exc.written)``.

    ``pairs`` of them were written by this call; ``retries`` and ``batches`` as in
    :class:`LoadReport`; ``bad_index`` is the input index of the pair that caused the
    failure when one did (not a pair, not str/bytes...), else None. The underlying
    error is ``__cause__``.
    """

    def __init__(self, message: str, *, written: int, pairs: int, batches: int, retries: int,
                 elapsed: float, bad_index: Optional[int] = None) -> None:
        super().__init__(message)
        self.written = written
        self.pairs = pairs
        self.batches = batches
        self.retries = retries
        self.elapsed = elapsed
        self.bad_index = bad_index


class _BadPair(ValueError):
    """A pair of the input that cannot be written; ``index`` is its input index."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"input pair #{index}: {message}")
        self.index = index


def _find_bad_pair(ops: List[Op], base: int) -> Optional[_BadPair]:
    """The first op whose key or value is not str/bytes (the server or msgpack refused it)."""
    for i, op in enumerate(ops):
        try:
            args.to_bytes(op[1], "key")
            args.to_bytes(op[2], "value")
        except (TypeError, UnicodeError) as exc:
            return _BadPair(base + i, str(exc))
    return None


def _build_ops(chunk: List[Any], base: int) -> Tuple[List[Op], Optional[_BadPair]]:
    """BATCH ops for ``chunk``; on a malformed item, the ops before it and the error.

    Tuples, not lists (msgpack packs both as arrays): a tuple of a bytes pair is
    untracked by the cyclic GC at its first collection, whereas 2,000 lists per batch
    kept the GC busy: building and encoding a batch measured 0.36 us/pair with
    lists and 0.11 us/pair with tuples.
    """
    try:
        return [(BATCH_PUT, k, v) for k, v in chunk], None
    except (TypeError, ValueError):  # not a 2-item pair: find which one, keep those before
        ops: List[Op] = []
        for i, pair in enumerate(chunk):
            try:
                k, v = pair
            except (TypeError, ValueError):
                return ops, _BadPair(base + i, f"expected a (key, value) pair, not {pair!r:.60}")
            ops.append((BATCH_PUT, k, v))
        raise  # pragma: no cover - the comprehension failed, so some item must have


def _take(it: Iterator[Any], chunk: List[Any], size: int, max_bytes: int) -> bool:
    """Append to ``chunk`` up to ``size`` items of ``it``, ending at the item that brings
    their keys and values to ``max_bytes``; True when ``it`` is exhausted. An error of
    ``it`` propagates with the items read before it kept in ``chunk``."""
    total = 0
    append = chunk.append
    for pair in it:
        append(pair)
        try:
            total += len(pair[0]) + len(pair[1])
        except Exception:  # noqa: BLE001 - not a pair: _build_ops reports it
            pass
        if len(chunk) >= size or total >= max_bytes:
            return False
    return True


def _resolve(client_or_pool: Any, db_name: Optional[str]) -> Tuple[ElevatorPool, str]:
    if isinstance(client_or_pool, Elevator):
        return client_or_pool.pool, client_or_pool.db_name if db_name is None else db_name
    if isinstance(client_or_pool, ElevatorPool):
        return client_or_pool, "default" if db_name is None else db_name
    raise TypeError(f"expected an Elevator or an ElevatorPool, not {type(client_or_pool).__name__}")


class _Loader:
    """The shared state of one load: the contiguous-prefix tracker and the failure."""

    def __init__(self, client: Elevator, workers: int, timeout: float,
                 progress: Optional[Callable[[int], Any]]) -> None:
        self.client = client
        self.timeout = timeout
        self.progress = progress
        self.lock = threading.Lock()
        self.progress_lock = threading.Lock()
        self.failure: Optional[BaseException] = None
        self.failure_seq = math.inf  # seq of the batch that failed first (input order)
        self.stopping = threading.Event()
        self.done_pairs = 0          # acknowledged by this call, in any order
        self.batches = 0
        self.next_seq = 0            # the first batch not yet known written
        self.prefix_end = 0          # input index just past the contiguous written prefix
        self.completed: Dict[int, int] = {}    # seq -> end index, for batches past the prefix
        # One slot per batch queued or in flight: bounds memory to 2 * workers batches.
        self.slots = threading.Semaphore(2 * workers)
        self.tasks: "queue.SimpleQueue[Optional[Tuple[int, int, List[Op]]]]" = queue.SimpleQueue()

    def fail(self, seq: float, exc: BaseException, *, cancel: bool = True) -> None:
        """Record a failure. ``cancel``: batches queued but not yet sent are dropped
        (a failed write); not for a failure of the input, after which the batches
        read before it are still written."""
        with self.lock:
            if seq < self.failure_seq:
                self.failure, self.failure_seq = exc, seq
        if cancel:
            self.stopping.set()

    def worker(self) -> None:
        write = self.client._write_batch
        while True:
            task = self.tasks.get()
            if task is None:
                return
            seq, start, ops = task
            try:
                if self.stopping.is_set():
                    continue  # given up: a batch not yet sent is not written
                try:
                    write(ops, self.timeout)
                except (errors.ElevatorTypeError, errors.SignalError, TypeError, ValueError,
                        UnicodeError) as exc:
                    # The server (or msgpack) refused a key or value: say which pair.
                    bad = _find_bad_pair(ops, start)
                    if bad is None:
                        raise
                    raise bad from exc
                self._completed(seq, start + len(ops), len(ops))
            except Exception as exc:  # noqa: BLE001 - reported by load() as BulkLoadError
                self.fail(seq, exc)
            finally:
                self.slots.release()

    def _completed(self, seq: int, end: int, n: int) -> None:
        with self.lock:
            self.batches += 1
            self.done_pairs += n
            self.completed[seq] = end
            while self.next_seq in self.completed:
                self.prefix_end = self.completed.pop(self.next_seq)
                self.next_seq += 1
        if self.progress is not None:
            # Under one lock, so the callback sees a non-decreasing count.
            with self.progress_lock:
                self.progress(self.done_pairs)


def load(client_or_pool: ClientOrPool, pairs: Iterable[Pair], *, db_name: Optional[str] = None,
         batch_size: int = DEFAULT_BATCH_SIZE, workers: int = DEFAULT_WORKERS,
         retry: Optional[RetryPolicy] = None, progress: Optional[Callable[[int], Any]] = None,
         skip: int = 0, timeout: Optional[float] = None,
         batch_bytes: Optional[int] = None) -> LoadReport:
    """Write every ``(key, value)`` pair of ``pairs`` as atomic batches; ride out restarts.

    :param client_or_pool: an :class:`Elevator` (its server and database) or an
        :class:`ElevatorPool` (its server). The load runs on a private pool of
        ``workers`` sockets that shares the given pool's ZeroMQ context and settings,
        so it neither starves nor is starved by the application's other threads.
    :param pairs: any iterable of 2-item pairs; keys and values str (UTF-8) or bytes.
        It is read lazily, at most ``2 * workers`` batches ahead of the server.
    :param db_name: the database; default the client's, or ``"default"`` for a pool.
    :param batch_size: pairs per BATCH request (each applied all or nothing).
    :param workers: threads writing batches concurrently (batches in flight).
    :param retry: the :class:`RetryPolicy` for each batch; default the pool's.
    :param progress: called as ``progress(n)`` after each acknowledged batch with the
        number of pairs this call has written so far (non-decreasing); called from
        worker threads, one call at a time. An exception from it stops the load.
    :param skip: pass over the first ``skip`` input pairs without writing them (resume).
    :param timeout: deadline in seconds of each batch, its retries included. Default the
        pool's ``timeout`` (10 s): a server restart is ridden out, a dead server is not
        waited for forever.
    :param batch_bytes: also end a batch at the pair that brings its keys' and values'
        lengths to ``batch_bytes`` (None: by count only). With large values this keeps
        a batch under the server's ``max_message_size`` and bounds memory to about
        ``(2 * workers + 1) * (batch_bytes + the largest pair)``.
    :returns: a :class:`LoadReport`.
    :raises BulkLoadError: when it gives up (a batch failed past its retries, the server
        refused a batch, a pair is malformed, the iterable raised, ``progress`` raised).
        Its ``written`` says how many input pairs are durably written, in input order.
        Pairs read before a failure of the iterable itself are written first, so a
        reader that raises on a bad record leaves exactly the records before it.
    :raises TypeError, ValueError: for bad arguments (before anything is written).

    A ``KeyboardInterrupt`` stops the load: batches in flight are finished, and it
    propagates with a ``written`` attribute. If a key occurs twice in the input in
    different batches, which value wins is only certain with ``workers=1`` (batches
    complete out of order); within one batch the later pair wins.
    """
    pool, name = _resolve(client_or_pool, db_name)
    args.integer("batch_size", batch_size, minimum=1)
    args.integer("workers", workers, minimum=1)
    args.integer("skip", skip)
    if batch_bytes is not None:
        args.integer("batch_bytes", batch_bytes, minimum=1)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable (it is called with the pairs written so far)")
    timeout = args.timeout(timeout)
    if timeout is None:
        timeout = pool.timeout
    try:
        it = iter(pairs)
    except TypeError:
        raise TypeError(f"pairs must be an iterable of (key, value), not {type(pairs).__name__}") \
            from None

    if pool.is_closed:
        raise errors.PoolClosed(f"pool for {pool.endpoint} is closed")
    started = time.monotonic()
    private = pool.derive(max_size=workers, timeout=timeout, checkout_timeout=timeout,
                          retry=pool.retry if retry is None else retry)
    try:
        try:
            client = Elevator(name, pool=private)
        except Exception as exc:
            elapsed = time.monotonic() - started
            raise BulkLoadError(
                f"bulk load into {name!r} at {pool.endpoint} could not start: {exc}; "
                f"nothing was written (resume with skip={skip})", written=skip, pairs=0,
                batches=0, retries=private.stats()["retries"], elapsed=elapsed) from exc
        return _run(_Loader(client, workers, timeout, progress), it, name, batch_size, workers,
                    skip, started, private, batch_bytes)
    finally:
        private.close()


def _run(loader: _Loader, it: Iterator[Any], name: str, batch_size: int, workers: int,
         skip: int, started: float, pool: ElevatorPool,
         batch_bytes: Optional[int] = None) -> LoadReport:
    threads = [threading.Thread(target=loader.worker, name=f"elevator-bulk-{i}", daemon=True)
               for i in range(workers)]
    for t in threads:
        t.start()
    skipped = 0
    interrupt: Optional[BaseException] = None
    try:
        if skip:
            try:
                skipped = sum(1 for _ in islice(it, skip))
            except Exception as exc:
                loader.fail(-1, exc, cancel=False)
        loader.prefix_end = skipped
        seq, offset = 0, skipped
        while loader.failure is None and not loader.stopping.is_set():
            chunk: List[Any] = []
            failed: Optional[BaseException] = None
            exhausted = False
            try:
                if batch_bytes is None:
                    chunk.extend(islice(it, batch_size))  # keeps the items read before an error
                    exhausted = len(chunk) < batch_size
                else:
                    exhausted = _take(it, chunk, batch_size, batch_bytes)
            except Exception as exc:
                failed = exc
            ops, bad = _build_ops(chunk, offset)
            if ops:
                loader.slots.acquire()
                if loader.stopping.is_set():
                    loader.slots.release()
                    break
                loader.tasks.put((seq, offset, ops))
                seq += 1
                offset += len(ops)
            problem = bad if bad is not None else failed
            if problem is not None:
                # After the batches read so far: sequence number past every one of them.
                loader.fail(seq, problem, cancel=False)
                break
            if exhausted:
                break
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: stop, then let it go on
        interrupt = exc
        loader.stopping.set()
    finally:
        for _ in threads:
            loader.tasks.put(None)
        for t in threads:
            t.join()
    elapsed = time.monotonic() - started
    retries = pool.stats()["retries"]
    pairs = loader.prefix_end - skipped
    if interrupt is not None:
        setattr(interrupt, "written", loader.prefix_end)  # a BaseException declares no .written
        raise interrupt
    if loader.failure is not None:
        failure = loader.failure
        if isinstance(failure, _BadPair):
            what = str(failure)
        elif isinstance(failure, errors.TransportError):
            what = f"a batch failed after its retries: {type(failure).__name__}: {failure}"
        else:
            what = f"{type(failure).__name__}: {failure}"
        raise BulkLoadError(
            f"bulk load into {name!r} at {pool.endpoint} stopped: {what}; the first "
            f"{loader.prefix_end} input pairs are written (resume with "
            f"skip={loader.prefix_end}); {retries} retries", written=loader.prefix_end,
            pairs=pairs, batches=loader.batches, retries=retries, elapsed=elapsed,
            bad_index=getattr(failure, "index", None)) from failure
    return LoadReport(pairs=pairs, batches=loader.batches, retries=retries, elapsed=elapsed,
                      rate=pairs / elapsed if elapsed > 0 else 0.0, skipped=skipped)


# Pairs of what the client returns (bytes, or str with decode_responses); a pool's are bytes.
@overload
def dump(client_or_pool: Elevator[Out], start: Optional[Key] = None, stop: Optional[Key] = None,
         prefix: Optional[Key] = None, *, db_name: Optional[str] = None,
         page_size: int = RANGE_ITER_PAGE, timeout: Optional[float] = None
         ) -> Iterator[Tuple[Out, Out]]: ...


@overload
def dump(client_or_pool: ElevatorPool, start: Optional[Key] = None, stop: Optional[Key] = None,
         prefix: Optional[Key] = None, *, db_name: Optional[str] = None,
         page_size: int = RANGE_ITER_PAGE, timeout: Optional[float] = None
         ) -> Iterator[Tuple[bytes, bytes]]: ...


def dump(client_or_pool: ClientOrPool, start: Optional[Key] = None, stop: Optional[Key] = None,
         prefix: Optional[Key] = None, *, db_name: Optional[str] = None,
         page_size: int = RANGE_ITER_PAGE, timeout: Optional[float] = None
         ) -> Iterator[Tuple[Any, Any]]:
    """Stream the ``(key, value)`` pairs from ``start`` to ``stop`` (both inclusive;
    None = open end) whose keys start with ``prefix``, in key order.

    Reads ``page_size`` pairs per SLICE request, so memory is bounded by one page
    however large the range; each page is retried under the pool's policy and bounded
    by ``timeout`` (default the client's). Pairs are bytes, or str for a client with
    ``decode_responses``. Pages are separate reads: writes made during the dump may
    or may not be seen, each key at most once.

    :param client_or_pool: an :class:`Elevator`, or an :class:`ElevatorPool` with
        ``db_name`` (default ``"default"``).
    :raises TypeError, ValueError: bad arguments, when the iterator is created.
    :raises ElevatorError: a page failed (transport failure past its retries...).
    """
    args.integer("page_size", page_size, minimum=1)
    if isinstance(client_or_pool, Elevator):
        if db_name is not None and db_name != client_or_pool.db_name:
            client = Elevator(db_name, pool=client_or_pool.pool,
                              decode_responses=client_or_pool.decode_responses)
        else:
            client = client_or_pool
    elif isinstance(client_or_pool, ElevatorPool):
        client = Elevator(db_name, pool=client_or_pool)
    else:
        raise TypeError(f"expected an Elevator or an ElevatorPool, not {type(client_or_pool).__name__}")
    items = client.RangeIter(start, stop, prefix=prefix, page_size=page_size, timeout=timeout)
    # RangeIter with keys and values yields [key, value] lists: 2-tuples here.
    return cast(Iterator[Tuple[Any, Any]], map(tuple, items))
