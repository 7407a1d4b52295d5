"""Run, for one mutant, only the tests of a module's selection that execute the mutated
code: the test command of a module with a table of its own in ``cosmic-ray.toml``.

    python mutation/covering.py --map MAP.json PYTEST-ARGS...   # the test command
    python mutation/covering.py --build MAP.json MODULE PYTEST-ARGS...

``--build`` runs the selection (``PYTEST-ARGS``, as pytest takes them) once under
coverage with a context per test (pytest-cov's ``--cov-context=test``) and writes
``MAP``: the module's source as it was, and for each of its lines the node ids of the
tests that executed it ("" for a line executed outside any test: at import or
collection). ``mutation/run.py`` builds it when a session starts and before
``--survivors``.

``--map`` is what cosmic-ray runs for each mutant, while the module is rewritten in
place. The mutated lines are those where the module differs from the source in
``MAP``; each is widened to its whole statement (a clause header for ``if``, ``def``
and the like). Then:

- a module that no longer compiles with warnings taken for errors, as the suite's
  ``filterwarnings`` takes them (``x is "literal"``), is killed: no test imports it;

- a line executed outside any test (the module's import: a default argument, a
  decorator, a constant) runs the whole selection; so does a line in the body of a
  function whose results are cached (``@cache``, ``@lru_cache``): it runs for the first
  test that asks, and every later test gets its result without running it;
- otherwise the tests that executed any of those lines run, in the selection's order,
  with the selection's options (``-x``: the first failure ends the run);
- no test executed them: the mutant survives (exit 0, never pytest's "no tests
  collected", which cosmic-ray would count as a kill); so does one whose pytest run
  ends in a usage or internal error, or collects nothing (not a failing test). Code
  run only in a subprocess is invisible to coverage, so its mutants survive here and
  are judged by hand, never counted as killed.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHOLE = ""  # the context of code run outside any test


def build(map_path: Path, module: str, pytest_args: list[str]) -> int:
    """Run the selection under coverage and write the map; pytest's exit code."""
    from coverage import CoverageData

    source = (ROOT / module).read_text()
    with tempfile.TemporaryDirectory() as scratch:
        data_file = Path(scratch) / ".coverage"
        env = {**os.environ, "COVERAGE_FILE": str(data_file)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *pytest_args,
                "-p",
                "pytest_cov",
                f"--cov={Path(module).parent}",
                "--cov-context=test",
                "--cov-report=",
            ],
            cwd=ROOT,
            env=env,
        )
        if done.returncode != 0:
            print(
                f"{module}: its selection fails without a mutant (exit "
                f"{done.returncode}); no map written",
                file=sys.stderr,
            )
            return done.returncode or 1
        data = CoverageData(basename=str(data_file))
        data.read()
        measured = {Path(f).resolve(): f for f in data.measured_files()}
        by_line = data.contexts_by_lineno(measured[(ROOT / module).resolve()])
    lines = {
        line: sorted({c.rsplit("|", 1)[0] for c in contexts}) for line, contexts in by_line.items()
    }
    map_path.write_text(
        json.dumps(
            {
                "module": module,
                "source": source,
                "lines": {str(k): v for k, v in sorted(lines.items())},
            }
        )
    )
    tests = {t for ts in lines.values() for t in ts if t != WHOLE}
    print(f"{map_path}: {len(lines)} lines of {module} executed, by {len(tests)} tests")
    return 0


def statement_lines(tree: ast.Module, line: int) -> set[int]:
    """The lines of the innermost statement holding ``line`` (of a compound statement,
    its header, up to its first body statement); ``{line}`` outside any statement."""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= line <= node.end_lineno:
            end = node.end_lineno
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                end = body[0].lineno - 1
                if line > end:  # inside the body: an inner statement holds it
                    continue
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            if best is None or end - first < best[1] - best[0]:
                best = (first, end)
    return set(range(best[0], best[1] + 1)) if best else {line}


def cached_lines(tree: ast.Module) -> set[int]:
    """The lines of the functions decorated ``@cache`` or ``@lru_cache`` (either name,
    bare, called or as ``functools.``'s attribute)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = getattr(target, "attr", getattr(target, "id", None))
                if name in ("cache", "lru_cache"):
                    lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def mutated_lines(before: str, after: str) -> set[int]:
    """The lines (numbered as in ``before``) that ``after`` changes."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            changed |= set(range(i1 + 1, max(i2, i1 + 1) + 1))
    return changed


def covering(test_map: dict) -> tuple[set[str] | None, str]:
    """(the tests to run, None for all of them; why) for the module as it is now."""
    before = test_map["source"]
    after = (ROOT / test_map["module"]).read_text()
    with warnings.catch_warnings():  # as the suite's filterwarnings = ["error"] does
        warnings.simplefilter("error")
        try:
            compile(after, test_map["module"], "exec")
        except (SyntaxError, SyntaxWarning) as error:
            return set(), f"the module no longer compiles ({error}): killed"
    changed = mutated_lines(before, after)
    if not changed:
        return None, "the module is as mapped: the whole selection"
    tree = ast.parse(before)
    lines = set().union(*(statement_lines(tree, line) for line in changed))
    cached = cached_lines(tree)
    tests: set[str] = set()
    for line in sorted(lines):
        if line in cached:
            return None, f"line {line} is in a cached function: the whole selection"
        ran = test_map["lines"].get(str(line), [])
        if WHOLE in ran:
            return None, f"line {line} runs at import: the whole selection"
        tests.update(ran)
    where = ", ".join(map(str, sorted(lines)))
    return tests, f"lines {where}: {len(tests)} covering tests"


class Keep:
    """A pytest plugin keeping only the collected tests of ``ids``, in their order."""

    def __init__(self, ids: set[str]):
        self.ids = ids

    def pytest_collection_modifyitems(self, config, items):
        kept = [item for item in items if item.nodeid in self.ids]
        if not kept:  # the map names no test collected now: never a silent kill
            print("covering.py: no collected test matches the map; the whole selection")
            return
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in self.ids])
        items[:] = kept


def main(argv: list[str]) -> int:
    if argv[:1] == ["--build"]:
        return build(Path(argv[1]), argv[2], argv[3:])
    if argv[:1] != ["--map"]:
        raise SystemExit(__doc__)
    test_map = json.loads(Path(argv[1]).read_text())
    tests, why = covering(test_map)
    print(f"covering.py: {why}", flush=True)
    if why.endswith(": killed"):
        return 1
    if tests is not None and not tests:
        print("covering.py: no test executes the mutated code: survived")
        return 0
    import pytest

    sys.path.insert(0, str(ROOT))  # this tree's code, as ``python -m pytest`` from it
    args = argv[2:]
    if tests is not None:  # collect only the files holding those tests
        files = {test.split("::", 1)[0] for test in tests}
        args = [
            a
            for i, a in enumerate(args)
            if not a.startswith("tests/") or a in files or args[i - 1] == "--deselect"
        ]
    code = int(pytest.main(args, plugins=[Keep(tests)] if tests is not None else []))
    if code in (
        pytest.ExitCode.INTERNAL_ERROR,
        pytest.ExitCode.USAGE_ERROR,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):  # not the mutant's doing: never a kill
        print(
            f"covering.py: pytest exit {code} ({pytest.ExitCode(code).name}), not a "
            "failing test: counted as survived, to be looked at"
        )
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
