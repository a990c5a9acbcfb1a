"""What bounds a bulk call: its serial stages timed one by one, beside in-process plyvel.

    python -m benchmarks.stages [--size 100000] [--repeat 7]

A call of the client is a chain: the client builds and encodes the request, ZeroMQ
carries it, the server decodes it, runs it on LevelDB, encodes the reply, ZeroMQ
carries that back, the client decodes it. Every stage but the transfers is timed
here in this process with the real functions (``protocol``, the server's
``Dispatcher`` on a real ``Store``), each with the garbage collector as the real
code has it; the transfers are timed as a raw ZeroMQ echo of frames of the same
sizes. The sum, against the plyvel baseline, is the ratio the chain allows when
its stages run one after the other, as they must for one request.
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from itertools import islice
from typing import Any, Callable, Dict, List, Optional, Tuple

import zmq

from pyelevator_pool import protocol
from pyelevator_pool.connection import gc_paused

from .anchors import EchoServer
from .suite import make_data, plyvel_mget

__all__ = ["main", "measure_stages"]


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Median of ``repeat`` timed runs (after one warm-up), in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _transfer(sock: zmq.Socket, frame: bytes, repeat: int) -> float:
    def once() -> None:
        sock.send(frame)
        if not sock.poll(30_000):
            raise TimeoutError("no echo within 30 s")
        sock.recv()
    return _best(once, repeat)


def measure_stages(size: int = 100_000, repeat: int = 7) -> Dict[str, List[Tuple[str, float]]]:
    """{workload: [(stage, seconds), ...]} for WriteBatch, MGet, Range and Slice, with the
    plyvel baseline as the stage named ``"plyvel (in-process)"``."""
    import plyvel

    from pyelevator_pool.batch import WriteBatch
    from pyelevator_pool.server.handlers import Dispatcher
    from pyelevator_pool.server.store import Store

    pairs = make_data(size, 1)
    keys = [k for k, _ in pairs]
    mget_keys = random.Random(1).sample(keys, min(9_999, size))
    gc.collect()
    gc.freeze()
    out: Dict[str, List[Tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp, EchoServer() as echo:
        store = Store(tmp + "/server")
        store.load()
        dispatcher = Dispatcher(store)
        uid_box = [store.connect("default")]
        ldb = plyvel.DB(tmp + "/plyvel", create_if_missing=True)

        def plyvel_load(db: Any) -> None:
            with db.write_batch() as wb:
                for k, v in pairs:
                    wb.put(k, v)

        # The read chains read stores written once (untimed).
        plyvel_load(ldb)
        with gc_paused():
            dispatcher.run(dispatcher.decode(protocol.encode_request(
                protocol.BATCH, [[(1, k, v) for k, v in pairs]], uid_box[0], id=1)))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(echo.endpoint)
        try:
            def server_run(frame: bytes) -> List[bytes]:
                # As a worker thread runs a big request: decode, run, encode, GC paused.
                with gc_paused():
                    return dispatcher.run(dispatcher.decode(frame))

            def client_decode(reply: List[bytes]) -> Any:
                head = protocol.decode_header(reply[0])
                if len(reply[1]) > 256 * 1024:
                    with gc_paused():
                        return protocol.decode_content(reply[1], bool(head.get("compression")))
                return protocol.decode_content(reply[1], bool(head.get("compression")))

            def chain(name: str, build: Callable[[], Tuple[str, list]], baseline: Callable[[], Any]
                      ) -> None:
                cmd, args = build()
                uid = uid_box[0]
                frame = protocol.encode_request(cmd, args, uid, id=1)
                reply = server_run(frame)
                req = dispatcher.decode(frame)
                status, datas = _paused(dispatcher._execute, req)
                stages = [
                    ("client: build the arguments", _best(build, repeat)),
                    ("client: encode_request", _best(
                        lambda: protocol.encode_request(cmd, args, uid, id=1), repeat)),
                    (f"ZeroMQ: request frame ({len(frame) / 1e6:.2f} MB) there and back / 2",
                     _transfer(sock, frame, repeat) / 2),
                    ("server: decode_request (GC paused)", _best(
                        lambda: _paused(dispatcher.decode, frame), repeat)),
                    ("server: run the command on LevelDB", _best(
                        lambda: _paused(dispatcher._execute, req), repeat)),
                    ("server: encode_reply", _best(lambda: _paused(
                        lambda: protocol.encode_reply(datas, status=status, id=1)), repeat)),
                    (f"ZeroMQ: reply frame ({len(reply[1]) / 1e6:.2f} MB) there and back / 2",
                     _transfer(sock, reply[1], repeat) / 2),
                    ("client: decode the reply (GC paused when large)",
                     _best(lambda: client_decode(reply), repeat)),
                ]
                stages.append(("plyvel (in-process)", _best(baseline, repeat)))
                out[name] = stages

            def build_mget() -> Tuple[str, list]:
                return protocol.MGET, [mget_keys if set(map(type, mget_keys)) == {bytes}
                                       else list(mget_keys), False]

            chain("MGet", build_mget, lambda: plyvel_mget(ldb, mget_keys))
            chain("Range", lambda: (protocol.RANGE, [None, None, True, True, None]),
                  lambda: list(ldb.iterator()))
            chain("Slice", lambda: (protocol.SLICE, [None, size, True, True]),
                  lambda: list(islice(ldb.iterator(), size)))

            def build_batch() -> Tuple[str, list]:
                wb = WriteBatch.__new__(WriteBatch)  # only its Put path: no client needed
                wb._ops = []
                put = wb.Put
                for k, v in pairs:
                    put(k, v)
                return protocol.BATCH, [wb._ops]

            # Writes go to stores of their own, the same volume on each side: LevelDB's
            # write cost depends on what was written before.
            store.create("batch", {})
            uid_box[0] = store.connect("batch")
            ldb_batch = plyvel.DB(tmp + "/plyvel-batch", create_if_missing=True)
            try:
                chain("WriteBatch", build_batch,
                      lambda: plyvel_load(ldb_batch))
            finally:
                ldb_batch.close()

        finally:
            sock.close(0)
            ctx.term()
            ldb.close()
            store.close_all()
            gc.unfreeze()
    return out


def _paused(fn: Callable[..., Any], *args: Any) -> Any:
    with gc_paused():
        return fn(*args)


def format_stages(stages: Dict[str, List[Tuple[str, float]]]) -> str:
    lines = []
    for name, rows in stages.items():
        base = dict(rows)["plyvel (in-process)"]
        chain = [(s, t) for s, t in rows if s != "plyvel (in-process)"]
        total = sum(t for _, t in chain)
        lines.append(f"{name}")
        for stage, t in chain:
            lines.append(f"  {stage:<58} {t * 1e3:8.2f} ms  {t / base:5.2f} x plyvel")
        lines.append(f"  {'sum of the serial stages':<58} {total * 1e3:8.2f} ms  "
                     f"{total / base:5.2f} x plyvel")
        lines.append(f"  {'plyvel (in-process), the baseline':<58} {base * 1e3:8.2f} ms")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    if args.size < 10 or args.repeat < 1:
        p.error("--size must be >= 10 and --repeat >= 1")
    print(format_stages(measure_stages(args.size, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
