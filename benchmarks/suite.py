"""The workloads, the implementations they run on, and the measurements.

One run measures every implementation on the same data: 100,000 keys
``str(0..99999)`` with 32-character uuid4-hex values (``Options.size``).

Implementations (the ``implementation`` field of a record):

``plyvel``      in-process plyvel on a LevelDB of its own: the limit (ratio 1.0)
``pyelevator``  this project: one shared ``Elevator`` over its socket pool
``original``    the original py-elevator design (one socket, one lock), see anchors.py
``redis``       redis-py (hiredis parser) on a real redis-server, when one is installed
``zmq-echo``    a raw ZeroMQ DEALER->ROUTER echo: the network floor of one Get
``python-router`` a minimal Python ROUTER answering GETs from plyvel: the floor of
                the server's pipelined GET capacity

Timing (benchmarks/timing.py): each bulk workload runs ``repeat`` times, the
implementations interleaved; a record keeps the median, min, max and spread. Every
request has a timeout; every thread run is bounded by time and by count.
"""
from __future__ import annotations

import functools
import gc
import itertools
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .timing import (CpuMeter, code_version, interleaved, machine, machine_line, median,
                     percentile, rotated, spread, timed)

__all__ = ["Options", "Record", "Implementation", "IMPLEMENTATIONS", "run_suite", "make_data",
           "ratio"]

BENCH_DB = "benchmarks"                    # loaded once; every read workload reads it
#: Timed writes go to stores of their own: reads of a store written over and over are
#: paced by its compactions (commit ecec1d3: plyvel's Range 54 ms against 18 ms).
BATCH_DB = "benchmarks-batch"
ORIGINAL_BATCH_DB = "benchmarks-batch-original"
BULK_DB = "benchmarks-bulk"   # "bulk load" runs: a fresh database each, named BULK_DB-pid-n
REDIS_BULK_INDEX = 1          # redis database of the "bulk load" runs (flushed before each)
REDIS_PIPELINE = 8            # MSETs per redis pipeline in "bulk load"
REDIS_INDEX = "bench:index"   # sorted set of every key (score 0): ordered ranges in redis
PAGE = 10_000                 # RangeIter page size (pyelevator's default, and redis's pages)
REQUEST_TIMEOUT = 30.0        # seconds, for every request of every client
THREAD_MAX_OPS = 1_000_000    # per thread: a thread run stops at its time OR this count


@dataclass
class Options:
    """What one run measures. :meth:`full`, :meth:`quick` and :meth:`smoke` are the presets."""

    size: int = 100_000
    mget_count: int = 9_999
    repeat: int = 7
    threads: Tuple[int, ...] = (1, 4, 16, 64)
    thread_seconds: float = 2.0
    latency_samples: int = 20_000
    checkout_ops: int = 200_000
    checkout_threads: int = 8
    capacity_gets: int = 50_000            # pipelined GETs per "server GET capacity" run
    endpoint: Optional[str] = None
    use_redis: bool = True
    seed: int = 20240501
    progress: bool = True
    preset: str = "full"

    @classmethod
    def full(cls, **kw: Any) -> "Options":
        return cls(preset="full", **kw)

    @classmethod
    def quick(cls, **kw: Any) -> "Options":
        return cls(preset="quick", repeat=3, thread_seconds=0.4, latency_samples=3_000,
                   checkout_ops=50_000, capacity_gets=20_000, **kw)

    @classmethod
    def smoke(cls, **kw: Any) -> "Options":
        """A tiny run for the test suite: every workload and record, a second or two."""
        kw.setdefault("threads", (1, 4))
        return cls(preset="smoke", size=2_000, mget_count=199, repeat=1, thread_seconds=0.05,
                   latency_samples=100, checkout_ops=2_000, capacity_gets=500, **kw)

    def validate(self) -> None:
        for name in ("size", "mget_count", "repeat", "latency_samples", "checkout_ops",
                     "checkout_threads", "capacity_gets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        if self.mget_count > self.size:
            raise ValueError("mget_count cannot exceed size")
        if not self.threads or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                   for n in self.threads):
            raise ValueError(f"threads must be ints >= 1, not {self.threads!r}")
        if not self.thread_seconds > 0:
            raise ValueError("thread_seconds must be > 0")


