"""Measurement: can one client starve the others? A second client's GET latency and the
server's memory while a first client does something heavy or rude.

    python -m benchmarks.fairness [--scenario idle|a|b|c] [--duration 8] [--json]

Each scenario starts its own real server (``ServerProcess``, a temporary directory),
loads the data it needs, then runs the first client's load for ``--duration`` seconds
while a prober (a raw DEALER in a separate process, so the load's client-side work
does not delay it) sends GETs on ``default`` one after the other, each waiting at most
2 s for its reply (a timeout is counted, and enters the percentiles as its 2 s wait):

* ``idle``: no load, the baseline;
* ``a``: 300 RANGEs of ~1 MB each (1,000 keys of 1 KB, one reply each, with ``meta.id``)
  sent on one DEALER that never reads them (RCVHWM 1: the replies stay on the server);
* ``b``: 16 threads, each with its own DEALER, doing 100k-key MGETs one after the other;
* ``c``: DBREPAIR of a 300k-key database (not ``default``) over and over.

The server process's RSS (psutil) is sampled every 20 ms: before the load, and its peak
during it. A server whose RSS passes ``--rss-cap`` MiB (2 GiB) is killed, and the row
says so. Every loop here is bounded in time and count.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import msgpack
import psutil
import zmq

import pyelevator_pool
from pyelevator_pool import protocol
from pyelevator_pool.testing import ServerProcess

from .timing import code_version, percentile

__all__ = ["SCENARIOS", "run_scenario", "main", "percentile"]

GET_TIMEOUT = 2.0           # seconds a probe GET waits for its reply
RSS_CAP_MIB = 2048          # a server beyond this is killed: the run is capped
GET_KEYS = 1000             # keys the prober reads (small values)
RANGE_KEYS = 1000           # scenario a: keys per RANGE, 1 KB values: ~1 MB per reply
RANGE_VALUE = 1024
UNREAD_RANGES = 300
MGET_KEYS = 100_000         # scenario b: keys per MGET
MGET_VALUE = 32
MGET_THREADS = 16
REPAIR_KEYS = 300_000       # scenario c: keys of the repaired database
REPAIR_VALUE = 1024         # random bytes: LevelDB cannot compress them, repair reads ~300 MB
REPAIR_DB = "repair300k"
MAX_LOAD_OPS = 10_000       # a bound on every load loop, beyond the time bound
LOAD_REPLY_TIMEOUT = 60.0   # seconds a load request may take before its thread gives up
_MIB = 1024 * 1024


def _request(cmd: str, args: list, uid: Optional[str], rid: Any, **meta: Any) -> bytes:
    m: Dict[str, Any] = {"id": rid}
    m.update(meta)
    return msgpack.packb({"meta": m, "uid": uid, "cmd": cmd, "args": args}, use_bin_type=True)


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def _call(sock: zmq.Socket, cmd: str, args: list, uid: Optional[str] = None,
          timeout: float = LOAD_REPLY_TIMEOUT, rid: Any = "setup") -> protocol.Reply:
    """Send one request and return its reply (replies of other ids are skipped);
    TimeoutError when none comes within ``timeout`` seconds."""
    sock.send(_request(cmd, args, uid, rid))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000) + 1):
            raise TimeoutError(f"{cmd}: no reply within {timeout}s")
        reply = protocol.decode_reply(sock.recv_multipart())
        if reply.id == rid:
            return reply


def _uid(sock: zmq.Socket, name: str) -> str:
    reply = _call(sock, protocol.DBCONNECT, [name])
    if reply.status != protocol.Status.SUCCESS:
        raise RuntimeError(f"DBCONNECT {name}: {reply.err_msg}")
    uid = reply.datas[0]
    return uid.decode() if isinstance(uid, bytes) else uid


def _put_many(sock: zmq.Socket, uid: str, keys: Callable[[int], bytes], count: int,
              value: Callable[[int], bytes], chunk: int = 20_000) -> None:
    for start in range(0, count, chunk):
        ops = [[protocol.BATCH_PUT, keys(i), value(i)]
               for i in range(start, min(count, start + chunk))]
        reply = _call(sock, protocol.BATCH, [ops], uid)
        if reply.status != protocol.Status.SUCCESS:
            raise RuntimeError(f"BATCH: {reply.err_msg}")


def get_key(i: int) -> bytes:
    return b"g%06d" % i


def range_key(i: int) -> bytes:
    return b"r%06d" % i


def mget_key(i: int) -> bytes:
    return b"m%06d" % i


def prepare(endpoint: str, scenario: str) -> None:
    """Write the data ``scenario`` needs (the prober's keys always)."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = _dealer(ctx, endpoint)
    try:
        uid = _uid(sock, "default")
        _put_many(sock, uid, get_key, GET_KEYS, lambda i: b"v" * 16)
        if scenario == "a":
            _put_many(sock, uid, range_key, RANGE_KEYS, lambda i: b"x" * RANGE_VALUE)
        elif scenario == "b":
            _put_many(sock, uid, mget_key, MGET_KEYS, lambda i: b"y" * MGET_VALUE)
        elif scenario == "c":
            reply = _call(sock, protocol.DBCREATE, [REPAIR_DB, {}])
            if reply.status != protocol.Status.SUCCESS:
                raise RuntimeError(f"DBCREATE: {reply.err_msg}")
            noise = os.urandom(1 << 20)
            span = len(noise) - REPAIR_VALUE
            _put_many(sock, _uid(sock, REPAIR_DB), lambda i: b"p%07d" % i, REPAIR_KEYS,
                      lambda i: noise[(i * 4099) % span:][:REPAIR_VALUE], chunk=20_000)
    finally:
        sock.close(0)


# ------------------------------------------------------------------- the prober

def _probe(endpoint: str, duration: float, conn: Any) -> None:
    """In a child process: GETs one after the other for ``duration`` seconds once told
    to go; sends back {"latencies": [s...], "timeouts": n, "errors": n}."""
    ctx = zmq.Context()
    sock = _dealer(ctx, endpoint)
    try:
        uid = _uid(sock, "default")
        frames = [_request(protocol.GET, [get_key(i)], uid, i) for i in range(GET_KEYS)]
        conn.send("ready")
        if not conn.poll(60):
            return
        conn.recv()
        latencies: List[float] = []
        timeouts = errors = 0
        end = time.monotonic() + duration
        n = 0
        while time.monotonic() < end and n < 1_000_000:
            rid = n % GET_KEYS
            n += 1
            t0 = time.monotonic()
            sock.send(frames[rid])
            deadline = t0 + GET_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(max(1, int(left * 1000))):
                    timeouts += 1
                    latencies.append(GET_TIMEOUT)
                    break
                reply = protocol.decode_reply(sock.recv_multipart())
                if reply.id != rid:
                    continue  # the late reply of a GET that timed out
                latencies.append(time.monotonic() - t0)
                if reply.status != protocol.Status.SUCCESS:
                    errors += 1
                break
            time.sleep(0.002)
        conn.send({"latencies": latencies, "timeouts": timeouts, "errors": errors})
    finally:
        sock.close(0)
        ctx.term()


# --------------------------------------------------------------------- the loads

class _Load:
    """The first client's work, on threads, until :meth:`stop`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx: zmq.Context = zmq.Context.instance()
        self.stopped = threading.Event()
        self.threads: List[threading.Thread] = []
        self.ops = 0
        self.failures = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        raise NotImplementedError

    def _count(self, ok: bool) -> None:
        with self._lock:
            self.ops += 1
            if not ok:
                self.failures += 1

    def _wait_reply(self, sock: zmq.Socket, rid: Any) -> Optional[dict]:
        """The header of the reply ``rid`` (None when stopped or timed out); the header
        alone is decoded: the load's client-side cost stays small."""
        deadline = time.monotonic() + LOAD_REPLY_TIMEOUT
        while not self.stopped.is_set() and time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart(copy=False)
            head = protocol.decode_header(frames[0].bytes)
            if head.get("id") == rid:
                return head
        return None

    def _requests(self, uid: Callable[[zmq.Socket], str], cmd: str, args: list,
                  first_id: int) -> None:
        """On a socket of its own: ``cmd`` one after the other until stopped (or
        MAX_LOAD_OPS), each awaited; ``uid(sock)`` names the database."""
        sock = _dealer(self.ctx, self.endpoint)
        try:
            db = uid(sock)
            for rid in range(first_id, first_id + MAX_LOAD_OPS):
                if self.stopped.is_set():
                    break
                sock.send(_request(cmd, args, db, rid))
                reply = self._wait_reply(sock, rid)
                if reply is None:
                    break
                self._count(reply.get("status") != protocol.Status.FAILURE)
        finally:
            sock.close(0)

    def stop(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(LOAD_REPLY_TIMEOUT)


class _UnreadRanges(_Load):
    """Scenario a: ``unread`` ~1 MB RANGEs on a socket that never reads its replies."""

    unread = UNREAD_RANGES
    sock: Optional[zmq.Socket] = None

    def start(self) -> None:
        sock = self.sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = 1               # keep the replies queued on the server, not here
        sock.setsockopt(zmq.RCVBUF, 64 * 1024)
        sock.connect(self.endpoint)
        probe = _dealer(self.ctx, self.endpoint)
        try:
            uid = _uid(probe, "default")
        finally:
            probe.close(0)
        args = [range_key(0), range_key(RANGE_KEYS - 1), True, True]
        for i in range(self.unread):
            try:  # NOBLOCK: a server that pushes back fills this socket's queue
                sock.send(_request(protocol.RANGE, args, uid, i), zmq.NOBLOCK)
            except zmq.Again:
                break
            self.ops += 1

    def stop(self) -> None:
        super().stop()
        if self.sock is not None:
            self.sock.close(0)


class _ConcurrentMgets(_Load):
    """Scenario b: 16 threads, each its own DEALER, 100k-key MGETs back to back."""

    def start(self) -> None:
        probe = _dealer(self.ctx, self.endpoint)
        try:
            uid = _uid(probe, "default")
        finally:
            probe.close(0)
        keys = [mget_key(i) for i in range(MGET_KEYS)]
        for t in range(MGET_THREADS):
            thread = threading.Thread(target=self._run, args=(uid, keys, t), daemon=True,
                                      name=f"mget-{t}")
            thread.start()
            self.threads.append(thread)

    def _run(self, uid: str, keys: List[bytes], t: int) -> None:
        self._requests(lambda sock: uid, protocol.MGET, [keys, False], t * MAX_LOAD_OPS)


class _Repairs(_Load):
    """Scenario c: DBREPAIR of the 300k-key database, over and over."""

    def start(self) -> None:
        thread = threading.Thread(target=self._run, daemon=True, name="repair")
        thread.start()
        self.threads.append(thread)

    def _run(self) -> None:
        self._requests(lambda sock: _uid(sock, REPAIR_DB), protocol.DBREPAIR, [], 0)


class _Idle(_Load):
    def start(self) -> None:
        pass


SCENARIOS: Dict[str, Any] = {
    "idle": (_Idle, "no load (baseline)"),
    "a": (_UnreadRanges, "unread ~1 MB RANGEs"),
    "b": (_ConcurrentMgets, f"{MGET_THREADS} concurrent {MGET_KEYS // 1000}k-key MGETs"),
    "c": (_Repairs, f"DBREPAIR of a {REPAIR_KEYS // 1000}k-key database"),
}


# ------------------------------------------------------------------ measurement

class _RssWatch(threading.Thread):
    """Samples a process's RSS; kills the server when it passes the cap."""

    def __init__(self, server: ServerProcess, cap_mib: float) -> None:
        super().__init__(daemon=True, name="rss-watch")
        self.server = server
        self.proc = psutil.Process(server.pid)
        self.cap = cap_mib * _MIB
        self.peak = 0
        self.capped = False
        self.done = threading.Event()

    def rss(self) -> int:
        try:
            return self.proc.memory_info().rss
        except psutil.Error:
            return 0

    def run(self) -> None:
        while not self.done.wait(0.02):
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if rss > self.cap:
                self.capped = True
                self.server.kill()
                return


def run_scenario(name: str, duration: float = 8.0, *, rss_cap_mib: float = RSS_CAP_MIB,
                 data_dir: Optional[str] = None, unread: int = UNREAD_RANGES) -> Dict[str, Any]:
    """Run one scenario on a server of its own; its figures (latencies in ms, RSS in MiB).
    ``unread``: the RANGEs scenario a sends. Raises KeyError for an unknown scenario,
    RuntimeError when the server or the prober fails."""
    load_class, title = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="fairness-", dir=data_dir) as tmp:
        server = ServerProcess(tmp)
        server.start()
        try:
            assert server.endpoint is not None
            t0 = time.monotonic()
            prepare(server.endpoint, name)
            prepared_s = time.monotonic() - t0
            mp = multiprocessing.get_context("spawn")
            parent, child = mp.Pipe()
            prober = mp.Process(target=_probe, args=(server.endpoint, duration, child),
                                daemon=True)
            prober.start()
            try:
                if not parent.poll(60) or parent.recv() != "ready":
                    raise RuntimeError("the prober did not start")
                watch = _RssWatch(server, rss_cap_mib)
                rss_before = watch.rss()
                watch.start()
                load = load_class(server.endpoint)
                if isinstance(load, _UnreadRanges):
                    load.unread = unread
                try:
                    load.start()
                    parent.send("go")
                    result = parent.recv() if parent.poll(duration + GET_TIMEOUT + 30) else None
                finally:
                    load.stop()
                    watch.done.set()
                    watch.join(5)
                peak = max(watch.peak, watch.rss())
            finally:
                prober.join(5)
                if prober.is_alive():
                    prober.kill()
                    prober.join(5)
            if result is None:
                raise RuntimeError("the prober did not report")
        finally:
            server.kill()  # a graceful stop would first drain what the load left queued
            server.stop()
    lat = [x * 1000 for x in result["latencies"]]
    if name == "a":
        title = f"{load.ops} {title}"
    return {
        "scenario": name, "title": title, "duration_s": duration,
        "prepare_s": round(prepared_s, 2),
        "gets": len(lat), "timeouts": result["timeouts"], "errors": result["errors"],
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else float("nan"),
        "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else float("nan"),
        "rss_before_mib": round(rss_before / _MIB, 1), "rss_peak_mib": round(peak / _MIB, 1),
        "rss_growth_mib": round(max(0, peak - rss_before) / _MIB, 1),
        "load_ops": load.ops, "load_failures": load.failures,
        "capped": watch.capped,
    }


def measured_code() -> str:
    """Where the measured package comes from: its checkout and git commit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyelevator_pool.__file__)))
    return f"{root} at {code_version(root)}"


def format_table(rows: List[Dict[str, Any]]) -> str:
    head = (f"{'scenario':<44} {'gets':>6} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'t/o':>5} {'RSS MiB':>8} {'growth':>8} {'load ops':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = " (server killed: RSS cap)" if r["capped"] else ""
        lines.append(f"{r['scenario'] + ': ' + r['title']:<44} {r['gets']:>6} "
                     f"{r['mean_ms']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} "
                     f"{r['timeouts']:>5} {r['rss_before_mib']:>8.0f} "
                     f"{r['rss_growth_mib']:>8.0f} {r['load_ops']:>8}{note}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                        help="run only this one (repeatable); default: all")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds of load per scenario (default 8)")
    parser.add_argument("--rss-cap", type=float, default=RSS_CAP_MIB,
                        help="MiB of server RSS beyond which the server is killed")
    parser.add_argument("--unread", type=int, default=UNREAD_RANGES,
                        help=f"RANGEs scenario a sends and never reads (default {UNREAD_RANGES})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    names = args.scenario or ["idle", "a", "b", "c"]
    rows = [run_scenario(n, args.duration, rss_cap_mib=args.rss_cap, unread=args.unread)
            for n in names]
    code = measured_code()
    if args.json:
        print(json.dumps({"code": code, "get_timeout_s": GET_TIMEOUT, "rows": rows}, indent=2))
    else:
        print(f"measured: {code}; probe GET timeout {GET_TIMEOUT:g}s, "
              f"{args.duration:g}s of load per scenario; a timeout counts as {GET_TIMEOUT:g}s")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
