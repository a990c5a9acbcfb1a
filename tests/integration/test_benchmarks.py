"""A tiny run of ``python -m benchmarks`` (the ``--smoke`` preset): every workload and
implementation produces a record in results.json, and the chart is written.
No speed is asserted: the benchmarks report speed, tests check that they work."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from paths import ROOT
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.__main__ import build_parser  # noqa: E402
from benchmarks.suite import Options  # noqa: E402

RUN_TIMEOUT = 120  # seconds: a smoke run takes a few
BULK = ("WriteBatch", "MGet", "Range", "Slice", "RangeIter")
FIELDS = ("workload", "implementation", "label", "median_s", "min_s", "max_s", "items_per_s",
          "ratio")


def _run(out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--no-progress", "--out", str(out),
         *extra], cwd=str(ROOT), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "targets:" in proc.stdout and "WriteBatch" in proc.stdout
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One smoke run with the embedded server (and redis when installed)."""
    out = tmp_path_factory.mktemp("bench")
    return out, _run(out)


def _index(data: dict) -> dict:
    return {(r["workload"], r["implementation"]): r for r in data["records"]}


def test_smoke_run_has_a_record_per_workload_and_implementation(embedded):
    _, data = embedded
    recs = _index(data)
    impls = ["plyvel", "pyelevator", "original"]
    if shutil.which("redis-server"):
        impls.append("redis")
    else:
        assert any("redis" in n for n in data["notes"])
    for workload in BULK + ("Get", "Get x1 threads", "Get x4 threads"):
        for impl in impls:
            rec = recs[(workload, impl)]
            assert all(f in rec for f in FIELDS)
            assert rec["min_s"] <= rec["median_s"] <= rec["max_s"]
            assert rec["items_per_s"] > 0
            assert rec["ratio"] is not None and rec["ratio"] > 0
    assert recs[("Get", "zmq-echo")]["p99_s"] >= recs[("Get", "zmq-echo")]["median_s"]
    assert recs[("Get", "plyvel")]["ratio"] == 1.0
    assert recs[("Get x4 threads", "pyelevator")]["threads"] == 4
    assert recs[("checkout+checkin", "pyelevator")]["median_s"] > 0
    assert recs[("checkout+checkin x8 threads", "pyelevator")]["threads"] == 8


def test_smoke_run_evaluates_every_target_and_writes_the_chart(embedded):
    out, data = embedded
    names = [t["target"] for t in data["targets"]]
    assert names == [t.name for t in report.TARGETS]
    for t in data["targets"]:
        if t["target"] == "16-thread Gets":
            continue  # the smoke preset runs 1 and 4 threads only
        assert t["met"] in (True, False) and t["measured"] is not None
    assert data["meta"]["options"]["preset"] == "smoke"
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_run_against_an_existing_server_with_endpoint(server, tmp_path):
    data = _run(tmp_path, "--endpoint", server.endpoint, "--no-redis", "--threads", "2")
    assert server.endpoint in data["meta"]["server"]
    recs = _index(data)
    assert ("Get x2 threads", "pyelevator") in recs
    assert not any(r["implementation"] == "redis" for r in data["records"])
    assert recs[("Range", "pyelevator")]["items"] == Options.smoke().size


def test_thread_counts_are_parsed_and_checked():
    assert build_parser().parse_args(["--threads", "16,1,4"]).threads == (1, 4, 16)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--threads", "0,4"])
    with pytest.raises(ValueError):
        Options.smoke(threads=()).validate()
    with pytest.raises(ValueError):
        Options(size=10, mget_count=11).validate()
