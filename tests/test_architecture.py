"""The import rules of ARCHITECTURE.md, checked by reading the source: the ledger is
Flask-free and upstream-free, the services import no Flask, the identifier rules
import nothing but the standard library, storage knows nothing
of registrations, only the ledger opens write transactions, and only the state
table writes a registration's state."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"


def modules(*names: str) -> list[Path]:
    found = []
    for name in names:
        path = PACKAGE / name
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")])
    return found


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        n for n in imports(path) if any(n == p or n.startswith(p + ".") for p in prefixes)
    )


@pytest.mark.parametrize("path", modules("ledger"), ids=lambda p: p.name)
def test_the_ledger_imports_no_http_upstream_or_sandbox(path):
    assert (
        forbidden(
            path,
            (
                "flask",
                "werkzeug",
                "requests",
                "bridge.http",
                "bridge.views",
                "bridge.reteno",
                "bridge.worker",
                "bridge.sandbox",
                "bridge.runtime",
                "bridge.extension",
                "bridge.schemas",
            ),
        )
        == []
    )


@pytest.mark.parametrize(
    "path",
    modules(
        "statuses",
        "telegram",
        "worker",
        "reteno",
        "replay",
        "watch",
        "retention",
        "heap",
        "support/story",
        "support/overview",
        "support/chart",
    ),
    ids=lambda p: p.name,
)
def test_services_import_no_flask(path):
    assert forbidden(path, ("flask", "werkzeug", "bridge.http", "bridge.views")) == []


def test_the_identifier_rules_stand_alone():
    # domain rules: the schemas, the services and the CLI use them, they use none of them
    assert [
        n
        for n in imports(modules("identifiers")[0])
        if n.split(".")[0] not in ("__future__", "re", "unicodedata", "typing")
    ] == []


@pytest.mark.parametrize("path", modules("db", "storage"), ids=lambda p: p.name)
def test_storage_knows_nothing_of_registrations(path):
    assert forbidden(path, ("bridge.ledger", "bridge.models")) == []


def test_production_modules_reach_the_sandbox_only_through_the_setting():
    for path in modules("."):
        if "sandbox" in path.parts or path.name in ("extension.py", "runtime.py"):
            continue
        allowed = (
            {"bridge.sandbox.cli", "bridge.sandbox.cli.sandbox_command"}
            if path.name == "cli.py"
            else set()
        )  # `flask bridge sandbox` runs it alone
        assert set(forbidden(path, ("bridge.sandbox",))) - allowed == set(), path.name


@pytest.mark.parametrize("path", modules("sandbox/simulator", "sandbox/web"), ids=lambda p: p.name)
def test_the_simulator_knows_no_ledger(path):
    # it runs alone too; a sandbox bridge hands its page the links section (sandbox/links)
    assert forbidden(path, ("bridge.ledger", "bridge.runtime", "bridge.models")) == []


def _calls(path: Path, attribute: str):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attribute
        ):
            yield node


def test_only_the_ledger_opens_write_transactions():
    outside = [
        p for p in modules(".") if "ledger" not in p.parts and p.name not in ("db.py", "storage.py")
    ]
    for path in outside:
        writes = [
            n.lineno
            for n in _calls(path, "write")
            if isinstance(n.func.value, ast.Attribute) and n.func.value.attr == "db"
        ]
        assert writes == [], f"{path.name} opens a write transaction at lines {writes}"


def test_only_the_state_table_writes_state():
    for path in modules("."):
        if path == PACKAGE / "ledger" / "states.py":
            continue
        for node in _calls(path, "values"):
            keys = {kw.arg for kw in node.keywords}
            for arg in node.args:
                if isinstance(arg, ast.Dict):
                    keys.update(k.value for k in arg.keys if isinstance(k, ast.Constant))
            assert "state" not in keys, f"{path.name}:{node.lineno} writes state"


def test_inserts_take_their_state_from_the_state_table():
    # a state written as a constant beside a "state" key is a row's first state decided
    # outside the table (Machine.first)
    for path in modules("."):
        if path == PACKAGE / "ledger" / "states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "state":
                    constant = isinstance(value, ast.Constant) or "State." in ast.unparse(value)
                    assert not constant, f"{path.name}:{node.lineno} writes a state of its own"


def state_table(machine) -> str:
    """``machine``'s table as ARCHITECTURE.md shows it, one row per input."""
    lines = [
        "| input | when | from | to | only rows the claim holds | what follows (done by) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, t in machine.transitions.items():
        sources = ["— (insert)"] * t.insert + [s.value for s in machine.states if s in t.sources]
        upon = "<br>".join(
            f"`{by}`: " + "; ".join(then.what for then in same)
            for by, same in itertools.groupby(t.upon, lambda then: then.by)
        )
        lines.append(
            f"| `{kind}` | {t.when} | {', '.join(sources)} | {t.target.value} | "
            f"{'yes' if t.leased else ''} | {upon} |"
        )
    return "\n".join(lines)


def test_architecture_md_shows_the_state_tables_of_the_module():
    from bridge.ledger.states import MACHINES

    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for machine in MACHINES:
        start = f"<!-- the state table of ledger/states.py: {machine.name} -->\n"
        assert start in text, f"ARCHITECTURE.md has no {start.strip()}"
        shown = text.split(start, 1)[1].split("\n\n", 1)[0]
        assert shown == state_table(machine), (
            f"ARCHITECTURE.md's {machine.name} table, from the module:\n{state_table(machine)}"
        )


def test_each_consequence_names_a_ledger_function():
    import importlib

    from bridge.ledger import Ledger
    from bridge.ledger.states import MACHINES

    for machine in MACHINES:
        for kind, t in machine.transitions.items():
            for then in t.upon:
                module, name = then.by.split(".")
                owner = (
                    Ledger
                    if module == "Ledger"
                    else importlib.import_module(f"bridge.ledger.{module}")
                )
                assert callable(getattr(owner, name, None)), f"{machine.name} {kind}: {then.by}"
