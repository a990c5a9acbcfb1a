"""Targets, the printed table, ``results.json``, ``results.png`` and the figures section of
``benchmarks/README.rst`` (``python -m benchmarks --write-readme``)."""
from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .suite import IMPLEMENTATIONS, Record, ratio
from .timing import median

__all__ = ["Target", "TARGETS", "evaluate_targets", "format_table", "write_json", "write_png",
           "format_readme", "write_readme", "marker_at", "README", "BEGIN", "END"]

#: the benchmarks' README: its static text around the figures written by write_readme
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.rst")
BEGIN = ".. BEGIN FIGURES"
END = ".. END FIGURES"


@dataclass
class Target:
    """A goal: ``name``, how it is measured (``kind``) and its limit."""

    name: str
    kind: str        # "ratio": pyelevator's ratio to plyvel <= limit
                     # "vs-echo": Get median <= limit x the zmq echo median
                     # "vs-redis": items/s >= limit x redis's items/s
                     # "p99-vs-redis": p99 <= limit x redis's p99
                     # "vs-plain": items/s >= limit x coalesce=False's items/s
                     # "vs-floor": items/s >= limit x the minimal server's items/s
                     # "absolute": median seconds <= limit
    workload: str
    limit: float
    text: str


TARGETS: List[Target] = [
    Target("WriteBatch", "ratio", "WriteBatch", 1.35, "<= 1.35 x plyvel"),
    Target("MGet", "ratio", "MGet", 1.1, "<= 1.1 x plyvel"),
    Target("Range", "ratio", "Range", 1.8, "<= 1.8 x plyvel"),
    Target("Slice", "ratio", "Slice", 1.8, "<= 1.8 x plyvel"),
    Target("RangeIter", "ratio", "RangeIter", 2.0, "<= 2.0 x plyvel"),
    Target("single Get", "vs-echo", "Get", 1.10, "<= 1.10 x raw ZeroMQ echo"),
    Target("1-thread Gets", "vs-plain", "Get x1 threads", 0.95,
           ">= 0.95 x coalesce=False (no regression beyond noise)"),
    Target("4-thread Gets", "vs-plain", "Get x4 threads", 0.95,
           ">= 0.95 x coalesce=False (no regression beyond noise)"),
    Target("16-thread Gets", "vs-redis", "Get x16 threads", 2.0, ">= 2 x redis-py pool"),
    Target("16-thread Gets p99", "p99-vs-redis", "Get x16 threads", 1.0,
           "p99 <= redis-py pool's"),
    Target("64-thread Gets", "vs-redis", "Get x64 threads", 3.0, ">= 3 x redis-py pool"),
    Target("16-thread Puts", "vs-redis", "Put x16 threads", 2.0, ">= 2 x redis-py SET"),
    Target("server GET capacity", "vs-floor", "server GET capacity", 0.9,
           ">= 0.9 x a minimal Python ROUTER server"),
    Target("checkout+checkin", "absolute", "checkout+checkin", 1.5e-6, "<= 1.5 us"),
    Target("checkout+checkin x8", "absolute", "checkout+checkin x8 threads", 2e-6,
           "<= 2 us (8 threads)"),
]


#: rate targets: the implementation each is measured against, and its name in the report
_RATE_ANCHORS = {"vs-redis": ("redis", "redis"), "vs-plain": ("pyelevator-plain", "coalesce=False"),
                 "vs-floor": ("python-router", "minimal server")}


def _find(records: Sequence[Record], workload: str, impl: str) -> Optional[Record]:
    for r in records:
        if r.workload == workload and r.implementation == impl:
            return r
    return None


