"""The server alone, against in-process plyvel: how much do ZeroMQ + msgpack + our loop cost?

    python benchmarks/bare_server.py                 # the original benchmark workload
    python benchmarks/bare_server.py --concurrency   # what chose the server's concurrency model

Workload (the original Elevator benchmark's): 100,000 keys ``str(0..99999)`` with 32-char
uuid4-hex values. Timed with a bare DEALER client (protocol.encode_request/decode_reply,
nothing else) against a server started by ServerProcess, and with plyvel in-process on
the same data: a 100,000-put BATCH, an MGET of 9,999 random keys, a RANGE over all keys,
a SLICE of 100,000. Prints the median of several repeats and the ratio ours / plyvel.
The client pauses the GC around big decodes (as pyelevator_pool's client does).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from itertools import islice
from typing import Any, Callable, Dict, List

import plyvel
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyelevator_pool import protocol  # noqa: E402
from pyelevator_pool.testing import ServerProcess  # noqa: E402

N_KEYS = 100_000
N_MGET = 9_999


class Bare:
    """One DEALER socket; one request in flight; the GC paused while a reply is decoded."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.uid = self.call(protocol.DBCONNECT, [b"default"])[0].decode()

    def call(self, cmd: str, args: list, uid: Any = None, timeout: float = 60.0) -> Any:
        self.sock.send(protocol.encode_request(cmd, args, uid))
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"{cmd}: no reply in {timeout}s")
        frames = self.sock.recv_multipart(copy=False)  # msgpack reads the zmq frames in place
        enabled = gc.isenabled()
        gc.disable()
        try:
            reply = protocol.decode_reply(frames)
        finally:
            if enabled:
                gc.enable()
        if reply.status == protocol.Status.FAILURE:
            raise RuntimeError(f"{cmd}: {reply.err_msg}")
        return reply.datas

    def close(self) -> None:
        self.sock.close(0)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def workload(repeats: int, workers: int) -> None:
    keys = [str(i).encode() for i in range(N_KEYS)]
    values = [uuid.uuid4().hex.encode() for _ in range(N_KEYS)]
    pairs = list(zip(keys, values))
    rng = random.Random(42)
    mget_keys = rng.sample(keys, N_MGET)
    ops = [[1, k, v] for k, v in pairs]
    # The data set above is long-lived: keep it out of every collection, for both contenders
    # (otherwise each full collection rescans these 500k objects and that dominates).
    gc.collect()
    gc.freeze()
    results: Dict[str, Dict[str, float]] = {}

    with tempfile.TemporaryDirectory(prefix="bare-bench-") as tmp:
        # ------------------------------------------------------------ plyvel
        db = plyvel.DB(os.path.join(tmp, "plyvel"), create_if_missing=True)

        def p_batch() -> None:
            with db.write_batch() as wb:
                for k, v in pairs:
                    wb.put(k, v)

        def p_mget() -> list:
            snap = db.snapshot()
            out = [snap.get(k, fill_cache=False) for k in mget_keys]
            snap.close()
            return out

        def p_range() -> list:
            return list(db.iterator(start=keys[0], stop=None, include_stop=True))

        def p_slice() -> list:
            it = db.iterator(start=b"0")
            out = list(islice(it, N_KEYS))
            it.close()
            return out

        # Load once untimed, time the reads, then the BATCH repeats: each repeat rewrites
        # every key, and the stale versions would otherwise slow the iterations measured after.
        p_batch()
        plyvel_ops = {"MGET 9,999": p_mget, "RANGE 100k": p_range, "SLICE 100k": p_slice,
                      "BATCH 100k puts": p_batch}
        for name, fn in plyvel_ops.items():
            results.setdefault(name, {})["plyvel"] = median_time(fn, repeats)
        assert len(p_range()) == N_KEYS
        db.close()

        # ------------------------------------------------------------ server
        data = os.path.join(tmp, "server")
        os.makedirs(data)
        ctx = zmq.Context()
        with ServerProcess(data, args=["--workers", str(workers), "--log-level", "WARNING"]) as srv:
            c = Bare(srv.endpoint, ctx)
            uid = c.uid
            c.call("BATCH", [ops], uid)
            assert len(c.call("RANGE", [b"0", None], uid)) == N_KEYS
            got = c.call("MGET", [mget_keys], uid)
            assert got == [dict(pairs)[k] for k in mget_keys]
            ours = {
                "MGET 9,999": lambda: c.call("MGET", [mget_keys], uid),
                "RANGE 100k": lambda: c.call("RANGE", [b"0", None], uid),
                "SLICE 100k": lambda: c.call("SLICE", [b"0", N_KEYS], uid),
                "BATCH 100k puts": lambda: c.call("BATCH", [ops], uid),
            }
            for name, fn in ours.items():
                results[name]["ours"] = median_time(fn, repeats)
            c.close()
        ctx.term()

    print(f"bare server vs in-process plyvel: median of {repeats}, "
          f"server --workers {workers}, Python {sys.version.split()[0]}")
    print(f"{'operation':<18}{'plyvel ms':>12}{'ours ms':>12}{'ours/plyvel':>13}")
    for name in ("BATCH 100k puts", "MGET 9,999", "RANGE 100k", "SLICE 100k"):
        r = results[name]
        print(f"{name:<18}{r['plyvel'] * 1e3:>12.1f}{r['ours'] * 1e3:>12.1f}"
              f"{r['ours'] / r['plyvel']:>13.2f}")


