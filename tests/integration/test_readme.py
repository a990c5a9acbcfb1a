"""The README is what a new user reads first: it must render, and its test command
must be the one CI runs."""
from __future__ import annotations

import docutils.core

from paths import ROOT
TEST_COMMAND = 'pip install -e ".[server,test]" && pytest'


def test_readme_renders_without_warnings():
    source = (ROOT / "README.rst").read_text(encoding="utf-8")
    # halt_level 2: any warning (a malformed table, a broken reference) raises.
    docutils.core.publish_doctree(source, settings_overrides={
        "halt_level": 2, "report_level": 2, "warning_stream": False})


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in ci


def test_readme_main_job_command_names_the_benchmark_suite():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert 'pip install -e ".[server,bench]" && python -m benchmarks --quick' in readme
    assert (ROOT / "benchmarks" / "__main__.py").is_file()


def test_readme_is_short_and_links_the_contract_and_the_figures():
    """Measured results live in benchmarks/README.rst (generated), the wire contract in
    docs/protocol.rst; the README only points at them."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 270
    for target in ("benchmarks/README.rst", "docs/protocol.rst"):
        assert f"<{target}>`_" in readme
        assert (ROOT / target).is_file()
    assert "tests/integration/test_docker.py" in readme