@dataclass
class Record:
    """One workload on one implementation.

    ``median_s``/``min_s``/``max_s``: seconds per run of the workload (bulk
    workloads), or per operation (``Get`` latency, thread runs, checkouts).
    ``items_per_s``: items handled per second (for thread runs: total Gets over the
    wall time of the run). ``ratio``: time per item divided by plyvel's in the same
    run (None where plyvel has no counterpart).
    """

    workload: str
    implementation: str
    label: str
    items: int
    median_s: float
    min_s: float
    max_s: float
    items_per_s: float
    runs: int
    ratio: Optional[float] = None
    p99_s: Optional[float] = None
    threads: Optional[int] = None
    #: CPU seconds per operation used by this process (all its threads, ZeroMQ's I/O
    #: threads included) and by the server process, where measured: what bounds a rate.
    client_cpu_s: Optional[float] = None
    server_cpu_s: Optional[float] = None
    #: (max - min) / median across the repeats (for Get latency: across the blocks'
    #: medians); None for a single run: how noisy the machine was.
    spread: Optional[float] = None
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Implementation:
    name: str
    label: str


IMPLEMENTATIONS = {
    "plyvel": Implementation("plyvel", "plyvel, in-process (the limit)"),
    "pyelevator": Implementation("pyelevator", "pyelevator_pool (shared Elevator, socket pool)"),
    "pyelevator-plain": Implementation("pyelevator-plain",
                                       "pyelevator_pool with coalesce=False (one request per call)"),
    "original": Implementation("original", "original py-elevator design (1 socket + lock)"),
    "redis": Implementation("redis", "redis-py + hiredis, real redis-server"),
    "zmq-echo": Implementation("zmq-echo", "raw ZeroMQ DEALER->ROUTER echo (network floor)"),
    "python-router": Implementation("python-router",
                                    "minimal Python ROUTER GET server over plyvel (server floor)"),
}


def plyvel_mget(ldb: Any, keys: List[bytes]) -> list:
    """In-process plyvel doing what the server does for an MGet (one snapshot,
    fill_cache=False, py-elevator's default): the same reads, so the ratio is the cost
    of the client/server path alone."""
    snap = ldb.snapshot()
    try:
        return list(map(functools.partial(snap.get, fill_cache=False), keys))
    finally:
        snap.close()


def make_data(size: int, seed: int) -> List[Tuple[bytes, bytes]]:
    """``size`` pairs ``(str(i), uuid4().hex)`` as bytes, in key order (bytewise)."""
    rnd = random.Random(seed)
    pairs = [(str(i).encode(), uuid.UUID(int=rnd.getrandbits(128), version=4).hex.encode())
             for i in range(size)]
    pairs.sort()
    return pairs


# --------------------------------------------------------------- measuring

def bulk_records(workload: str, fns: Dict[str, Callable[[], Any]], items: int, repeat: int,
                 check: Optional[Callable[[Any], None]] = None,
                 notes: Optional[Dict[str, str]] = None,
                 on_step: Optional[Callable[[str], None]] = None,
                 self_timed: bool = False) -> List[Record]:
    """Run each of ``fns`` once untimed (a warm-up, whose result ``check`` verifies), then
    ``repeat`` times interleaved (:func:`timing.interleaved`); median, min, max, spread.
    ``self_timed``: each fn returns the seconds it measured itself (its setup untimed)."""
    notes = notes or {}
    for impl, fn in fns.items():
        if on_step is not None:
            on_step(f"{workload} {impl}")
        result = fn()
        if check is not None and not self_timed:
            check(result)
        del result
    runs: Mapping[str, Callable[[], float]] = fns if self_timed else {
        impl: functools.partial(timed, fn) for impl, fn in fns.items()}
    out = []
    for impl, ts in interleaved(runs, repeat).items():
        med = median(ts)
        out.append(Record(workload, impl, IMPLEMENTATIONS[impl].label, items, med, min(ts),
                          max(ts), items / med if med > 0 else float("inf"), repeat,
                          spread=spread(ts), note=notes.get(impl, "")))
    return out


