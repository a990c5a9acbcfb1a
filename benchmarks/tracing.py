"""Measurement: what tracing costs the hot path. Single ``Get`` latency and 16-thread ``Get``
throughput of one shared client, with OpenTelemetry absent, installed but with no tracer
provider, and with the SDK's provider (a ``SimpleSpanProcessor`` and an exporter that drops
every span: the whole span work on the calling thread, none of an export).

    python -m benchmarks.tracing [--rounds 5] [--calls 2000] [--threads 16] [--json]

One real server (``ServerProcess``, loopback) serves every run. Each run is a child process
of its own (``absent`` blocks the import of ``opentelemetry`` there), the modes interleaved
round by round in a rotating order (timing.interleaved); the figures are the medians of the
rounds. Every loop is bounded in count, and each child in time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from typing import Any, Callable, Dict, List

from pyelevator_pool import Elevator
from pyelevator_pool.testing import ServerProcess

from .timing import interleaved, machine_line, median, spread

MODES = ("absent", "no provider", "sdk")

_SETUP = {
    "absent": """
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Refuse())
        """,
    "no provider": """
        from opentelemetry import trace
        """,
    "sdk": """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (SimpleSpanProcessor, SpanExporter,
                                                    SpanExportResult)
        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
        """,
}

_RUN = """
    import json, sys, threading, time
    endpoint, calls, nthreads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    """

_MEASURE = """
    from pyelevator_pool import Elevator
    E = Elevator(endpoint=endpoint, max_size=nthreads)
    traced = E.pool.tracer is not None
    for _ in range(200):
        E.Get("bench")
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        E.Get("bench")
        lat.append(time.perf_counter() - t0)
    lat.sort()
    per_thread = calls // 2
    barrier = threading.Barrier(nthreads + 1)
    def worker():
        barrier.wait()
        for _ in range(per_thread):
            E.Get("bench")
    threads = [threading.Thread(target=worker) for _ in range(nthreads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    E.close()
    print(json.dumps({"traced": traced, "get_us": lat[len(lat) // 2] * 1e6,
                      "ops_s": nthreads * per_thread / elapsed,
                      "otel_imported": any(m.startswith("opentelemetry") for m in sys.modules)}))
"""


def run_child(mode: str, endpoint: str, calls: int, threads: int) -> Dict[str, Any]:
    code = "".join(textwrap.dedent(part) for part in (_RUN, _SETUP[mode], _MEASURE))
    proc = subprocess.run([sys.executable, "-c", code, endpoint, str(calls),
                           str(threads)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: the child failed:\n{proc.stderr}")
    out: Dict[str, Any] = json.loads(proc.stdout)
    expected = {"absent": (False, False), "no provider": (False, True), "sdk": (True, True)}
    if (out["traced"], out["otel_imported"]) != expected[mode]:
        raise RuntimeError(f"{mode}: the child did not run in that mode: {out}")
    return out


def measure(endpoint: str, rounds: int, calls: int, threads: int) -> Dict[str, Dict[str, Any]]:
    results: Dict[str, List[Dict[str, Any]]] = {m: [] for m in MODES}

    def runner(mode: str) -> Callable[[], float]:
        def run() -> float:
            results[mode].append(run_child(mode, endpoint, calls, threads))
            return 0.0
        return run

    interleaved({m: runner(m) for m in MODES}, rounds)
    out: Dict[str, Dict[str, Any]] = {}
    for mode, runs in results.items():
        lat = [r["get_us"] for r in runs]
        ops = [r["ops_s"] for r in runs]
        out[mode] = {"get_us": median(lat), "get_us_spread": spread(lat),
                     "ops_s": median(ops), "ops_s_spread": spread(ops), "rounds": len(runs)}
    return out


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=2000, help="timed single-thread Gets per run")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calls < 2 or not 1 <= args.threads <= 256:
        p.error("--rounds >= 1, --calls >= 2, --threads 1..256")
    with ServerProcess() as server:
        assert server.endpoint is not None
        with Elevator(endpoint=server.endpoint) as E:
            E.Put("bench", b"x" * 32)
        figures = measure(server.endpoint, args.rounds, args.calls, args.threads)
    if args.json:
        print(json.dumps({"machine": machine_line(), "figures": figures}, indent=2))
        return 0
    print(f"{machine_line()}; medians of {args.rounds} rounds, interleaved")
    base = figures["absent"]
    print(f"{'mode':<12} {'Get us (1 thread)':>18} {'vs absent':>9} "
          f"{f'Get/s ({args.threads} threads)':>22} {'vs absent':>9}")
    for mode, f in figures.items():
        print(f"{mode:<12} {f['get_us']:>18.1f} {f['get_us'] / base['get_us']:>8.2f}x "
              f"{f['ops_s']:>22.0f} {f['ops_s'] / base['ops_s']:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