def evaluate_targets(records: Sequence[Record]) -> List[Dict[str, Any]]:
    """One dict per target: ``measured`` (a ratio, or seconds for absolute ones),
    ``display``, ``met`` (True/False, None when it could not be measured), ``why``."""
    out = []
    for t in TARGETS:
        ours = _find(records, t.workload, "pyelevator")
        measured: Optional[float] = None
        met: Optional[bool] = None
        display = "n/a"
        why = ""
        if ours is None:
            why = "not measured in this run"
        elif t.kind == "ratio":
            measured = ours.ratio
            if measured is not None:
                met = measured <= t.limit
                display = f"{measured:.2f} x plyvel"
        elif t.kind == "vs-echo":
            echo = _find(records, t.workload, "zmq-echo")
            if echo is not None:
                measured = ours.median_s / echo.median_s
                met = measured <= t.limit
                display = f"{measured:.2f} x echo ({ours.median_s * 1e6:.1f} vs " \
                          f"{echo.median_s * 1e6:.1f} us)"
        elif t.kind in _RATE_ANCHORS:
            impl, label = _RATE_ANCHORS[t.kind]
            base = _find(records, t.workload, impl)
            if base is None:
                why = f"{label} anchor not measured"
            else:
                measured = ours.items_per_s / base.items_per_s
                met = measured >= t.limit
                display = f"{measured:.2f} x {label} ({ours.items_per_s:,.0f} vs " \
                          f"{base.items_per_s:,.0f} /s)"
        elif t.kind == "p99-vs-redis":
            rds = _find(records, t.workload, "redis")
            if rds is None or rds.p99_s is None or ours.p99_s is None:
                why = "redis anchor not measured"
            else:
                measured = ours.p99_s / rds.p99_s
                met = measured <= t.limit
                display = f"{measured:.2f} x redis ({ours.p99_s * 1e3:.2f} vs " \
                          f"{rds.p99_s * 1e3:.2f} ms)"
        elif t.kind == "absolute":
            measured = ours.median_s
            met = measured <= t.limit
            display = f"{measured * 1e6:.2f} us"
        out.append({"target": t.name, "workload": t.workload, "goal": t.text, "limit": t.limit,
                    "kind": t.kind, "measured": measured, "display": display, "met": met,
                    "why": why})
    return out


def _fmt_time(s: float) -> str:
    if s != s:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k/s"
    return f"{x:.0f} /s"


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_spread(x: Optional[float]) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def table_rows(records: Sequence[Record]) -> List[List[str]]:
    redis = {r.workload: r for r in records if r.implementation == "redis"}
    rows = []
    for r in records:
        extra = f"p99 {_fmt_time(r.p99_s)}" if r.p99_s is not None else ""
        if r.client_cpu_s is not None:
            per = "pair" if r.workload == "bulk load" else "op"
            cpu = f"cpu/{per} {r.client_cpu_s * 1e6:.{2 if per == 'pair' else 0}f}"
            if r.server_cpu_s is not None:
                cpu += f"+{r.server_cpu_s * 1e6:.{2 if per == 'pair' else 0}f}"
            extra = f"{extra}, {cpu} us" if extra else cpu + " us"
        vs_redis = ratio(r, redis[r.workload]) if r.workload in redis else None
        rows.append([r.workload, r.implementation, _fmt_time(r.median_s), _fmt_time(r.min_s),
                     _fmt_time(r.max_s), _fmt_spread(r.spread), _fmt_rate(r.items_per_s),
                     _fmt_ratio(r.ratio), _fmt_ratio(vs_redis), extra or "-"])
    return rows


def _widths(header: List[str], rows: List[List[str]]) -> List[int]:
    return [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(header)]


def _grid(header: List[str], rows: List[List[str]], group: bool = True) -> str:
    widths = _widths(header, rows)
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    prev = None
    for row in rows:
        if group and prev is not None and row[0] != prev:
            out.append("")
        prev = row[0]
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


RESULT_HEADER = ["workload", "implementation", "median", "min", "max", "spread", "items/s",
                 "x plyvel", "x redis", "latency, CPU"]
TARGET_HEADER = ["target", "goal", "measured", "result"]


def target_rows(targets: List[Dict[str, Any]]) -> List[List[str]]:
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    return [[t["target"], t["goal"], t["display"], verdict[t["met"]]] for t in targets]