def latency_records(workload: str, ops: Dict[str, Callable[[bytes], Any]], keys: Sequence[bytes],
                    samples: int, server_pids: Optional[Dict[str, Optional[int]]] = None,
                    notes: Optional[Dict[str, str]] = None, blocks: int = 10) -> List[Record]:
    """Time ``samples`` single operations of each implementation, one by one, in ``blocks``
    interleaved like the bulk runs: median, p99, min, max per operation, the spread of
    the blocks' medians, and the CPU per operation of this process and of the server."""
    server_pids = server_pids or {}
    notes = notes or {}
    for op in ops.values():
        for key in keys[:min(200, len(keys))]:  # warm-up: sockets open, caches filled
            op(key)
    blocks = max(1, min(blocks, samples))
    per_block = [samples // blocks + (1 if b < samples % blocks else 0) for b in range(blocks)]
    lat: Dict[str, List[float]] = {impl: [] for impl in ops}
    block_medians: Dict[str, List[float]] = {impl: [] for impl in ops}
    wall = dict.fromkeys(ops, 0.0)
    cpu_client = dict.fromkeys(ops, 0.0)
    cpu_server: Dict[str, Optional[float]] = dict.fromkeys(ops, 0.0)
    perf = time.perf_counter
    n = len(keys)
    done = 0
    for b, count in enumerate(per_block):
        for impl, op in rotated(list(ops.items()), b):
            meter = CpuMeter(server_pids.get(impl))
            block: List[float] = []
            meter.start()
            start = perf()
            for i in range(done, done + count):
                key = keys[i % n]
                t0 = perf()
                op(key)
                block.append(perf() - t0)
            wall[impl] += perf() - start
            c, srv = meter.per_op(1)
            cpu_client[impl] += c or 0.0
            prev = cpu_server[impl]
            cpu_server[impl] = None if srv is None or prev is None else prev + srv
            lat[impl].extend(block)
            block_medians[impl].append(median(block))
        done += count
    records = []
    for impl, values in lat.items():
        srv_total = cpu_server[impl]
        records.append(Record(
            workload, impl, IMPLEMENTATIONS[impl].label, 1, median(values), min(values),
            max(values), samples / wall[impl], samples, p99_s=percentile(values, 99),
            client_cpu_s=cpu_client[impl] / samples,
            server_cpu_s=None if srv_total is None else srv_total / samples,
            spread=spread(block_medians[impl]), note=notes.get(impl, "")))
    return records


def thread_record(workload: str, impl: str, op: Callable[[bytes], Any], keys: Sequence[bytes],
                  nthreads: int, seconds: float, seed: int, note: str = "",
                  server_pid: Optional[int] = None) -> Record:
    """``nthreads`` threads each doing ``op(random key)`` until ``seconds`` pass (or
    THREAD_MAX_OPS each); total operations over the wall time, and per-op latencies."""
    box: Dict[str, float] = {}
    cpu = CpuMeter(server_pid)

    def go() -> None:  # run by one thread once every worker is warmed up and waiting
        cpu.start()
        box["start"] = time.perf_counter()
        box["deadline"] = box["start"] + seconds

    barrier = threading.Barrier(nthreads + 1, action=go, timeout=60)
    results: List[List[float]] = [[] for _ in range(nthreads)]
    errors: List[BaseException] = []

    def worker(idx: int) -> None:
        rnd = random.Random(seed + idx)
        local_keys = [keys[rnd.randrange(len(keys))] for _ in range(4096)]
        lat = results[idx]
        perf = time.perf_counter
        try:
            op(local_keys[0])  # warm-up: this thread's socket is open before the clock starts
            barrier.wait()
            deadline = box["deadline"]
            i = 0
            while i < THREAD_MAX_OPS:
                t0 = perf()
                op(local_keys[i & 4095])
                t1 = perf()
                lat.append(t1 - t0)
                i += 1
                if t1 >= deadline:
                    break
        except BaseException as exc:  # reported after the join
            errors.append(exc)
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - box.get("start", 0.0)
    total = sum(len(r) for r in results)
    client_cpu, server_cpu = cpu.per_op(total) if "start" in box else (None, None)
    if errors:
        raise RuntimeError(f"{workload} on {impl}: a thread failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"{workload} on {impl}: threads still running after the deadline")
    lat = [x for r in results for x in r]
    return Record(workload, impl, IMPLEMENTATIONS[impl].label, 1, median(lat), min(lat),
                  max(lat), total / elapsed, total, p99_s=percentile(lat, 99), threads=nthreads,
                  client_cpu_s=client_cpu, server_cpu_s=server_cpu, note=note)


def loop_records(workload: str, bodies: Mapping[str, Callable[[int], None]], ops: int, repeat: int,
                 nthreads: int = 1, notes: Optional[Dict[str, str]] = None) -> List[Record]:
    """Time each ``body(n)`` (which does ``n`` operations) in ``nthreads`` threads at once,
    ``repeat`` times interleaved: seconds per operation of each run's wall time."""
    notes = notes or {}

    def run(body: Callable[[int], None]) -> float:
        if nthreads == 1:
            return timed(lambda: body(ops)) / ops
        share = max(1, ops // nthreads)
        barrier = threading.Barrier(nthreads + 1, timeout=60)
        errors: List[BaseException] = []

        def worker() -> None:
            try:
                barrier.wait()
                body(share)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
        for t in threads:
            t.start()
        start = time.perf_counter()
        barrier.wait()
        for t in threads:
            t.join(120)
        elapsed = time.perf_counter() - start
        if errors:
            raise RuntimeError(f"{workload}: {errors[0]!r}") from errors[0]
        return elapsed / (share * nthreads)

    for body in bodies.values():
        body(min(ops, 1000))  # warm-up
    out = []
    for impl, per_op in interleaved({impl: functools.partial(run, body)
                                     for impl, body in bodies.items()}, repeat).items():
        med = median(per_op)
        out.append(Record(workload, impl, IMPLEMENTATIONS[impl].label, 1, med, min(per_op),
                          max(per_op), 1 / med, repeat, threads=nthreads, spread=spread(per_op),
                          note=notes.get(impl, "")))
    return out


# ----------------------------------------------------------------- the run

class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is in the 'bench' extra
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    def step(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text[:48])

    def done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _expect_len(n: int) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        got = len(result) if not isinstance(result, int) else result
        if got != n:
            raise AssertionError(f"expected {n} items, got {got}")
    return check


def run_suite(options: Options, *, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run every workload on every implementation available; return
    ``{"records": [Record...], "meta": {...}, "notes": [str...]}``.

    Starts (and always stops) an embedded elevator-server unless ``options.endpoint``
    is given, a redis-server when installed, and the ZeroMQ echo process.
    """
    options.validate()
    import plyvel
    import zmq

    from pyelevator_pool import Elevator
    from pyelevator_pool.testing import ServerProcess

    from .anchors import (EchoClient, EchoServer, FloorGetServer, LegacyClient, RedisServer,
                          pipelined_gets)

    notes: List[str] = []
    records: List[Record] = []
    pairs = make_data(options.size, options.seed)
    keys = [k for k, _ in pairs]
    rnd = random.Random(options.seed)
    mget_keys = rnd.sample(keys, options.mget_count)
    get_keys = [keys[rnd.randrange(len(keys))] for _ in range(min(options.latency_samples, 50_000))]
    n = options.size
    # The data lives for the whole run: keep it out of every collection the GC makes.
    gc.collect()
    gc.freeze()

    cleanups: List[Callable[[], None]] = []
    try:
        tmp = tempfile.TemporaryDirectory(prefix="bench-")
        cleanups.append(tmp.cleanup)
        server_pid: Optional[int] = None  # an existing server's CPU is not measured
        if options.endpoint:
            endpoint = options.endpoint
            if "://" not in endpoint:
                endpoint = "tcp://" + endpoint
            where = f"existing server at {endpoint}"
        else:
            server = ServerProcess(os.path.join(tmp.name, "server"))
            os.makedirs(server.data_dir, exist_ok=True)
            server.start()
            cleanups.append(server.stop)
            server_pid = server.pid
            endpoint = server.endpoint
            where = f"embedded elevator-server at {endpoint}"
        log(f"benchmarks: {where}; {n:,} keys; preset {options.preset}")

        ldb = plyvel.DB(os.path.join(tmp.name, "plyvel"), create_if_missing=True)
        cleanups.append(ldb.close)
        ldb_batch = plyvel.DB(os.path.join(tmp.name, "plyvel-batch"), create_if_missing=True)
        cleanups.append(ldb_batch.close)

        max_threads = max(options.threads)
        ele = Elevator(endpoint=endpoint, timeout=REQUEST_TIMEOUT,
                       max_size=max(32, max_threads, options.checkout_threads))
        cleanups.append(ele.close)
        existing = ele.listdb()
        for name in (BENCH_DB, BATCH_DB, ORIGINAL_BATCH_DB):
            if name not in existing:
                ele.createdb(name)
        ele.connect(BENCH_DB)
        ele_batch = Elevator(BATCH_DB, pool=ele.pool, timeout=REQUEST_TIMEOUT)
        ele_plain = Elevator(BENCH_DB, pool=ele.pool, timeout=REQUEST_TIMEOUT, coalesce=False)

        zctx = zmq.Context()
        cleanups.append(lambda: zctx.term())
        legacy = LegacyClient(endpoint, BENCH_DB, timeout=REQUEST_TIMEOUT, context=zctx)
        cleanups.append(legacy.close)
        legacy_batch = LegacyClient(endpoint, ORIGINAL_BATCH_DB, timeout=REQUEST_TIMEOUT,
                                    context=zctx)
        cleanups.append(legacy_batch.close)

        echo = EchoServer().start()
        cleanups.append(echo.stop)
        pids = {"pyelevator": server_pid, "original": server_pid, "zmq-echo": echo.pid}
        echo_client = EchoClient(echo.endpoint, zctx, timeout=REQUEST_TIMEOUT)
        cleanups.append(echo_client.close)

        rds = rpool = rbulk = None
        if options.use_redis and RedisServer.available():
            import redis
            rserver = RedisServer().start()
            cleanups.append(rserver.stop)
            pids["redis"] = rserver.pid
            rpool = redis.ConnectionPool(host="127.0.0.1", port=rserver.port,
                                         socket_timeout=REQUEST_TIMEOUT,
                                         max_connections=max(64, max_threads * 2))
            cleanups.append(rpool.disconnect)
            rds = redis.Redis(connection_pool=rpool)
            rbulk = redis.Redis(host="127.0.0.1", port=rserver.port, db=REDIS_BULK_INDEX,
                                socket_timeout=REQUEST_TIMEOUT)
            cleanups.append(rbulk.close)
            if not redis.utils.HIREDIS_AVAILABLE:
                notes.append("redis: hiredis is not installed, redis-py uses its Python parser")
        elif options.use_redis:
            notes.append("redis anchor skipped: redis-server is not installed (not on PATH)")
        else:
            notes.append("redis anchor skipped (--no-redis)")
        for note in notes:
            log("note: " + note)

        impls = ["plyvel", "pyelevator", "original"] + (["redis"] if rds is not None else [])
        thread_impls = impls[:2] + ["pyelevator-plain"] + impls[2:]
        put_threads = [t for t in options.threads if t >= 16] or [max(options.threads)]
        steps = (6 * len(impls) + 1              # bulk workloads; the data's loading
                 + len(impls) + 1                # single Get (+ echo)
                 + (len(options.threads) + len(put_threads)) * len(thread_impls)
                 + 2 * (2 if rds is not None else 1)
                 + 2)                            # server GET capacity
        progress = _Progress(steps, options.progress)
        cleanups.insert(0, progress.close)
        rep = options.repeat

        def add(rec: Record) -> None:
            records.append(rec)
            progress.done()

        def bulk(workload: str, fns: Dict[str, Callable[[], Any]], items: int,
                 **kw: Any) -> None:
            fns = {impl: fn for impl, fn in fns.items() if impl in impls}
            for rec in bulk_records(workload, fns, items, rep, on_step=progress.step, **kw):
                add(rec)

        # ----- WriteBatch: every pair, one atomic batch
        def plyvel_batch(db: Any) -> Callable[[], None]:
            def run() -> None:
                with db.write_batch() as wb:
                    for k, v in pairs:
                        wb.put(k, v)
            return run

        def ours_batch(client: Any) -> Callable[[], None]:
            def run() -> None:
                wb = client.WriteBatch()
                put = wb.Put
                for k, v in pairs:
                    put(k, v)
                wb.Write()
            return run

        def redis_batch() -> None:
            pipe = rds.pipeline(transaction=False)
            pipe.mset(dict(pairs))
            pipe.zadd(REDIS_INDEX, {k: 0 for k in keys})
            pipe.execute()

        # The read workloads' data, written once, untimed.
        progress.step("loading the data")
        plyvel_batch(ldb)()
        ours_batch(ele)()
        if rds is not None:
            redis_batch()

        batch_fns = {"plyvel": plyvel_batch(ldb_batch), "pyelevator": ours_batch(ele_batch),
                     "original": lambda: legacy_batch.batch(pairs), "redis": redis_batch}
        bulk("WriteBatch", batch_fns, n,
             notes={"redis": "MSET + ZADD of the key index, one pipeline"})

        # ----- bulk load: bulk.load beside what each alternative would do, fresh stores
        from pyelevator_pool.bulk import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, load

        chunks = [pairs[i:i + DEFAULT_BATCH_SIZE] for i in range(0, n, DEFAULT_BATCH_SIZE)]
        fresh = itertools.count()
        load_cpu: List[Tuple[Optional[float], Optional[float]]] = []

        def fresh_db() -> str:
            name = f"{BULK_DB}-{os.getpid()}-{next(fresh)}"
            ele.createdb(name)
            return name

        def plyvel_load() -> float:
            path = os.path.join(tmp.name, f"plyvel-bulk-{next(fresh)}")
            db = plyvel.DB(path, create_if_missing=True)
            try:
                def run() -> None:
                    for chunk in chunks:
                        with db.write_batch() as wb:
                            for k, v in chunk:
                                wb.put(k, v)
                return timed(run)
            finally:
                db.close()
                shutil.rmtree(path, ignore_errors=True)

        def ours_load() -> float:
            name = fresh_db()
            try:
                meter = CpuMeter(server_pid)
                meter.start()
                got: List[Any] = []
                seconds = timed(lambda: got.append(load(ele, pairs, db_name=name)))
                load_cpu.append(meter.per_op(n))
                if got[0].pairs != n:
                    raise RuntimeError(f"bulk.load wrote {got[0].pairs} of {n} pairs")
                return seconds
            finally:
                ele.dropdb(name)

        def original_load() -> float:
            name = fresh_db()
            client = LegacyClient(endpoint, name, timeout=REQUEST_TIMEOUT, context=zctx)
            try:
                def run() -> None:
                    for chunk in chunks:
                        client.batch(chunk)
                return timed(run)
            finally:
                client.close()
                ele.dropdb(name)

        def redis_load() -> float:
            rbulk.flushdb()

            def run() -> None:
                pipe = rbulk.pipeline(transaction=False)
                for i, chunk in enumerate(chunks, 1):
                    pipe.mset(dict(chunk))
                    if i % REDIS_PIPELINE == 0:
                        pipe.execute()
                pipe.execute()
            seconds = timed(run)
            if rbulk.dbsize() != n:
                raise RuntimeError("redis did not get every pair")
            return seconds

        bulk("bulk load", {"plyvel": plyvel_load, "pyelevator": ours_load,
                           "original": original_load, "redis": redis_load}, n, self_timed=True,
             notes={"plyvel": f"write_batch of {DEFAULT_BATCH_SIZE:,} pairs at a time",
                    "pyelevator": f"bulk.load: batches of {DEFAULT_BATCH_SIZE:,}, "
                                  f"{DEFAULT_WORKERS} workers",
                    "original": f"BATCHes of {DEFAULT_BATCH_SIZE:,}, one after the other",
                    "redis": f"MSETs of {DEFAULT_BATCH_SIZE:,}, {REDIS_PIPELINE} a pipeline"})
        ours = next(r for r in records if r.workload == "bulk load" and r.implementation
                    == "pyelevator")
        cpu = [c for c in load_cpu if c[0] is not None]
        if cpu:
            ours.client_cpu_s = median([c[0] for c in cpu])  # type: ignore[misc]
            if all(c[1] is not None for c in cpu):
                ours.server_cpu_s = median([c[1] for c in cpu])  # type: ignore[misc]

        # ----- MGet of random keys
        mget_fns = {"plyvel": lambda: plyvel_mget(ldb, mget_keys),
                    "pyelevator": lambda: ele.MGet(mget_keys),
                    "original": lambda: legacy.mget(mget_keys),
                    "redis": lambda: rds.mget(mget_keys)}
        bulk("MGet", mget_fns, len(mget_keys), check=_expect_len(len(mget_keys)),
             notes={"plyvel": "snapshot.get(fill_cache=False), as the server reads",
                    "pyelevator": "MGet(keys) (fill_cache=False)"})

        # ----- Range over everything
        def redis_range() -> list:
            rkeys = rds.zrange(REDIS_INDEX, "-", "+", bylex=True)
            return list(zip(rkeys, rds.mget(rkeys)))

        range_fns = {"plyvel": lambda: list(ldb.iterator()),
                     "pyelevator": lambda: ele.Range(),
                     "original": lambda: legacy.range(),
                     "redis": redis_range}
        bulk("Range", range_fns, n, check=_expect_len(n),
             notes={"redis": "ZRANGE BYLEX of the index + MGET"})

        # ----- Slice: the first n items
        def redis_slice() -> list:
            rkeys = rds.zrange(REDIS_INDEX, "-", "+", bylex=True, offset=0, num=n)
            return list(zip(rkeys, rds.mget(rkeys)))

        slice_fns = {"plyvel": lambda: list(islice(ldb.iterator(), n)),
                     "pyelevator": lambda: ele.Slice(None, n),
                     "original": lambda: legacy.slice(None, n),
                     "redis": redis_slice}
        bulk("Slice", slice_fns, n, check=_expect_len(n),
             notes={"redis": "ZRANGE BYLEX LIMIT of the index + MGET"})

        # ----- RangeIter: iterate over everything
        def count(it: Iterable[Any]) -> int:
            c = 0
            for _ in it:
                c += 1
            return c

        def redis_iter() -> int:
            c = 0
            start = "-"
            while True:
                rkeys = rds.zrange(REDIS_INDEX, start, "+", bylex=True, offset=0, num=PAGE)
                if not rkeys:
                    return c
                for _ in zip(rkeys, rds.mget(rkeys)):
                    c += 1
                if len(rkeys) < PAGE:
                    return c
                start = b"(" + rkeys[-1]

        iter_fns = {"plyvel": lambda: count(ldb.iterator()),
                    "pyelevator": lambda: count(ele.RangeIter()),
                    "original": lambda: count(legacy.range_iter()),
                    "redis": redis_iter}
        bulk("RangeIter", iter_fns, n, check=_expect_len(n),
             notes={"original": "one RANGE, then iterated (as the original did)",
                    "redis": f"pages of {PAGE:,}: ZRANGE BYLEX LIMIT + MGET",
                    "pyelevator": f"pages of {PAGE:,}"})

        # ----- single Get latency, one thread
        from pyelevator_pool import protocol
        get_frame_uid = ele._binding[1]
        get_fns: Dict[str, Callable[[bytes], Any]] = {
            "plyvel": ldb.get, "pyelevator": ele.Get, "original": legacy.get}
        if rds is not None:
            get_fns["redis"] = rds.get
        thread_get_fns = dict(get_fns, **{"pyelevator-plain": ele_plain.Get})
        # The echo's frames are encoded beforehand: the floor is the network, not msgpack.
        echo_frames = {k: protocol.encode_request("GET", [k], get_frame_uid, id=1)
                       for k in set(get_keys)}
        latency_fns = dict(get_fns)
        latency_fns["zmq-echo"] = lambda k: echo_client.roundtrip(echo_frames[k])
        progress.step("Get latency")
        for rec in latency_records(
                "Get", latency_fns, get_keys, options.latency_samples, server_pids=pids,
                notes={"zmq-echo": "a GET request frame, encoded beforehand, sent to an echo "
                                   "process and received back (poll with a timeout, then "
                                   "recv, as a client must)"}):
            add(rec)

        # ----- N threads, random Gets (then Puts) through one shared client
        pids["pyelevator-plain"] = server_pid
        for nthreads in options.threads:
            for impl in thread_impls:
                progress.step(f"Get x{nthreads} threads {impl}")
                add(thread_record(f"Get x{nthreads} threads", impl, thread_get_fns[impl], keys,
                                  nthreads, options.thread_seconds, options.seed,
                                  server_pid=pids.get(impl)))
        # A Put writes back the value the key already has: every later read sees the data.
        value_of = dict(pairs)
        put_fns: Dict[str, Callable[[bytes], Any]] = {
            "plyvel": lambda k: ldb.put(k, value_of[k]),
            "pyelevator": lambda k: ele.Put(k, value_of[k]),
            "pyelevator-plain": lambda k: ele_plain.Put(k, value_of[k]),
            "original": lambda k: legacy.put(k, value_of[k])}
        if rds is not None:
            put_fns["redis"] = lambda k: rds.set(k, value_of[k])
        for nthreads in put_threads:
            for impl in thread_impls:
                progress.step(f"Put x{nthreads} threads {impl}")
                add(thread_record(f"Put x{nthreads} threads", impl, put_fns[impl], keys,
                                  nthreads, options.thread_seconds, options.seed,
                                  server_pid=pids.get(impl)))

        # ----- pool checkout + checkin
        pool = ele.pool

        def ours_checkout(count_: int) -> None:
            checkout, checkin = pool.checkout, pool.checkin
            for _ in range(count_):
                checkin(checkout())

        def redis_checkout(count_: int) -> None:
            get, release = rpool.get_connection, rpool.release
            for _ in range(count_):
                release(get())

        checkout_fns = {"pyelevator": ours_checkout}
        if rds is not None:
            checkout_fns["redis"] = redis_checkout
        for nthreads in (1, options.checkout_threads):
            workload = "checkout+checkin" + (f" x{nthreads} threads" if nthreads > 1 else "")
            progress.step(workload)
            for rec in loop_records(
                    workload, checkout_fns, options.checkout_ops, rep, nthreads=nthreads,
                    notes={"redis": "ConnectionPool.get_connection() + release()",
                           "pyelevator": "ElevatorPool.checkout() + checkin()"}):
                add(rec)
        # ----- server GET capacity: pipelined GETs from one socket, against the floor
        floor_path = os.path.join(tmp.name, "plyvel-floor")
        floor_db = plyvel.DB(floor_path, create_if_missing=True)
        try:
            plyvel_batch(floor_db)()
        finally:
            floor_db.close()
        floor = FloorGetServer(floor_path).start()
        cleanups.append(floor.stop)
        cap_keys = [keys[rnd.randrange(n)] for _ in range(options.capacity_gets)]
        cap_frames = [protocol.encode_request("GET", [k], get_frame_uid, id=i)
                      for i, k in enumerate(cap_keys)]
        cap_targets = {"pyelevator": endpoint, "python-router": floor.endpoint}
        for rec in bulk_records(
                "server GET capacity",
                {impl: functools.partial(pipelined_gets, where_, cap_frames, zctx)
                 for impl, where_ in cap_targets.items()},
                len(cap_frames), rep, check=_expect_len(len(cap_frames)), on_step=progress.step,
                notes={impl: "GETs encoded beforehand, 64 in flight on one DEALER"
                       for impl in cap_targets}):
            add(rec)
        progress.close()
    finally:
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as exc:  # pragma: no cover - cleanup is best effort, reported
                log(f"warning: cleanup {getattr(fn, '__qualname__', fn)} failed: {exc!r}")
        gc.unfreeze()

    _fill_ratios(records)
    return {"records": records, "notes": notes,
            "meta": _meta(options, where)}


def ratio(rec: Record, base: Record) -> Optional[float]:
    """``rec``'s time per item / ``base``'s, the same workload in the same run (thread
    runs: ``base``'s rate / ``rec``'s); None when either has no rate."""
    if not rec.items_per_s or not base.items_per_s:
        return None
    return base.items_per_s / rec.items_per_s if rec.threads else rec.median_s / base.median_s


def _fill_ratios(records: List[Record]) -> None:
    """ratio = time per item / plyvel's time per item, same workload, same run."""
    base = {r.workload: r for r in records if r.implementation == "plyvel"}
    for r in records:
        b = base.get(r.workload)
        if b is not None:
            r.ratio = ratio(r, b)


def _meta(options: Options, where: str) -> Dict[str, Any]:
    import msgpack
    import plyvel
    import zmq

    from pyelevator_pool import __version__ as version
    meta: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": code_version(),
        "machine": machine_line(),
        **machine(),
        "pyelevator_pool": version,
        "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "plyvel": plyvel.__version__, "leveldb": getattr(plyvel, "__leveldb_version__", ""),
        "server": where,
        "options": {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in options.__dict__.items() if k != "progress"},
    }
    try:
        import redis
        meta["redis-py"] = redis.__version__
    except ImportError:  # pragma: no cover
        pass
    return meta
