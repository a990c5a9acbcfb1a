"""Where the time goes: one workload in a loop, sampled by py-spy in the client AND the server.

    python -m benchmarks.profile Range [--seconds 8] [--size 100000] [--out DIR] [--native]

Starts an embedded elevator-server, loads the benchmark data, then runs the workload
over and over for ``--seconds`` while ``py-spy record`` samples both processes
(``pip install py-spy``). Prints, for each side, the functions with the most samples
(self and inclusive, as a share of the samples of the busy threads), and keeps the raw
collapsed stacks in ``--out`` (feed them to flamegraph.pl or speedscope).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from .suite import BENCH_DB, REQUEST_TIMEOUT, make_data

__all__ = ["main", "summarize"]

WORKLOADS = ("WriteBatch", "MGet", "Range", "Slice", "RangeIter", "Get", "Get16", "Get64",
             "Put16")
#: innermost frames that are a thread waiting, not working (left out of the shares)
IDLE_FRAMES = ("Poller.poll (", "poll (libc", "epoll_wait (libc", "pthread_cond_wait", "futex_wait", "__futex_abstimed_wait", "do_futex_wait", "Socket.poll (", "Condition.wait (", "Event.wait (",
               "Thread._wait_for_tstate_lock (", "Thread.join (", "select (", "sleep (")


def _function(frame: str, lines: bool) -> str:
    """``name (file:line)`` as ``name (file)`` unless lines are wanted."""
    if lines or not frame.endswith(")"):
        return frame
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail[:-1].isdigit() else frame


def summarize(path: str, top: int = 12, lines: bool = False) -> str:
    """Self and inclusive sample shares per function of a py-spy raw (collapsed) file,
    leaving out samples whose innermost frame is an idle wait."""
    self_counts: Dict[str, int] = collections.Counter()
    incl: Dict[str, int] = collections.Counter()
    total = idle = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            frames = [_function(fr, lines) for fr in stack.split(";")]
            leaf = frames[-1]
            if any(leaf.startswith(x) for x in IDLE_FRAMES):
                idle += count
                continue
            total += count
            self_counts[leaf] += count
            for fr in set(frames[1:]):  # [0] is the thread/process name
                incl[fr] += count
    if not total:
        return "  (no busy samples)"
    lines = [f"  {total} busy samples ({idle} idle-wait samples left out)",
             "  self%  function"]
    for fr, c in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * c / total:5.1f}  {fr}")
    lines.append("  incl%  function")
    for fr, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * c / total:5.1f}  {fr}")
    return "\n".join(lines)


def _spy(pid: int, out: str, seconds: float, native: bool) -> subprocess.Popen:
    cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", out,
           "--duration", str(int(seconds) + 1), "--rate", "250", "--threads"]
    # --native needs the process stopped while its stack is read; plain sampling does not.
    cmd.append("--native" if native else "--nonblocking")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _workload(name: str, ele, pairs: List[Tuple[bytes, bytes]]) -> Callable[[], object]:
    import random
    keys = [k for k, _ in pairs]
    rnd = random.Random(1)
    mget_keys = rnd.sample(keys, min(9_999, len(keys)))
    n = len(pairs)
    if name == "WriteBatch":
        def run() -> None:
            wb = ele.WriteBatch()
            for k, v in pairs:
                wb.Put(k, v)
            wb.Write()
        return run
    if name == "MGet":
        return lambda: ele.MGet(mget_keys)
    if name == "Range":
        return lambda: ele.Range()
    if name == "Slice":
        return lambda: ele.Slice(None, n)
    if name == "RangeIter":
        return lambda: sum(1 for _ in ele.RangeIter())
    if name == "Get":
        def gets() -> None:
            for k in mget_keys[:2000]:
                ele.Get(k)
        return gets
    if name in ("Get16", "Get64", "Put16"):
        import threading
        nthreads = int(name[3:])
        per = max(1, len(mget_keys) // nthreads)
        value = pairs[0][1]

        def threaded() -> None:
            def worker(i: int) -> None:
                for k in mget_keys[i * per:(i + 1) * per][:100]:
                    if name.startswith("Put"):
                        ele.Put(k, value)
                    else:
                        ele.Get(k)
            ts = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
        return threaded
    raise ValueError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--out", default="bench-results/profile")
    p.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--lines", action="store_true", help="per line, not per function")
    p.add_argument("--server-args", default="", help="extra elevator-server flags")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    from pyelevator_pool import Elevator
    from pyelevator_pool.testing import ServerProcess

    os.makedirs(args.out, exist_ok=True)
    pairs = make_data(args.size, 1)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, \
            ServerProcess(tmp, args=args.server_args.split()) as server:
        with Elevator(endpoint=server.endpoint, timeout=REQUEST_TIMEOUT, max_size=64) as ele:
            ele.createdb(BENCH_DB)
            ele.connect(BENCH_DB)
            wb = ele.WriteBatch()
            for k, v in pairs:
                wb.Put(k, v)
            wb.Write()
            run = _workload(args.workload, ele, pairs)
            run()  # warm-up
            base = os.path.join(args.out, args.workload)
            spies = [_spy(server.pid, base + ".server.txt", args.seconds, args.native),
                     _spy(os.getpid(), base + ".client.txt", args.seconds, args.native)]
            time.sleep(0.5)  # py-spy attaches
            deadline = time.monotonic() + args.seconds
            runs = 0
            start = time.perf_counter()
            while time.monotonic() < deadline:
                run()
                runs += 1
            elapsed = time.perf_counter() - start
            for spy in spies:
                try:
                    _, err = spy.communicate(timeout=args.seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                if spy.returncode not in (0, None) and err:
                    print(err.strip()[-500:], file=sys.stderr)
    print(f"{args.workload}: {runs} runs in {elapsed:.2f} s = {elapsed / max(runs, 1) * 1e3:.2f} "
          f"ms per run (under sampling)")
    for side in ("client", "server"):
        path = f"{base}.{side}.txt"
        print(f"\n{side} ({path}):")
        print(summarize(path, args.top, args.lines) if os.path.exists(path) else "  (no profile written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
