"""The workloads, the implementations they run on, and the measurements.

One run measures every implementation on the same data: 100,000 keys
``str(0..99999)`` with 32-character uuid4-hex values (``Options.size``).

Implementations (the ``implementation`` field of a record):

``plyvel``      in-process plyvel on a LevelDB of its own: the limit (ratio 1.0)
``pyelevator``  this project: one shared ``Elevator`` over its socket pool
``original``    the original py-elevator design (one socket, one lock), see anchors.py
``redis``       redis-py (hiredis parser) on a real redis-server, when one is installed
``zmq-echo``    a raw ZeroMQ DEALER->ROUTER echo: the network floor of one Get

Timing: ``time.perf_counter``; each bulk workload runs ``repeat`` times and a
record keeps the median, min and max. Every request has a timeout; every thread
run is bounded by time and by count.
"""
from __future__ import annotations

import functools
import gc
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["Options", "Record", "Implementation", "IMPLEMENTATIONS", "run_suite", "make_data"]

BENCH_DB = "benchmarks"                    # loaded once; every read workload reads it
#: The timed WriteBatch runs write to databases of their own, one per implementation:
#: LevelDB's write cost depends on how much was written before (compactions), so each
#: store gets the same volume, and the read workloads read stores written once.
BATCH_DB = "benchmarks-batch"
ORIGINAL_BATCH_DB = "benchmarks-batch-original"
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
                   checkout_ops=50_000, **kw)

    @classmethod
    def smoke(cls, **kw: Any) -> "Options":
        """A tiny run for the test suite: every workload and record, a second or two."""
        kw.setdefault("threads", (1, 4))
        return cls(preset="smoke", size=2_000, mget_count=199, repeat=1, thread_seconds=0.05,
                   latency_samples=100, checkout_ops=2_000, **kw)

    def validate(self) -> None:
        for name in ("size", "mget_count", "repeat", "latency_samples", "checkout_ops",
                     "checkout_threads"):
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
    "original": Implementation("original", "original py-elevator design (1 socket + lock)"),
    "redis": Implementation("redis", "redis-py + hiredis, real redis-server"),
    "zmq-echo": Implementation("zmq-echo", "raw ZeroMQ DEALER->ROUTER echo (network floor)"),
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

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: Optional[int]) -> Optional[float]:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class _CpuMeter:
    """CPU used by this process and by a server process between start() and stop()."""

    def __init__(self, server_pid: Optional[int]) -> None:
        self.server_pid = server_pid

    def start(self) -> None:
        self._client = time.process_time()
        self._server = process_cpu(self.server_pid)

    def per_op(self, ops: int) -> Tuple[Optional[float], Optional[float]]:
        client = (time.process_time() - self._client) / ops if ops else None
        now = process_cpu(self.server_pid)
        server = (now - self._server) / ops if ops and now is not None \
            and self._server is not None else None
        return client, server

def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


def bulk_records(workload: str, fns: Dict[str, Callable[[], Any]], items: int, repeat: int,
                 check: Optional[Callable[[Any], None]] = None,
                 notes: Optional[Dict[str, str]] = None,
                 on_step: Optional[Callable[[str], None]] = None) -> List[Record]:
    """Run each of ``fns`` ``repeat`` times (after one untimed warm-up, whose result
    ``check`` verifies) and keep median, min and max. Interleaved, in a rotating order:
    repetition r of every implementation runs before repetition r+1 of any, so that a
    burst of load from elsewhere on a shared machine falls on all of them rather than on
    one, and none always runs right after the same other one."""
    notes = notes or {}
    for impl, fn in fns.items():  # warm-up and check, untimed
        if on_step is not None:
            on_step(f"{workload} {impl}")
        result = fn()
        if check is not None:
            check(result)
        del result
    times: Dict[str, List[float]] = {impl: [] for impl in fns}
    order = list(fns.items())
    for r in range(repeat):
        # Rotated each round: none always runs right after the same other one (caches).
        for impl, fn in order[r % len(order):] + order[:r % len(order)]:
            times[impl].append(_timed(fn))
    out = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        out.append(Record(workload, impl, IMPLEMENTATIONS[impl].label, items, med, min(ts),
                          max(ts), items / med if med > 0 else float("inf"), repeat,
                          note=notes.get(impl, "")))
    return out


