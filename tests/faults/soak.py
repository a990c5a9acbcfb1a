"""Soak: a long mixed workload through ONE pool, with a server SIGKILL+restart midway, checking
that nothing leaks: open file descriptors, TCP connections and RSS of the client and the
server at start, middle and end.

    python tests/faults/soak.py [--ops 1000000] [--threads 32] [--json PATH]

(``pytest -m slow tests/faults/test_soak.py -s`` runs it as a test; this module is the
program and the test's helper.)

"start" is taken once 2% of the operations are done (the pool is full and caches are
warm), "middle" right before the restart at 50%, "restarted" once 60% are done (the new
server process), "end" after the last operation, before the pool is closed. Flat means
(what :func:`check_flat` asserts, and the slow test runs):

* client: fds and TCP connections at end within +4 of start; TCP connections never above
  the pool's max_size; RSS at end within +25% (or +32 MiB, whichever is larger) of start;
* server: fds at end within +16 of the restarted process's (LevelDB's table files come and
  go with compactions); RSS at end within +50% (or +64 MiB) of the restarted process's
  (LevelDB's memtable and block cache fill up to their fixed sizes).

Every operation's result is checked where it can be (a value read is one that was written
for that key); errors are counted by type and reported.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional

import psutil

from pyelevator_pool import Elevator, ElevatorKeyError
from pyelevator_pool.testing import ServerProcess

__all__ = ["run", "check_flat", "main"]

KEYSPACE = 20_000
MIX = [("Get", 40), ("Put", 20), ("MGet", 10), ("Exists", 6), ("Delete", 4), ("Range", 5),
       ("Slice", 5), ("WriteBatch", 5), ("Ping", 5)]


def _key(i: int) -> bytes:
    return b"soak:%06d" % i


def _value(i: int, rng: random.Random) -> bytes:
    # The key's number is in the value, so any value read can be checked against its key.
    return b"%06d:" % i + rng.randbytes(24).hex().encode()


def _is_value_of(value: Optional[bytes], i: int) -> bool:
    return value is None or value.startswith(b"%06d:" % i)


def snapshot(server: ServerProcess, max_size: int) -> Dict[str, Any]:
    """fds, TCP connections to the server's port, RSS (MiB) of this process and the server."""
    port = server.port
    me = psutil.Process()
    srv = psutil.Process(server.pid)
    mine = [c for c in me.net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    theirs = [c for c in srv.net_connections(kind="tcp")
              if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    return {
        "client_fds": me.num_fds(), "client_tcp": len(mine),
        "client_rss_mib": round(me.memory_info().rss / 2**20, 1),
        "server_pid": srv.pid, "server_fds": srv.num_fds(), "server_tcp": len(theirs),
        "server_rss_mib": round(srv.memory_info().rss / 2**20, 1),
        "pool_max_size": max_size,
    }


def run(ops: int = 1_000_000, threads: int = 32, *, restart: bool = True, seed: int = 1,
        data_dir: Optional[str] = None, log=print) -> Dict[str, Any]:
    """Run the soak; returns the figures (``snapshots``, ``errors``, ``ops_per_s``...).

    Raises nothing for failed operations: they are counted in ``errors`` (and wrong answers
    in ``wrong``), for the caller to judge.
    """
    if ops < threads or threads < 1:
        raise ValueError("need threads >= 1 and ops >= threads")
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="elevator-soak-")
        data_dir = tmp.name
    server = ServerProcess(data_dir)
    server.start()
    done = [0] * threads
    errors: Counter = Counter()
    wrong: List[str] = []
    names = [name for name, weight in MIX for _ in range(weight)]
    client = Elevator(endpoint=server.endpoint, max_size=threads, timeout=30.0)
    per_thread = ops // threads

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(per_thread):
            op = rng.choice(names)
            i = rng.randrange(KEYSPACE)
            try:
                if op == "Get":
                    try:
                        v = client.Get(_key(i))
                    except ElevatorKeyError:
                        v = None
                    if not _is_value_of(v, i):
                        wrong.append(f"Get {i}: {v!r}")
                elif op == "Put":
                    client.Put(_key(i), _value(i, rng))
                elif op == "MGet":
                    idx = [rng.randrange(KEYSPACE) for _ in range(10)]
                    for j, v in zip(idx, client.MGet([_key(j) for j in idx])):
                        if not _is_value_of(v, j):
                            wrong.append(f"MGet {j}: {v!r}")
                elif op == "Exists":
                    client.Exists(_key(i))
                elif op == "Delete":
                    client.Delete(_key(i))
                elif op == "Range":
                    for k, v in client.Range(_key(i), _key(i + 19)):
                        if not _is_value_of(v, int(k[5:])):
                            wrong.append(f"Range {k!r}: {v!r}")
                elif op == "Slice":
                    client.Slice(_key(i), 20, include_value=False)
                elif op == "WriteBatch":
                    with client.WriteBatch() as wb:
                        for j in range(i, min(i + 10, KEYSPACE)):
                            wb.Put(_key(j), _value(j, rng))
                else:
                    client.Ping()
            except Exception as exc:  # counted, judged by the caller
                errors[f"{op}: {type(exc).__name__}"] += 1
            done[n] += 1

    snapshots: Dict[str, Dict[str, Any]] = {}
    pool = client.pool
    start = time.monotonic()
    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in workers:
        t.start()
    total = per_thread * threads
    plan = [(0.02, "start"), (0.5, "middle"), (0.6, "restarted")]
    restart_time = None
    for fraction, name in plan:
        while sum(done) < total * fraction and any(t.is_alive() for t in workers):
            time.sleep(0.05)  # polls progress; the workers' own pace sets the run's length
        snapshots[name] = snapshot(server, pool.max_size)
        log(f"{name:>9} at {sum(done):>8} ops: {snapshots[name]}")
        if name == "middle" and restart:
            t0 = time.monotonic()
            server.restart(kill=True)
            restart_time = time.monotonic() - t0
            log(f"server SIGKILLed and restarted in {restart_time:.2f}s "
                f"(new pid {server.pid})")
    for t in workers:
        t.join()
    elapsed = time.monotonic() - start
    snapshots["end"] = snapshot(server, pool.max_size)
    log(f"{'end':>9} at {sum(done):>8} ops: {snapshots['end']}")
    stats = pool.stats()
    client.close()
    server.stop()
    if tmp is not None:
        tmp.cleanup()
    result = {
        "ops": sum(done), "threads": threads, "elapsed_s": round(elapsed, 1),
        "ops_per_s": round(sum(done) / elapsed), "restart_s": restart_time,
        "errors": dict(errors), "wrong": wrong[:20], "wrong_count": len(wrong),
        "snapshots": snapshots,
        "pool": {k: stats[k] for k in ("size", "retries", "replaced", "timeouts",
                                       "stale_replies", "checkout_timeouts")},
    }
    log(f"{result['ops']} ops in {result['elapsed_s']}s ({result['ops_per_s']}/s); "
        f"errors={result['errors']} wrong={result['wrong_count']} pool={result['pool']}")
    return result


def check_flat(result: Dict[str, Any]) -> List[str]:
    """What is not flat, as sentences (empty when everything is); see the module doc."""
    s = result["snapshots"]
    start, end = s["start"], s["end"]
    ref = s.get("restarted", start)  # the server process that ran to the end
    problems = []

    def over(what: str, a: float, b: float, slack: float) -> None:
        if b > a + slack:
            problems.append(f"{what}: {a} -> {b} (allowed +{slack:g})")

    over("client fds", start["client_fds"], end["client_fds"], 4)
    over("client TCP connections", start["client_tcp"], end["client_tcp"], 4)
    over("client RSS MiB", start["client_rss_mib"], end["client_rss_mib"],
         max(32, start["client_rss_mib"] * 0.25))
    for name, snap in s.items():
        if snap["client_tcp"] > snap["pool_max_size"]:
            problems.append(f"{name}: {snap['client_tcp']} TCP connections > max_size")
    over("server fds", ref["server_fds"], end["server_fds"], 16)
    over("server RSS MiB", ref["server_rss_mib"], end["server_rss_mib"],
         max(64, ref["server_rss_mib"] * 0.5))
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/faults/soak.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=1_000_000,
                   help="operations in all (default: %(default)s)")
    p.add_argument("--threads", type=int, default=32,
                   help="threads sharing one pool (default: %(default)s)")
    p.add_argument("--no-restart", action="store_true", help="do not restart the server midway")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    result = run(args.ops, args.threads, restart=not args.no_restart)
    problems = check_flat(result)
    result["problems"] = problems
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print("flat: yes" if not problems else "NOT FLAT: " + "; ".join(problems))
    return 0 if not problems and not result["wrong_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
