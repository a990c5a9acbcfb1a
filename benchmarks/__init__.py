"""``python -m benchmarks``: pyelevator_pool's throughput suite, side by side with anchors.

Measures, in one run on the same data (100,000 keys ``str(0..99999)`` with
32-character uuid4-hex values): WriteBatch, bulk load, MGet, Range, Slice, RangeIter,
single Get latency, N threads sharing one client, and pool checkout+checkin; on this
project's client, in-process plyvel (the limit), the original py-elevator design
(one socket behind a lock), redis-py on a real redis-server (when installed) and a
raw ZeroMQ echo (the network floor). Writes ``results.json`` and ``results.png``, and
with ``--write-readme`` the figures section of ``benchmarks/README.rst``.

Modules: ``suite`` (workloads, run), ``anchors`` (echo, redis-server, the original
design), ``timing`` (clock, statistics, interleaving, CPU, machine), ``report`` (targets,
table, JSON, chart, README); ``fairness`` and ``profile`` are programs of their own.
See ``python -m benchmarks --help`` and ``benchmarks/README.rst``.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv=None) -> int:  # noqa: ANN001 - thin re-export of the CLI
    from .__main__ import main as _main
    return _main(argv)
