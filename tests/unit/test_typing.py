"""The package type-checks: mypy with the project's configuration (setup.cfg [mypy])."""
from __future__ import annotations

import subprocess
import sys

from paths import ROOT


def test_package_is_mypy_clean(tmp_path):
    # A private cache: a stale or concurrently written shared one can hide or invent errors.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "pyelevator_pool", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
