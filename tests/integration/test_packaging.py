"""What a user installs: the wheel's contents and metadata, and both commands' --version."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

import pyelevator_pool

from paths import ROOT

BUILD_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
# Not part of the source: left by CI, builds and editable installs.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".ci-venv*", ".ci-sdist", "build", "dist",
                                     "*.egg-info", "__pycache__", ".hypothesis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the source tree (the build writes into its tree)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    # No build isolation and no index: setuptools and wheel come with the test extra.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(base / "out"), str(source)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = list((base / "out").glob("*.whl"))
    assert len(built) == 1, built
    with zipfile.ZipFile(built[0]) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_wheel_holds_the_package_typed_and_nothing_else(wheel):
    names = set(wheel)
    dist_info = f"pyelevator_pool-{pyelevator_pool.__version__}.dist-info/"
    assert "pyelevator_pool/py.typed" in names
    assert {"pyelevator_pool/__init__.py", "pyelevator_pool/cli.py",
            "pyelevator_pool/server/__main__.py", "pyelevator_pool/testing.py"} <= names
    strays = sorted(n for n in names
                    if not (n.startswith("pyelevator_pool/") or n.startswith(dist_info)))
    assert strays == []
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
    assert dist_info + "licenses/LICENSE" in names or dist_info + "LICENSE" in names


def test_wheel_metadata_names_the_version_pythons_and_commands(wheel):
    dist_info = f"pyelevator_pool-{pyelevator_pool.__version__}.dist-info/"
    meta = Parser().parsestr(wheel[dist_info + "METADATA"].decode())
    assert meta["Version"] == pyelevator_pool.__version__
    classifiers = meta.get_all("Classifier")
    for version in SUPPORTED:
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert meta["Requires-Python"] == ">=3.9"
    entry_points = wheel[dist_info + "entry_points.txt"].decode()
    assert "elevator = pyelevator_pool.cli:main" in entry_points
    assert "elevator-server = pyelevator_pool.server.__main__:main" in entry_points


def test_classifiers_match_the_readme_and_ci():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"Python {SUPPORTED[0]} to {SUPPORTED[-1]}" in readme
    assert "for v in " + " ".join(SUPPORTED) + "; do" in ci


@pytest.mark.parametrize("module, prog", [("pyelevator_pool.cli", "elevator"),
                                          ("pyelevator_pool.server", "elevator-server")])
def test_both_commands_print_their_version(module, prog):
    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    assert (proc.returncode, proc.stdout, proc.stderr) == \
        (0, f"{prog} {pyelevator_pool.__version__}\n", "")