# ---------------------------------------------------------------- concurrency

def _throughput(endpoint: str, uid: str, n_clients: int, n_requests: int) -> float:
    """GETs per second from ``n_clients`` DEALER sockets, one request in flight each."""
    ctx = zmq.Context()
    socks = []
    for _ in range(n_clients):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        socks.append(s)
    frame = protocol.encode_request("GET", [b"42"], uid)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    sent = done = 0
    t0 = time.perf_counter()
    for s in socks:
        s.send(frame)
        sent += 1
    deadline = time.monotonic() + 60
    while done < sent and time.monotonic() < deadline:
        for s, _ in poller.poll(1000):
            frames = s.recv_multipart()
            assert protocol.decode_reply(frames).datas
            done += 1
            if sent < n_requests:
                s.send(frame)
                sent += 1
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close(0)
    ctx.term()
    return done / elapsed


def _latency_under_range(endpoint: str, uid: str, n_gets: int) -> List[float]:
    """GET latencies (s) while another client keeps RANGEs over 100k keys running."""
    stop = threading.Event()

    def ranger() -> None:
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        frame = protocol.encode_request("RANGE", [None, None], uid)
        inflight = 0
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            while inflight < 2:
                s.send(frame)
                inflight += 1
            if s.poll(100):
                s.recv_multipart()
                inflight -= 1
        s.close(0)

    t = threading.Thread(target=ranger)
    t.start()
    time.sleep(0.3)  # let RANGEs be in progress
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    frame = protocol.encode_request("GET", [b"42"], uid)
    lat = []
    for _ in range(n_gets):
        t0 = time.perf_counter()
        s.send(frame)
        if not s.poll(30000):
            raise TimeoutError("GET under RANGE load")
        s.recv_multipart()
        lat.append(time.perf_counter() - t0)
        time.sleep(0.002 * random.random())  # spread the GETs over the RANGEs' phases
    s.close(0)
    stop.set()
    t.join(30)
    return lat


def concurrency(worker_counts: List[int], n_requests: int, n_gets: int) -> None:
    print(f"throughput: {n_requests} GETs from 8 DEALERs (1 in flight each); "
          f"latency: {n_gets} GETs while RANGEs of 100k run")
    print(f"{'--workers':>10}{'GET/s 1 client':>16}{'GET/s 8 clients':>17}"
          f"{'lat p50 ms':>12}{'lat p90 ms':>12}{'lat max ms':>12}")
    for workers in worker_counts:
        with tempfile.TemporaryDirectory(prefix="bare-conc-") as tmp:
            with ServerProcess(tmp, args=["--workers", str(workers), "--log-level", "WARNING"]) as srv:
                ctx = zmq.Context()
                c = Bare(srv.endpoint, ctx)
                ops = [[1, str(i).encode(), uuid.uuid4().hex.encode()] for i in range(N_KEYS)]
                c.call("BATCH", [ops], c.uid)
                c.close()
                ctx.term()
                one = _throughput(srv.endpoint, c.uid, 1, n_requests)
                eight = _throughput(srv.endpoint, c.uid, 8, n_requests)
                lat = sorted(_latency_under_range(srv.endpoint, c.uid, n_gets))
                p50 = lat[len(lat) // 2] * 1e3
                p90 = lat[int(len(lat) * 0.9)] * 1e3
                print(f"{workers:>10}{one:>16.0f}{eight:>17.0f}{p50:>12.2f}{p90:>12.2f}"
                      f"{lat[-1] * 1e3:>12.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="the server's --workers")
    p.add_argument("--concurrency", action="store_true",
                   help="measure GET throughput and GET latency under RANGE load instead")
    p.add_argument("--worker-counts", default="0,1,2,4")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--gets", type=int, default=200)
    a = p.parse_args()
    if a.concurrency:
        concurrency([int(w) for w in a.worker_counts.split(",")], a.requests, a.gets)
    else:
        workload(a.repeats, a.workers)


if __name__ == "__main__":
    main()
