"""Bulk-load benchmark: ``pyelevator_pool.bulk.load`` against in-process plyvel and redis.

    python -m benchmarks.bulk_load [--pairs N] [--batch-size B] [--workers W] [--repeat R]
    python -m benchmarks.bulk_load --sweep [--pairs N]     # how the defaults were chosen

One data set, built once in memory before any clock starts: ``--pairs`` pairs with
16-byte keys ``key:%012d`` (in order, as a sorted export would be) and 48-byte random
values. On it, each repeated ``--repeat`` times into a fresh database, median kept:

* **plyvel** — in-process LevelDB, one ``write_batch`` per ``--batch-size`` pairs:
  the limit, no network, no serialization, no server;
* **elevator** — ``bulk.load`` through a real ``elevator-server`` child process on a
  loopback port (client and server share the machine's cores);
* **redis** — redis-py pipelined ``MSET`` of ``--batch-size`` pairs, 8 per pipeline,
  against a ``redis-server`` started here on a free loopback port without
  persistence (skipped with a note when redis-server or redis-py is missing).

Prints pairs/s and the ratio to plyvel. Nothing here is a test: no figure is asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from pyelevator_pool import Elevator
from pyelevator_pool.bulk import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, load
from pyelevator_pool.testing import ServerProcess

__all__ = ["make_pairs", "bench_plyvel", "bench_elevator", "bench_redis", "main"]

Pairs = List[Tuple[bytes, bytes]]


def make_pairs(n: int, value_size: int = 48, seed_bytes: Optional[bytes] = None) -> Pairs:
    """``n`` pairs: keys ``key:%012d`` in order, values ``value_size`` random bytes each."""
    blob = seed_bytes if seed_bytes is not None else os.urandom(n * value_size)
    return [(b"key:%012d" % i, blob[i * value_size:(i + 1) * value_size]) for i in range(n)]


def _median_rate(n: int, runs: Sequence[float]) -> float:
    return n / statistics.median(runs)


def bench_plyvel(pairs: Pairs, batch_size: int, repeat: int) -> float:
    """Pairs/s of in-process plyvel write batches (median of ``repeat`` fresh databases)."""
    import plyvel
    times = []
    for _ in range(repeat):
        path = tempfile.mkdtemp(prefix="bulk-plyvel-")
        try:
            db = plyvel.DB(path, create_if_missing=True)
            t0 = time.perf_counter()
            for i in range(0, len(pairs), batch_size):
                with db.write_batch() as wb:
                    put = wb.put
                    for k, v in pairs[i:i + batch_size]:
                        put(k, v)
            times.append(time.perf_counter() - t0)
            db.close()
        finally:
            shutil.rmtree(path, ignore_errors=True)
    return _median_rate(len(pairs), times)


def _cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ElevatorRun:
    """Median rate of ``bulk.load`` runs, with CPU microseconds per pair of each side."""

    def __init__(self, rate: float, retries: int, client_us: float,
                 server_us: Optional[float]) -> None:
        self.rate, self.retries = rate, retries
        self.client_us, self.server_us = client_us, server_us


def bench_elevator(pairs: Pairs, batch_size: int, workers: int, repeat: int,
                   server: ServerProcess) -> ElevatorRun:
    """``bulk.load`` into ``repeat`` fresh databases on ``server``: median pairs/s, the
    retries seen, and the CPU time per pair of this process and of the server (CPU
    time is steadier than wall time on a shared machine)."""
    times, retries, client_cpu, server_cpu = [], 0, [], []
    admin = Elevator(endpoint=server.endpoint)
    try:
        for r in range(repeat):
            name = f"bulk_{batch_size}_{workers}_{r}_{os.getpid()}"
            admin.createdb(name)
            try:
                c0, s0 = time.process_time(), _cpu_seconds(server.pid)  # type: ignore[arg-type]
                report = load(admin, pairs, db_name=name, batch_size=batch_size, workers=workers)
                c1, s1 = time.process_time(), _cpu_seconds(server.pid)  # type: ignore[arg-type]
                if report.pairs != len(pairs):
                    raise RuntimeError(f"loaded {report.pairs} of {len(pairs)} pairs")
                times.append(report.elapsed)
                retries += report.retries
                client_cpu.append(c1 - c0)
                if s0 is not None and s1 is not None:
                    server_cpu.append(s1 - s0)
            finally:
                admin.dropdb(name)
    finally:
        admin.close()
    n = len(pairs)
    return ElevatorRun(_median_rate(n, times), retries,
                       statistics.median(client_cpu) / n * 1e6,
                       statistics.median(server_cpu) / n * 1e6 if server_cpu else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_redis(pairs: Pairs, batch_size: int, repeat: int) -> Tuple[Optional[float], str]:
    """Pairs/s of pipelined MSET on a redis-server started here; (None, why) when it cannot run."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "redis-server not installed"
    try:
        import redis
    except ImportError:
        return None, "redis-py not installed (pip install 'pyelevator_pool[bench]')"
    tmp = tempfile.mkdtemp(prefix="bulk-redis-")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    return None, "redis-server did not start"
                time.sleep(0.05)
        times = []
        per_pipeline = 8
        for _ in range(repeat):
            r.flushall()
            t0 = time.perf_counter()
            pipe = r.pipeline(transaction=False)
            queued = 0
            for i in range(0, len(pairs), batch_size):
                pipe.mset(dict(pairs[i:i + batch_size]))
                queued += 1
                if queued == per_pipeline:
                    pipe.execute()
                    queued = 0
            if queued:
                pipe.execute()
            times.append(time.perf_counter() - t0)
            if r.dbsize() != len(pairs):
                raise RuntimeError("redis did not get every pair")
        r.close()
        return _median_rate(len(pairs), times), ""
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(pairs: Pairs, repeat: int, server: ServerProcess,
           batch_sizes: Sequence[int], workers_list: Sequence[int]) -> None:
    print(f"sweep: {len(pairs):,} pairs, median of {repeat}; pairs/s (ratio to plyvel) "
          "client+server CPU per pair")
    header = "batch_size " + "".join(f"{f'workers={w}':>36}" for w in workers_list) \
        + f"{'plyvel':>14}"
    print(header)
    for bs in batch_sizes:
        plv = bench_plyvel(pairs, bs, repeat)
        cells = []
        for w in workers_list:
            run = bench_elevator(pairs, bs, w, repeat, server)
            cpu = f"{run.client_us:.2f}+{run.server_us:.2f}us" if run.server_us else ""
            cells.append(f"{run.rate:>10,.0f} ({run.rate / plv:4.2f}) {cpu}")
        print(f"{bs:>10} " + "".join(f"{c:>36}" for c in cells) + f"{plv:>14,.0f}", flush=True)


