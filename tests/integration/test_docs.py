"""The documentation: every ``>>>`` example of README.rst and docs/*.rst runs as a doctest
against a real server of its file's own, the CLI page's ``$ elevator`` examples run as
commands, and the Sphinx project builds without a warning."""
from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from paths import ROOT
from pyelevator_pool import Elevator, ElevatorPool, WriteBatch
from pyelevator_pool.testing import ServerProcess

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: every file with examples, and the fewest it may hold: a page whose examples vanish
#: (a broken code block, a lost section) fails here instead of passing with nothing run
MIN_EXAMPLES: Dict[str, int] = {
    "README.rst": 39,
    "docs/bulk.rst": 16,
    "docs/client.rst": 59,
    "docs/getting-started.rst": 5,
    "docs/pool.rst": 20,
    "docs/retries.rst": 15,
    "docs/security.rst": 17,
    "docs/server.rst": 13,
    "docs/testing.rst": 4,
}


def _doc_files_with_examples() -> List[str]:
    files = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
    parser = doctest.DocTestParser()
    return [str(p.relative_to(ROOT)) for p in files
            if parser.get_examples(p.read_text(encoding="utf-8"))]


def test_every_file_with_examples_is_run():
    assert sorted(MIN_EXAMPLES) == _doc_files_with_examples()


@pytest.fixture
def doc_server(tmp_path, monkeypatch):
    """A fresh real server, named by ``$ELEVATOR_URL`` (what ``Elevator()`` reads given no
    endpoint), and a scratch directory as the working directory for files examples write."""
    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    srv = ServerProcess(str(tmp_path / "data"))
    srv.start()
    assert srv.endpoint is not None and srv.endpoint.startswith("tcp://")
    monkeypatch.setenv("ELEVATOR_URL", "elevator://" + srv.endpoint[len("tcp://"):])
    monkeypatch.delenv("ELEVATOR_ENDPOINT", raising=False)
    monkeypatch.chdir(tmp_path / "work")
    yield srv
    srv.stop()


def _close_clients(globs: Dict[str, object]) -> None:
    """Close what the examples left open: sockets should not outlive their server."""
    for value in globs.values():
        if isinstance(value, (Elevator, WriteBatch, ElevatorPool)):
            value.close()
    globs.clear()


@pytest.mark.parametrize("name", sorted(MIN_EXAMPLES))
def test_examples_run(name, doc_server):
    path = ROOT / name
    text = path.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(
        text, {"__name__": "__docs__"}, name, str(path), 0)
    report: List[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    try:
        result = runner.run(test, out=report.append, clear_globs=False)
    finally:
        _close_clients(test.globs)
    assert result.attempted >= MIN_EXAMPLES[name], (
        f"{name}: {result.attempted} examples, expected at least {MIN_EXAMPLES[name]}")
    assert result.failed == 0, "".join(report)


# ------------------------------------------------------------------- the CLI page

def _console_examples(text: str) -> List[Tuple[int, str, str]]:
    """``(line, command, expected output)`` of every ``$ `` line of the ``console`` blocks."""
    examples: List[Tuple[int, str, List[str]]] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(".. code-block::"):
            in_block = line.split("::", 1)[1].strip() == "console"
        elif in_block and line and not line.startswith(" "):
            in_block = False  # the block's text ended
        elif in_block and line[4:].startswith("$ "):
            examples.append((number, line[6:], []))
        elif in_block and examples and line.strip():
            examples[-1][2].append(line[4:])
    return [(number, command, "\n".join(output)) for number, command, output in examples]


def test_cli_page_examples_run(doc_server, tmp_path):
    """Each command of docs/cli.rst's console blocks, in order, in one scratch directory,
    exits 0 and prints what the page shows (``...`` matches anything)."""
    examples = _console_examples((ROOT / "docs" / "cli.rst").read_text(encoding="utf-8"))
    assert len(examples) >= 19, examples
    env = dict(os.environ)
    # the console's 'elevator' is this interpreter's
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    checker = doctest.OutputChecker()
    for number, command, expected in examples:
        assert shlex.split(command, comments=True)[0] in ("elevator", "printf", "cat"), command
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 0, f"cli.rst:{number}: {command}\n{proc.stderr}"
        got = proc.stdout.rstrip("\n") + ("\n" if proc.stdout.strip() else "")
        want = expected + ("\n" if expected else "")
        assert checker.check_output(want, got, FLAGS), (
            f"cli.rst:{number}: {command}\nexpected:\n{want}got:\n{got}")


# ---------------------------------------------------------------------- the build

def test_docs_build_without_warnings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    # autodoc found the docstrings (an import failure would leave the page empty)
    assert "ElevatorPool" in api and "RetryPolicy" in api
    # The pages show exactly the examples that run: none comes from elsewhere (a docstring
    # pulled in by autodoc, an included file) without being tested.
    parser = doctest.DocTestParser()
    for page in sorted((tmp_path / "html").glob("*.html")):
        if page.stem in ("genindex", "search", "py-modindex"):
            continue
        shown = page.read_text(encoding="utf-8").count('<span class="gp">&gt;&gt;&gt; </span>')
        source = ROOT / "docs" / (page.stem + ".rst")
        run = len(parser.get_examples(source.read_text(encoding="utf-8")))
        assert shown == run, f"{page.name} shows {shown} examples, {source.name} runs {run}"


@pytest.mark.parametrize("page, source", [
    ("docs/server.rst", "server"), ("docs/cli.rst", "cli")])
def test_every_flag_and_command_is_documented(page, source):
    """The server page names every flag of ``elevator-server``, the CLI page every
    subcommand of ``elevator``: a new one cannot go undocumented."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if source == "server":
        from pyelevator_pool.server.__main__ import build_parser
        names = [o for a in build_parser()._actions for o in a.option_strings
                 if o.startswith("--") and o not in ("--help", "--version")]
    else:
        from pyelevator_pool.cli import build_parser as cli_parser
        sub = next(a for a in cli_parser()._actions if a.dest == "command")
        names = list(sub.choices)
    assert names
    missing = [n for n in names if not re.search(r"``[^`]*" + re.escape(n) + r"\b", text)]
    assert not missing, f"{page} does not mention {missing}"