def format_table(result: Dict[str, Any], targets: List[Dict[str, Any]]) -> str:
    """The results table, the implementations' labels and the targets, as plain text."""
    records = result["records"]
    used = []
    for r in records:
        if r.implementation not in used:
            used.append(r.implementation)
    legend = "\n".join(f"  {name:<11} {IMPLEMENTATIONS[name].label}" for name in used)
    notes = "".join(f"\nnote: {n}" for n in result.get("notes", []))
    meta = result["meta"]
    return (f"{meta['date']} | {meta['machine']} | {meta['python']} | {meta['commit']}\n"
            f"{meta['server']}\n\n"
            + _grid(RESULT_HEADER, table_rows(records))
            + "\n\nimplementations:\n" + legend
            + "\n" + textwrap.fill(COLUMNS, 88)
            + notes + "\n\ntargets:\n" + _grid(TARGET_HEADER, target_rows(targets), group=False))


COLUMNS = ("median: seconds per run of a bulk workload, per operation for the others; "
           "spread: (max - min) / median across the repeats, how noisy the machine was; "
           "x plyvel, x redis: time per item / that anchor's, same workload, same run (lower "
           "is better; thread runs: the anchor's Gets/s / ours); cpu/op C+S: CPU "
           "microseconds per operation (per pair for the bulk load) in the client process, "
           "all its threads, + in the server process.")


def _rst_table(header: List[str], rows: List[List[str]]) -> str:
    widths = _widths(header, rows)
    sep = "  ".join("=" * w for w in widths)
    lines = [sep, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), sep]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    lines.append(sep)
    return "\n".join(lines)


def noise(records: Sequence[Record]) -> str:
    """One sentence: the median and the largest spread across repeats in this run."""
    spreads = [(r.spread, r) for r in records if r.spread is not None]
    if not spreads:
        return "No workload was repeated, so this run says nothing about noise."
    worst, rec = max(spreads, key=lambda x: x[0])
    typical = median([x for x, _ in spreads])
    return (f"Spread across repeats, (max - min) / median: median {_fmt_spread(typical)} "
            f"over {len(spreads)} records, largest {_fmt_spread(worst)} ({rec.workload}, "
            f"{rec.implementation}). A ratio between two records moves by about their spreads "
            "from one run to the next; the thread runs are one timed run each (no spread).")


def format_readme(result: Dict[str, Any], targets: List[Dict[str, Any]],
                  image: Optional[str] = None) -> str:
    """The figures section of benchmarks/README.rst, between the BEGIN and END comments:
    when, where and on what code it ran, the targets, every record, the noise."""
    meta = result["meta"]
    opts = meta["options"]
    libs = (f"pyzmq {meta['pyzmq']} (libzmq {meta['libzmq']}), msgpack {meta['msgpack']}, "
            f"plyvel {meta['plyvel']}" + (f", redis-py {meta['redis-py']}"
                                          if "redis-py" in meta else ""))
    fields = [
        ("date", meta["date"]),
        ("command", f"``{meta.get('command', 'python -m benchmarks')}``"),
        ("commit", meta["commit"]),
        ("machine", f"{meta['cpus']} CPUs, {meta['cpu_model']}"),
        ("os", meta["os"]),
        ("python", meta["python"]),
        ("libraries", libs),
        ("server", meta["server"]),
        ("preset", f"{opts['preset']}: {opts['size']:,} keys, {opts['repeat']} runs of each, "
                   f"{opts['latency_samples']:,} Get samples, {opts['thread_seconds']:g} s per "
                   f"thread run" + (f", {meta['elapsed_s']:g} s in all"
                                    if "elapsed_s" in meta else "")),
    ]
    parts = [
        f"{BEGIN}: written by python -m benchmarks --write-readme; edits here are lost.",
        "",
        "Figures",
        "=======",
        "",
        "Generated by the run below; the sections above and below are written by hand.",
        "",
        *(f":{name}: {value}" for name, value in fields),
        "",
        "Targets",
        "-------",
        "",
        _rst_table(TARGET_HEADER, target_rows(targets)),
        "",
        "Results",
        "-------",
        "",
        textwrap.fill(COLUMNS, 88),
        "",
        _rst_table(RESULT_HEADER, table_rows(result["records"])),
        "",
        "Noise",
        "-----",
        "",
        textwrap.fill(noise(result["records"]), 88),
        "",
    ]
    notes = result.get("notes", [])
    if notes:
        parts += [*(f"* note: {n}" for n in notes), ""]
    if image:
        parts += [f".. image:: {image}",
                  "   :alt: Left: each workload's time per item relative to in-process plyvel,",
                  "         log scale. Right: random Gets per second against the number of",
                  "         threads sharing one client.", ""]
    parts.append(f"{END}")
    return "\n".join(parts) + "\n"


