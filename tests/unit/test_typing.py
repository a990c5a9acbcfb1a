"""The package type-checks: mypy with the project's configuration (setup.cfg [mypy]); and a
user's code type-checks against it under ``mypy --strict``, with precise types
(tests/typecheck: a program from the README, the revealed types, wrong uses refused)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import Dict, List, Set, Tuple, get_type_hints

import pytest

from paths import ROOT
from pyelevator_pool import ElevatorPool, PoolStats

TYPECHECK = ROOT / "tests" / "typecheck"
# "file:line: note|error: message  [code]"
_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>note|error): (?P<msg>.*?)"
                   r"(?:  \[(?P<code>[a-z-]+)\])?$")


def test_package_is_mypy_clean(tmp_path):
    # A private cache: a stale or concurrently written shared one can hide or invent errors.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "pyelevator_pool", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def user_mypy(tmp_path_factory):
    """Runs ``mypy --strict`` on a tests/typecheck file as a user would: their own (empty)
    configuration, errors reported in their file only (an installed package's are not).
    One private cache for the module: the later runs reuse the package's analysis."""
    tmp = tmp_path_factory.mktemp("user-mypy")
    config = tmp / "mypy.ini"
    config.write_text("[mypy]\n")

    def run(name: str) -> Tuple[subprocess.CompletedProcess, List[re.Match]]:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
             "--config-file", str(config), "--cache-dir", str(tmp / "cache"),
             "--no-error-summary", "--hide-error-context", "--no-pretty",
             str(TYPECHECK / name)],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert not proc.stderr, proc.stderr
        lines = [_LINE.match(line) for line in proc.stdout.splitlines()]
        assert all(lines), f"unparsed mypy output:\n{proc.stdout}"
        return proc, lines
    return run


def _plain(revealed: str) -> str:
    """A revealed type as newer mypy versions print it for newer targets (3.9's: Union)."""
    return re.sub(r"Union\[([\w.]+), None\]", r"\1 | None", revealed.replace("builtins.", ""))


def _expected(name: str, marker: str) -> Dict[int, str]:
    """line number -> what follows ``# marker:`` on that line of a tests/typecheck file."""
    out = {}
    for number, text in enumerate((TYPECHECK / name).read_text().splitlines(), 1):
        if f"# {marker}: " in text:
            out[number] = text.split(f"# {marker}: ", 1)[1].strip()
    assert out, f"{name} has no '# {marker}:' lines"
    return out


def test_users_code_from_the_readme_passes_mypy_strict(user_mypy):
    proc, _ = user_mypy("user_code.py")
    assert proc.returncode == 0, f"mypy --strict exited {proc.returncode}:\n{proc.stdout}"


def test_documented_calls_have_precise_types(user_mypy):
    proc, lines = user_mypy("reveal.py")
    assert proc.returncode == 0, proc.stdout
    revealed = {}
    for m in lines:
        assert m["kind"] == "note" and m["msg"].startswith("Revealed type is "), m.group(0)
        revealed[int(m["line"])] = _plain(m["msg"][len('Revealed type is "'):-1])
    assert revealed == _expected("reveal.py", "revealed")


def test_wrong_uses_are_refused_with_the_right_error(user_mypy):
    proc, lines = user_mypy("wrong.py")
    assert proc.returncode == 1, proc.stdout
    errors: Dict[int, Set[str]] = {}
    for m in lines:
        if m["kind"] == "error":
            errors.setdefault(int(m["line"]), set()).add(m["code"])
    assert errors == {line: {code} for line, code in _expected("wrong.py", "error").items()}, \
        proc.stdout


def test_pool_stats_typeddict_lists_exactly_what_stats_returns():
    pool = ElevatorPool("127.0.0.1:1")  # makes no socket until a call
    try:
        stats = pool.stats()
    finally:
        pool.close()
    hints = get_type_hints(PoolStats)
    assert set(stats) == set(hints)
    assert PoolStats.__required_keys__ == frozenset(hints)
    wrong = {k: type(v).__name__ for k, v in stats.items()
             if type(v) is not hints[k] and not (hints[k] is float and type(v) is int)}
    assert not wrong, f"values not of their declared type: {wrong}"


def _functions(path) -> Dict[str, List[ast.FunctionDef]]:
    """qualified name -> its definitions in ``path`` (the overloads, then the implementation)."""
    out: Dict[str, List[ast.FunctionDef]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef):
                out.setdefault(prefix + child.name, []).append(child)
    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return out


def _params(f: ast.FunctionDef) -> List[str]:
    a = f.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs] \
        + ([f"**{a.kwarg.arg}"] if a.kwarg is not None else [])


@pytest.mark.parametrize("module", ["client.py", "bulk.py"])
def test_overloads_take_every_parameter_of_their_implementation(module):
    # A parameter added to an implementation and not to its overloads is invisible to a
    # checker (Elevator's would fall into **pool_options as Any): mypy does not say so.
    overloaded = {name: defs for name, defs in _functions(ROOT / "pyelevator_pool" / module).items()
                  if len(defs) > 1}
    assert overloaded
    for name, defs in overloaded.items():
        *overloads, implementation = defs
        for number, overload in enumerate(overloads, 1):
            # (an overload may name more: what the implementation takes as **options)
            left_out = [p for p in _params(implementation) if p not in _params(overload)]
            assert not left_out, f"{module}: overload {number} of {name} lacks {left_out}"


def test_no_method_of_elevator_returns_a_bare_elevator():
    # A bare Elevator is Elevator[bytes]: a method returning the client itself must say
    # Elevator[Out], or a decode_responses client would turn into a bytes one.
    functions = _functions(ROOT / "pyelevator_pool" / "client.py")
    bare = [name for name, defs in functions.items() if name.startswith("Elevator.")
            for f in defs if f.returns is not None
            and ast.unparse(f.returns).strip("'\"") == "Elevator"]
    assert not bare, f"returns a bare Elevator (write Elevator[Out]): {bare}"
