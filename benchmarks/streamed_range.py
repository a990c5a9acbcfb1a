"""Experiment: a 100,000-pair range as ONE reply, or STREAMED as pages from one iterator.

    python -m benchmarks.streamed_range [--size 100000] [--pages 5000,10000,25000]

One reply is what RANGE is today: the server builds the whole list, packs it, sends it;
only then can the client decode it: iterate + pack + transfer + decode, one after the
other. Streamed, the server iterates ONE LevelDB iterator (one snapshot, as RANGE)
and sends each page as its own message as soon as it is packed, so the client decodes
page n while the server iterates page n+1: on two cores the chain overlaps.

Both sides here are minimal stand-ins (a ROUTER in a child process, a DEALER here,
msgpack, GC paused while decoding, as the real client does), not the real server: the
point is the difference between the two shapes, measured beside in-process plyvel on
the same data in the same run. It is the measurement behind the proposal of a
streamed RANGE/SLICE reply (a protocol extension: several replies to one request id,
the last one marked).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

import msgpack
import zmq

from .suite import make_data

__all__ = ["main"]

TIMEOUT_MS = 30_000

_SERVER = r"""
import gc, sys, msgpack, plyvel, zmq
from itertools import islice
db = plyvel.DB(sys.argv[1])
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.linger = 0
port = s.bind_to_random_port("tcp://127.0.0.1")
sys.stdout.write(f"{port}\n"); sys.stdout.flush()
gc.disable()  # as the real server's workers do around big requests
while s.poll(60_000):
    ident, req = s.recv_multipart()
    page = int(req)
    if page < 0:
        break
    if page == 0:  # one reply
        s.send_multipart([ident, b"e", msgpack.packb({"datas": list(db.iterator())},
                                                      use_bin_type=True)])
        continue
    it = db.iterator()  # one iterator: one snapshot for every page
    while True:
        chunk = list(islice(it, page))
        last = len(chunk) < page
        s.send_multipart([ident, b"e" if last else b"m",
                          msgpack.packb({"datas": chunk}, use_bin_type=True)])
        if last:
            break
db.close()
"""


def _median_ms(fn: Callable[[], int], expect: int, repeat: int) -> float:
    got = fn()
    if got != expect:
        raise AssertionError(f"expected {expect} items, got {got}")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streamed_range", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--pages", default="5000,10000,25000")
    p.add_argument("--repeat", type=int, default=11)
    args = p.parse_args(argv)
    pages = [int(x) for x in args.pages.split(",") if x]
    if args.size < 1 or args.repeat < 1 or any(x < 1 for x in pages):
        p.error("--size, --repeat and --pages must be >= 1")
    import plyvel

    pairs = make_data(args.size, 1)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for name in ("server", "local"):
            db = plyvel.DB(os.path.join(tmp, name), create_if_missing=True)
            with db.write_batch() as wb:
                for k, v in pairs:
                    wb.put(k, v)
            db.close()
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, os.path.join(tmp, "server")],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        local = plyvel.DB(os.path.join(tmp, "local"))
        try:
            assert proc.stdout is not None
            sock.connect(f"tcp://127.0.0.1:{int(proc.stdout.readline())}")

            def fetch(page: int) -> int:
                sock.send(str(page).encode())
                n = 0
                while True:
                    if not sock.poll(TIMEOUT_MS):
                        raise TimeoutError("no reply from the experiment's server")
                    flag, body = sock.recv_multipart()
                    gc.disable()
                    try:
                        n += len(msgpack.unpackb(body, raw=True)[b"datas"])
                    finally:
                        gc.enable()
                    if flag == b"e":
                        return n

            base = _median_ms(lambda: len(list(local.iterator())), args.size, args.repeat)
            rows = [("plyvel, in-process list(db.iterator())", base)]
            rows.append(("one reply (RANGE today)",
                         _median_ms(lambda: fetch(0), args.size, args.repeat)))
            for page in pages:
                rows.append((f"streamed pages of {page:,}",
                             _median_ms(lambda: fetch(page), args.size, args.repeat)))
            sock.send(b"-1")
        finally:
            sock.close(0)
            ctx.term()
            local.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    print(f"{args.size:,} pairs, median of {args.repeat}:")
    for name, ms in rows:
        print(f"  {name:<42} {ms:8.2f} ms  {ms / base:5.2f} x plyvel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