def marker_at(text: str, marker: str) -> int:
    """Where ``marker`` starts a line of ``text`` (not where prose quotes it); -1 if nowhere."""
    if text.startswith(marker):
        return 0
    at = text.find("\n" + marker)
    return at + 1 if at >= 0 else -1


def write_readme(path: str, result: Dict[str, Any], targets: List[Dict[str, Any]],
                 image: Optional[str] = None) -> None:
    """Put :func:`format_readme` between the BEGIN and END comments of ``path`` (the rest of
    the file is kept); a file without them gets the figures appended, a new file a title."""
    block = format_readme(result, targets, image)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = "==========\nBenchmarks\n==========\n\n"
    start, stop = marker_at(text, BEGIN), marker_at(text, END)
    if start >= 0 and stop > start:
        after = text.find("\n", stop)
        text = text[:start] + block + (text[after + 1:] if after >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, result: Dict[str, Any], targets: List[Dict[str, Any]]) -> None:
    data = {"meta": result["meta"], "notes": result.get("notes", []),
            "records": [r.as_dict() for r in result["records"]], "targets": targets}

    def clean(x: Any) -> Any:  # JSON has no NaN/inf
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(clean(data), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


_COLORS = {"plyvel": "#4c72b0", "pyelevator": "#dd8452", "original": "#8c8c8c",
           "redis": "#c44e52", "zmq-echo": "#55a868", "pyelevator-plain": "#e8b48f"}


def write_png(path: str, result: Dict[str, Any]) -> None:
    """Left: ratio to plyvel per workload (log scale). Right: Gets/s against threads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records: List[Record] = result["records"]
    bar_workloads = []
    for r in records:
        if r.ratio is not None and r.threads in (None, 1) and "threads" not in r.workload \
                and r.workload not in bar_workloads:
            bar_workloads.append(r.workload)
    impls = [i for i in ("pyelevator", "original", "redis", "zmq-echo")
             if any(r.implementation == i and r.ratio is not None for r in records)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, w in enumerate(bar_workloads):
            rec = next((r for r in records if r.workload == w and r.implementation == impl), None)
            if rec is not None and rec.ratio:
                xs.append(i + (j - (len(impls) - 1) / 2) * width)
                ys.append(rec.ratio)
        ax1.bar(xs, ys, width, label=IMPLEMENTATIONS[impl].label, color=_COLORS.get(impl))
    ax1.axhline(1.0, color=_COLORS["plyvel"], linewidth=1, linestyle="--",
                label=IMPLEMENTATIONS["plyvel"].label)
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(bar_workloads)))
    ax1.set_xticklabels(bar_workloads)
    ax1.set_ylabel("time per item / in-process plyvel (log; lower is better)")
    ax1.set_title("Ratio to in-process plyvel")
    ax1.legend(fontsize=7, loc="upper left")
    ax1.grid(axis="y", which="both", alpha=0.3)

    for impl in ("plyvel", "pyelevator", "pyelevator-plain", "original", "redis"):
        pts = sorted((r.threads, r.items_per_s) for r in records
                     if r.implementation == impl and r.threads and "threads" in r.workload
                     and r.workload.startswith("Get"))
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                     label=IMPLEMENTATIONS[impl].label, color=_COLORS.get(impl))
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("threads sharing one client")
    ax2.set_ylabel("random Gets per second (log)")
    ax2.set_title("Thread scaling")
    ax2.legend(fontsize=7)
    ax2.grid(which="both", alpha=0.3)
    meta = result["meta"]
    fig.suptitle(f"pyelevator_pool benchmarks, {meta['date'][:10]}: {meta['machine']}",
                 fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