def latency_records(workload: str, ops: Dict[str, Callable[[bytes], Any]], keys: Sequence[bytes],
                    samples: int, server_pids: Optional[Dict[str, Optional[int]]] = None,
                    notes: Optional[Dict[str, str]] = None, blocks: int = 10) -> List[Record]:
    """Time ``samples`` single operations of each implementation, one by one: median,
    p99, min, max per operation, and the CPU per operation of this process and of the
    implementation's server. Interleaved in ``blocks`` so that load from elsewhere falls
    on every implementation alike."""
    server_pids = server_pids or {}
    notes = notes or {}
    for op in ops.values():
        for key in keys[:min(200, len(keys))]:  # warm-up: sockets open, caches filled
            op(key)
    blocks = max(1, min(blocks, samples))
    per_block = [samples // blocks + (1 if b < samples % blocks else 0) for b in range(blocks)]
    lat: Dict[str, List[float]] = {impl: [] for impl in ops}
    wall = dict.fromkeys(ops, 0.0)
    cpu_client = dict.fromkeys(ops, 0.0)
    cpu_server: Dict[str, Optional[float]] = dict.fromkeys(ops, 0.0)
    perf = time.perf_counter
    n = len(keys)
    done = 0
    order = list(ops.items())
    for b, count in enumerate(per_block):
        for impl, op in order[b % len(order):] + order[:b % len(order)]:
            meter = _CpuMeter(server_pids.get(impl))
            out = lat[impl]
            meter.start()
            start = perf()
            for i in range(done, done + count):
                key = keys[i % n]
                t0 = perf()
                op(key)
                out.append(perf() - t0)
            wall[impl] += perf() - start
            c, srv = meter.per_op(1)
            cpu_client[impl] += c or 0.0
            prev = cpu_server[impl]
            cpu_server[impl] = None if srv is None or prev is None else prev + srv
        done += count
    records = []
    for impl, values in lat.items():
        values.sort()
        srv_total = cpu_server[impl]
        records.append(Record(
            workload, impl, IMPLEMENTATIONS[impl].label, 1, statistics.median(values), values[0],
            values[-1], samples / wall[impl], samples, p99_s=_percentile(values, 0.99),
            client_cpu_s=cpu_client[impl] / samples,
            server_cpu_s=None if srv_total is None else srv_total / samples,
            note=notes.get(impl, "")))
    return records


def thread_record(workload: str, impl: str, op: Callable[[bytes], Any], keys: Sequence[bytes],
                  nthreads: int, seconds: float, seed: int, note: str = "",
                  server_pid: Optional[int] = None) -> Record:
    """``nthreads`` threads each doing ``op(random key)`` until ``seconds`` pass (or
    THREAD_MAX_OPS each); total operations over the wall time, and per-op latencies."""
    box: Dict[str, float] = {}
    cpu = _CpuMeter(server_pid)

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
    lat = sorted(x for r in results for x in r)
    return Record(workload, impl, IMPLEMENTATIONS[impl].label, 1, statistics.median(lat), lat[0],
                  lat[-1], total / elapsed, total, p99_s=_percentile(lat, 0.99), threads=nthreads,
                  client_cpu_s=client_cpu, server_cpu_s=server_cpu, note=note)


def loop_record(workload: str, impl: str, body: Callable[[int], None], ops: int, repeat: int,
                nthreads: int = 1, note: str = "") -> Record:
    """Time ``body(n)`` (which does ``n`` operations) in ``nthreads`` threads at once;
    seconds per operation of the whole run's wall time, ``repeat`` times."""
    body(min(ops, 1000))  # warm-up
    per_op = []
    for _ in range(repeat):
        if nthreads == 1:
            per_op.append(_timed(lambda: body(ops)) / ops)
            continue
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
            raise RuntimeError(f"{workload} on {impl}: {errors[0]!r}") from errors[0]
        per_op.append(elapsed / (share * nthreads))
    med = statistics.median(per_op)
    return Record(workload, impl, IMPLEMENTATIONS[impl].label, 1, med, min(per_op), max(per_op),
                  1 / med, repeat, threads=nthreads, note=note)


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

    from .anchors import EchoClient, EchoServer, LegacyClient, RedisServer

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

        rds = rpool = None
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
            if not redis.utils.HIREDIS_AVAILABLE:
                notes.append("redis: hiredis is not installed, redis-py uses its Python parser")
        elif options.use_redis:
            notes.append("redis anchor skipped: redis-server is not installed (not on PATH)")
        else:
            notes.append("redis anchor skipped (--no-redis)")
        for note in notes:
            log("note: " + note)

        impls = ["plyvel", "pyelevator", "original"] + (["redis"] if rds is not None else [])
        steps = (5 * len(impls) + 1              # bulk workloads; WriteBatch per impl
                 + len(impls) + 1                # single Get (+ echo)
                 + len(options.threads) * len(impls)
                 + 2 * (2 if rds is not None else 1))
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

        # ----- N threads, random Gets through one shared client
        for nthreads in options.threads:
            for impl in impls:
                progress.step(f"Get x{nthreads} threads {impl}")
                add(thread_record(f"Get x{nthreads} threads", impl, get_fns[impl], keys,
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
            for impl, body in checkout_fns.items():
                progress.step(f"{workload} {impl}")
                note = ("ConnectionPool.get_connection() + release()" if impl == "redis"
                        else "ElevatorPool.checkout() + checkin()")
                add(loop_record(workload, impl, body, options.checkout_ops, rep,
                                nthreads=nthreads, note=note))
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


def _fill_ratios(records: List[Record]) -> None:
    """ratio = time per item / plyvel's time per item, same workload, same run."""
    base = {r.workload: r for r in records if r.implementation == "plyvel"}
    for r in records:
        b = base.get(r.workload)
        if b is None or not r.items_per_s:
            continue
        r.ratio = b.items_per_s / r.items_per_s if r.threads else r.median_s / b.median_s


def _meta(options: Options, where: str) -> Dict[str, Any]:
    import platform

    import msgpack
    import plyvel
    import zmq

    from pyelevator_pool import __version__ as version
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_line(),
        "python": platform.python_version(),
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


def machine_line() -> str:
    """``"<cpu model>, <n> CPUs, Linux <release>"``, from /proc/cpuinfo and uname."""
    import platform
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
