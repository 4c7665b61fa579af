"""The arrows between the packages point one way, read from the source (ast), imports inside
functions included: ``core`` (settings, the calendar) at the bottom; ``connectors`` and
``models`` on it, neither importing the other; ``intake`` (the website's events in, an edge
package that returns audit events instead of writing them) on ``models``; ``flows`` on those;
the ``psync`` CLI on top.
``sandbox`` (the processors' imitation) stands apart: it imports none of the project, and
nothing imports it but the tests and ``psync sandbox``. Within ``psync`` no module imports
one that imports it back (the demo's parts once did)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each package may import besides itself.
ALLOWED = {
    "core": set(),
    "connectors": {"core"},
    "models": {"core"},
    "intake": {"core", "models"},
    "flows": {"core", "connectors", "models", "intake"},
    "psync": {"core", "connectors", "models", "intake", "flows"},
    "sandbox": set(),
}
# The one place the project starts the sandbox in-process: `psync sandbox`.
SANDBOX_IMPORTERS = {("psync.cli", "sandbox")}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """(imported module, enclosing function or "") for every import in the file."""
    found: list[tuple[str, str]] = []
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                found.append((module, function))
            visit(child, function)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def _project_files() -> list[Path]:
    return sorted(path for package in ALLOWED for path in (ROOT / package).rglob("*.py"))


def _arrows() -> list[tuple[str, str, str]]:
    """(importing module, imported module, enclosing function) between project packages."""
    arrows = []
    for path in _project_files():
        source = _module_name(path)
        for target, function in _imports(path):
            if target.split(".")[0] in ALLOWED:
                arrows.append((source, target, function))
    return arrows


def test_the_architecture_covers_every_package():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} <= set(ALLOWED), "a new package needs its place in ALLOWED"


def test_no_arrow_points_up_or_sideways():
    wrong = []
    for source, target, function in _arrows():
        mine, theirs = source.split(".")[0], target.split(".")[0]
        if theirs == mine or theirs in ALLOWED[mine]:
            continue
        if theirs == "sandbox" and (source, function) in SANDBOX_IMPORTERS:
            continue
        wrong.append(f"{source} imports {target}" + (f" (in {function})" if function else ""))
    assert wrong == []


def test_psync_modules_import_no_module_that_imports_them_back():
    graph: dict[str, set[str]] = {}
    for source, target, _ in _arrows():
        if source.startswith("psync") and target.startswith("psync.") and target != source:
            graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    circles = sorted({f"{a} <-> {b}" for a, targets in graph.items() for b in targets if reaches(b, a)})
    assert circles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from psync.settings import get_settings\n", "psync.settings"),
        ("def f():\n    import sandbox.app\n", "sandbox.app"),
    ],
)
def test_the_reader_sees_module_level_and_function_level_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [module for module, _ in _imports(path, tmp_path)] == [expected]


def test_intake_writes_no_audit_row():
    """Flows are the one audit writer: intake returns its audit events to the caller."""
    writers = {"models.audit.append", "models.audit.insert_many", "flows.common.write_audit"}
    found = []
    for path in sorted((ROOT / "intake").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in writers]
    assert found == []
