"""A tiny run of ``python -m benchmarks`` (the ``--smoke`` preset): every workload and
implementation produces a record in results.json, the chart is written, and
``--write-readme`` puts the figures (date, commit, machine, targets, results, noise) into
the generated section of a copy of benchmarks/README.rst, keeping the rest.
No speed is asserted: the benchmarks report speed, tests check that they work."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import docutils.core
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from paths import ROOT
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import report, timing  # noqa: E402
from benchmarks.__main__ import build_parser  # noqa: E402
from benchmarks.suite import Options  # noqa: E402

RUN_TIMEOUT = 120  # seconds: a smoke run takes a few
BULK = ("WriteBatch", "bulk load", "MGet", "Range", "Slice", "RangeIter")
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
    """One smoke run with the embedded server (and redis when installed), writing the
    figures into a copy of benchmarks/README.rst."""
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.rst"
    shutil.copy(report.README, readme)
    return out, _run(out, "--write-readme", str(readme))


def _markers(text: str) -> tuple:
    """How many lines start with the BEGIN and the END comment."""
    lines = text.splitlines()
    return (sum(x.startswith(report.BEGIN) for x in lines),
            sum(x.startswith(report.END) for x in lines))


def _renders(text: str) -> None:
    # halt_level 2: any warning (a malformed table, a broken reference) raises.
    docutils.core.publish_doctree(text, settings_overrides={
        "halt_level": 2, "report_level": 2, "warning_stream": False})


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
    for workload in ("Get x1 threads", "Get x4 threads", "Put x4 threads"):
        assert recs[(workload, "pyelevator-plain")]["items_per_s"] > 0  # coalesce=False
    assert recs[("checkout+checkin", "pyelevator")]["median_s"] > 0
    for impl in ("pyelevator", "python-router"):  # pipelined GETs: every one answered
        assert recs[("server GET capacity", impl)]["items_per_s"] > 0
    assert recs[("checkout+checkin x8 threads", "pyelevator")]["threads"] == 8


def test_smoke_run_evaluates_every_target_and_writes_the_chart(embedded):
    out, data = embedded
    names = [t["target"] for t in data["targets"]]
    assert names == [t.name for t in report.TARGETS]
    for t in data["targets"]:
        if t["workload"] in ("Get x16 threads", "Get x64 threads", "Put x16 threads"):
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


def test_write_readme_replaces_only_the_generated_figures(embedded):
    out, data = embedded
    text = (out / "README.rst").read_text(encoding="utf-8")
    original = Path(report.README).read_text(encoding="utf-8")
    before = original[:report.marker_at(original, report.BEGIN)]
    after = original[report.marker_at(original, report.END):].split("\n", 1)[1]
    assert text.startswith(before) and text.endswith(after)
    figures = text[report.marker_at(text, report.BEGIN):report.marker_at(text, report.END)]
    meta = data["meta"]
    for field in ("date", "commit", "machine", "os", "python", "command", "preset"):
        assert f"\n:{field}: " in figures
    assert meta["commit"] in figures and meta["cpus"] in figures
    assert "--smoke" in figures
    for section in ("Figures\n=======", "Targets\n-------", "Results\n-------",
                    "Noise\n-----"):
        assert section in figures
    assert "bulk load" in figures and "x redis" in figures and "spread" in figures
    assert (out / "results" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results" / "results.json").read_text())["records"]
    _renders(text)


def test_write_readme_makes_a_new_file_and_appends_to_one_without_markers(embedded, tmp_path):
    from benchmarks.suite import Record
    _, data = embedded
    records = [Record(**{k: v for k, v in r.items()}) for r in data["records"]]
    result = {"records": records, "notes": data["notes"], "meta": data["meta"]}
    new = tmp_path / "new.rst"
    report.write_readme(str(new), result, data["targets"])
    plain = tmp_path / "plain.rst"
    plain.write_text("Title\n=====\n\nText.\n", encoding="utf-8")
    report.write_readme(str(plain), result, data["targets"])
    report.write_readme(str(plain), result, data["targets"])  # rewritten, not appended twice
    for path in (new, plain):
        text = path.read_text(encoding="utf-8")
        assert _markers(text) == (1, 1)
        _renders(text)
    assert plain.read_text(encoding="utf-8").startswith("Title\n=====\n\nText.\n")


def test_the_committed_benchmarks_readme_renders_and_has_the_figures_markers():
    text = Path(report.README).read_text(encoding="utf-8")
    assert _markers(text) == (1, 1)
    _renders(text)


def test_timing_helpers():
    assert timing.percentile([], 50) != timing.percentile([], 50)  # nan
    assert timing.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert timing.spread([1.0]) is None
    assert timing.spread([1.0, 2.0, 3.0]) == 1.0
    assert timing.rotated([1, 2, 3], 4) == [2, 3, 1]
    calls = []
    times = timing.interleaved({"a": lambda: calls.append("a") or 1.0,
                                "b": lambda: calls.append("b") or 2.0}, 2)
    assert times == {"a": [1.0, 1.0], "b": [2.0, 2.0]} and calls == ["a", "b", "b", "a"]
    assert timing.code_version()  # a commit here, "unknown ..." outside git
    assert set(timing.machine()) == {"cpus", "cpu_model", "python", "os"}
