"""The first-party import graph: no cycles, no imports hidden inside functions.

Reads the source with :mod:`ast` (nothing is imported).  An edge ``a -> b`` is a
module-level ``import b`` / ``from b import x`` in ``a`` (``from b import c`` where
``c`` is a submodule is an edge to ``b.c``); imports under ``if TYPE_CHECKING:``
do not run and are not edges.  A first-party import inside a function is allowed
only where it defers a heavy optional dependency, marked ``# deferred: <reason>``
on the import line or the line above it.

Run alone: ``python -m pytest tests/test_import_graph.py -q``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mdcatch", "pipelines", "livestream")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _first_party(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _first_party(alias.name):
                yield alias.name
        return
    if node.level or node.module is None or not _first_party(node.module):
        return
    for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        yield submodule if submodule in MODULES else node.module


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (not in functions, classes'
    methods, or ``if TYPE_CHECKING:``)."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        statement = pending.pop()
        if isinstance(statement, ast.Import | ast.ImportFrom):
            yield statement
        elif isinstance(statement, ast.If) and not _is_type_checking(statement):
            pending.extend(statement.body + statement.orelse)
        elif isinstance(statement, ast.Try):
            pending.extend(statement.body + statement.orelse + statement.finalbody)
            for handler in statement.handlers:
                pending.extend(handler.body)
        elif isinstance(statement, ast.With):
            pending.extend(statement.body)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {
            target
            for node in _module_level_imports(tree)
            for target in _targets(node)
            if target in MODULES and target != name
        }
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_strongly_connected_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_first_party_imports_have_no_cycle() -> None:
    cycles = strongly_connected(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def _inner_imports(path: Path) -> Iterator[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if not any(True for _ in _targets(node)):
                continue
            here = lines[node.lineno - 1]
            above = lines[node.lineno - 2] if node.lineno > 1 else ""
            if "# deferred:" in here or "# deferred:" in above:
                continue
            yield node.lineno, here.strip()


def test_no_first_party_import_inside_a_function() -> None:
    found = sorted(
        {
            f"{path.relative_to(REPO)}:{line}: {text}"
            for path in MODULES.values()
            for line, text in _inner_imports(path)
        }
    )
    assert not found, "imports inside functions (add '# deferred: <reason>' only " + (
        "for a heavy optional dependency):\n" + "\n".join(found)
    )