def _positive(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _int_list(text: str) -> List[int]:
    return [_positive(t) for t in text.split(",") if t]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=_positive, default=1_000_000, help="default %(default)s")
    p.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE,
                   help="default %(default)s (bulk.DEFAULT_BATCH_SIZE)")
    p.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS,
                   help="default %(default)s (bulk.DEFAULT_WORKERS)")
    p.add_argument("--value-size", type=_positive, default=48, help="default %(default)s bytes")
    p.add_argument("--repeat", type=_positive, default=3, help="runs per figure, median kept")
    p.add_argument("--sweep", action="store_true",
                   help="measure a grid of batch sizes and worker counts instead")
    p.add_argument("--sweep-batch-sizes", type=_int_list, default=[500, 1000, 2000, 5000, 10000,
                                                                   20000])
    p.add_argument("--sweep-workers", type=_int_list, default=[1, 2, 3, 4])
    p.add_argument("--no-redis", action="store_true")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    pairs = make_pairs(args.pairs, args.value_size)
    print(f"data: {len(pairs):,} pairs, 16-byte keys, {args.value_size}-byte random values "
          f"(built in {time.perf_counter() - t0:.1f}s); {os.cpu_count()} CPUs", flush=True)
    with ServerProcess() as server:
        if args.sweep:
            _sweep(pairs, args.repeat, server, args.sweep_batch_sizes, args.sweep_workers)
            return 0
        results: Dict[str, Optional[float]] = {}
        # Alternated, one run each per round, so that a slow spell of a shared machine
        # weighs on both sides of a round's ratio.
        plyvel_rates, runs, ratios = [], [], []
        for _ in range(args.repeat):
            plyvel_rates.append(bench_plyvel(pairs, args.batch_size, 1))
            runs.append(bench_elevator(pairs, args.batch_size, args.workers, 1, server))
            ratios.append(runs[-1].rate / plyvel_rates[-1])
        results["plyvel"] = plv = statistics.median(plyvel_rates)
        results["elevator"] = statistics.median(r.rate for r in runs)
        retries = sum(r.retries for r in runs)
        run = ElevatorRun(results["elevator"], retries,  # type: ignore[arg-type]
                          statistics.median(r.client_us for r in runs),
                          None if any(r.server_us is None for r in runs)
                          else statistics.median(r.server_us for r in runs))  # type: ignore
    note = ""
    if args.no_redis:
        results["redis"], note = None, "skipped (--no-redis)"
    else:
        results["redis"], note = bench_redis(pairs, args.batch_size, args.repeat)
    print(f"batch_size={args.batch_size} workers={args.workers} repeat={args.repeat} (medians); "
          f"elevator/plyvel per round: {', '.join(f'{r:.2f}' for r in ratios)}, "
          f"median {statistics.median(ratios):.2f}")
    labels: Dict[str, str] = {
        "plyvel": "in-process plyvel write_batch (limit)",
        "elevator": "pyelevator_pool.bulk.load -> elevator-server",
        "redis": "redis-py pipelined MSET -> redis-server",
    }
    for key in ("plyvel", "elevator", "redis"):
        value = results[key]
        if value is None:
            print(f"  {labels[key]:<48} {'-':>12}            {note}")
        else:
            print(f"  {labels[key]:<48} {value:>12,.0f} pairs/s  {value / plv:5.2f} x plyvel")
    if run.server_us is not None:
        print(f"  elevator CPU per pair: client {run.client_us:.2f} us, server "
              f"{run.server_us:.2f} us")
    if retries:
        print(f"  (elevator runs needed {retries} retries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
