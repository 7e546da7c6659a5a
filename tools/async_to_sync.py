#!/usr/bin/env python
"""Generate turnstore's sync API from its asyncio source.

The asyncio modules are the source of truth; each one listed in ``MODULES`` gets a sync
twin under ``src/turnstore/sync/``, written by rewriting its syntax tree:

- ``async def`` -> ``def``, ``await x`` -> ``x``, ``async with`` / ``async for`` -> ``with`` /
  ``for``, ``__aenter__`` / ``__aexit__`` -> ``__enter__`` / ``__exit__``;
- the names of ``NAMES`` (``AsyncConnection`` -> ``Connection``, ``AsyncConnectionPool`` ->
  ``ConnectionPool``, ``AbstractAsyncContextManager`` -> ``AbstractContextManager``...),
  ``Awaitable[T]`` -> ``T``, and ``asyncio.Lock`` / ``asyncio.Event`` / ``asyncio.sleep`` /
  ``asyncio.TimeoutError`` -> ``threading.Lock`` / ``threading.Event`` / ``time.sleep`` /
  ``TimeoutError``; any other ``asyncio`` name is refused (the source uses
  ``turnstore._compat_async`` for tasks and waits, whose twin is ``turnstore._compat_sync``);
- imports of a generated module -> its twin (``turnstore.postgres.store`` ->
  ``turnstore.sync.postgres.store``); every other import is kept;
- in the conformance suite, ``@pytest.mark.asyncio`` is dropped and the ``turnstore_backend``
  fixture becomes ``turnstore_sync_backend``;
- names a module lists as *shared* (pure definitions: outcome classes, SQL text, helpers)
  are not copied: the twin imports them from the asyncio module, so both APIs hand out
  the very same classes;
- two markers in the source, as a comment on a statement's first line:
  ``# sync: <statement>`` replaces the statement in the twin, ``# async-only`` drops it.

The result is cleaned by ``ruff check --fix`` (imports: sorted, unused ones dropped) and
``ruff format``, and starts with a line saying it is generated. Run it after changing an
asyncio module; ``--check`` (run by CI and by tests/unit/test_generated_current.py) writes
nothing and fails when a twin differs from what the generator makes, or when a generated
file has no source any more.

    python tools/async_to_sync.py            # regenerate every twin
    python tools/async_to_sync.py --check    # fail if any twin is stale or edited
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SYNC_DIR = SRC / "turnstore" / "sync"


@dataclass(frozen=True)
class Module:
    """One asyncio module (a path under ``src/turnstore``) and what its twin shares."""

    source: str
    shared: tuple[str, ...] = ()
    #: A module of the conformance suite (pytest markers and fixtures are rewritten).
    tests: bool = False

    @property
    def target(self) -> str:
        return f"sync/{self.source}"


MODULES: tuple[Module, ...] = (
    Module("repository.py", shared=("RunnerT", "RunnerT_contra")),
    Module("election.py"),
    Module("keepalive.py"),
    Module(
        "lifecycle.py",
        shared=("_START_ATTEMPTS", "_WHOLE_CHAT"),
    ),
    Module("watchdog.py", shared=("SweepReport", "WatchdogMetrics")),
    Module(
        "retention.py",
        shared=("DEFAULT_BATCH_SIZE", "Progress", "RetentionReport", "_older_than_secs"),
    ),
    Module("postgres/__init__.py"),
    Module(
        "postgres/election.py",
        shared=(
            "_APPLICATION_NAME",
            "LEADER_CONNECTION_DEFAULTS",
            "DEFAULT_LEADER_CHECK_TIMEOUT_SECS",
            "advisory_lock_key",
            "leader_connection_kwargs",
            "_NoAnswer",
        ),
    ),
    Module(
        "postgres/migrations.py",
        shared=(
            "_MIGRATION_NAME",
            "Migration",
            "SchemaStatus",
            "migration_files",
            "_version_table",
            "schema_sql",
            "_compare",
        ),
    ),
    Module(
        "postgres/repository.py",
        shared=(
            "_STATE_INDEX",
            "_REQUESTER_INDEX",
            "_STATES",
            "_REQUESTERS",
            "_make_turn",
            "_turn_rows",
        ),
    ),
    Module("postgres/checkout.py"),
    Module("postgres/store.py"),
    Module("memory/__init__.py"),
    Module("memory/connection.py"),
    Module("memory/database.py", shared=("_Key", "_latest_key", "_orphan_key")),
    Module(
        "memory/repository.py",
        shared=(
            "_T",
            "_CREATE_FIELDS",
            "_INSERT_TEMPLATE",
            "_evolve",
            "_copy",
            "_out",
            "_inserted_turn",
            "_keep_unless_given",
            "_Predicate",
            "_Change",
            "_ignoring_time",
            "_any_row",
        ),
    ),
    Module("memory/store.py"),
    Module(
        "testing/backends.py",
        shared=("CLOCK_SCHEMA", "_INSTALL_CLOCK", "_SET_SEARCH_PATH", "_SET_CLOCK"),
    ),
    Module("testing/conformance/__init__.py", tests=True),
    Module(
        "testing/conformance/_support.py",
        shared=(
            "CONCURRENCY",
            "HANG_TIMEOUT_SECS",
            "BLOCK_PROBE_SECS",
            "TIMEOUT_SECS",
            "STALE_SECS",
            "TICK",
            "SET_INSTANT",
            "ALLOW",
            "_T",
            "Planted",
            "ordered_ids",
            "make_params",
            "complete_params",
            "terminal_params",
            "preflight_params",
            "unchanged",
        ),
        tests=True,
    ),
    Module("testing/conformance/concurrency.py", tests=True),
    Module("testing/conformance/create.py", tests=True),
    Module("testing/conformance/locking.py", tests=True),
    Module("testing/conformance/lookups.py", tests=True),
    Module("testing/conformance/orphans.py", tests=True),
    Module("testing/conformance/reads.py", tests=True),
    Module("testing/conformance/retention.py", tests=True),
    Module("testing/conformance/scope.py", tests=True),
    Module("testing/conformance/tenants.py", tests=True),
    Module("testing/conformance/timestamps.py", tests=True),
    Module("testing/conformance/touches.py", tests=True),
    Module("testing/conformance/transactions.py", tests=True),
    Module("testing/conformance/writes.py", tests=True),
)

#: Names renamed wherever they appear (as a name, an attribute or an imported name).
NAMES = {
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncCursor": "Cursor",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "asynccontextmanager": "contextmanager",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aclose": "close",
}

#: ``asyncio.<name>`` -> (module or ``None`` for a builtin, name).
ASYNCIO = {
    "Lock": ("threading", "Lock"),
    "Event": ("threading", "Event"),
    "sleep": ("time", "sleep"),
    "TimeoutError": (None, "TimeoutError"),
}

#: Names of the conformance suite's fixtures and their sync twins.
FIXTURES = {"turnstore_backend": "turnstore_sync_backend"}

#: Wrappers unwrapped in annotations: ``Awaitable[T]`` -> ``T``.
UNWRAP = {"Awaitable"}

HEADER = (
    "# WARNING: this file is generated from src/turnstore/{source} by "
    "tools/async_to_sync.py; do not edit.\n"
)

_SYNC_MARKER = re.compile(r"#\s*sync:\s*(?P<code>.+?)\s*$")
_ASYNC_ONLY_MARKER = re.compile(r"#\s*async-only\b")


class GenerationError(Exception):
    """The source uses something the generator cannot translate."""


def _dotted(source: str) -> str:
    parts = ["turnstore", *source.removesuffix(".py").split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


#: Dotted asyncio module -> dotted sync module.
MODULE_MAP = {_dotted(m.source): _dotted(m.target) for m in MODULES}
MODULE_MAP["turnstore._compat_async"] = "turnstore._compat_sync"


def _markers(text: str) -> dict[int, str | None]:
    """Line number -> replacement code (``# sync: ...``) or ``None`` (``# async-only``)."""
    found: dict[int, str | None] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type != tokenize.COMMENT:
            continue
        if match := _SYNC_MARKER.match(tok.string):
            found[tok.start[0]] = match.group("code")
        elif _ASYNC_ONLY_MARKER.match(tok.string):
            found[tok.start[0]] = None
    return found


def _rewrite_text(text: str) -> str:
    """Docstrings and string annotations: the renamed names, and no ``await``/``async``."""
    for old, new in NAMES.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    text = re.sub(r"``async (with|for) ", r"``\1 ", text)
    text = re.sub(r"``await ", "``", text)
    return text


class _ToSync(ast.NodeTransformer):
    def __init__(self, module: Module, markers: dict[int, str | None]) -> None:
        self.module = module
        self.markers = markers
        self.used_markers: set[int] = set()

    # -- statements and markers

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        result: list[ast.stmt] = []
        for index, stmt in enumerate(body):
            if index == 0 and _is_docstring(stmt):
                assert isinstance(stmt, ast.Expr)
                assert isinstance(stmt.value, ast.Constant)
                stmt.value.value = _rewrite_doc(stmt.value.value)
                result.append(stmt)
                continue
            line = stmt.lineno
            if line in self.markers:
                self.used_markers.add(line)
                code = self.markers[line]
                if code is None:
                    continue
                result.extend(ast.parse(code).body)
                continue
            new = self.visit(stmt)
            if new is None:
                continue
            result.extend(new if isinstance(new, list) else [new])
        return result or [ast.Pass()]

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if _is_statements(body):
                setattr(node, field, self._statements(body))
        for field, value in ast.iter_fields(node):
            if field in ("body", "orelse", "finalbody") and _is_statements(value):
                continue
            if isinstance(value, list):
                new_list = []
                for item in value:
                    if isinstance(item, ast.AST):
                        new = self.visit(item)
                        if new is None:
                            continue
                        if isinstance(new, list):
                            new_list.extend(new)
                        else:
                            new_list.append(new)
                    else:
                        new_list.append(item)
                setattr(node, field, new_list)
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node

    # -- async syntax

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        fields = {f: getattr(node, f) for f in node._fields}
        new = ast.FunctionDef(**fields)
        ast.copy_location(new, node)
        return self.visit_FunctionDef(new)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = NAMES.get(node.name, node.name)
        node.decorator_list = [d for d in node.decorator_list if not _is_asyncio_mark(d)]
        if self.module.tests:
            for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                arg.arg = FIXTURES.get(arg.arg, arg.arg)
        return self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [d for d in node.decorator_list if not _is_asyncio_mark(d)]
        return self.generic_visit(node)

    def visit_Await(self, node: ast.Await) -> ast.AST:
        return self.visit(node.value)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        new = ast.With(items=node.items, body=node.body, type_comment=None)
        return self.generic_visit(ast.copy_location(new, node))

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        new = ast.For(
            target=node.target,
            iter=node.iter,
            body=node.body,
            orelse=node.orelse,
            type_comment=None,
        )
        return self.generic_visit(ast.copy_location(new, node))

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node.is_async = 0
        return self.generic_visit(node)

    # -- names

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = NAMES.get(node.id, node.id)
        if self.module.tests:
            node.id = FIXTURES.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == "asyncio":
            if node.attr not in ASYNCIO:
                raise GenerationError(
                    f"{self.module.source}:{node.lineno}: asyncio.{node.attr} has no sync "
                    "twin: use turnstore._compat_async"
                )
            module, name = ASYNCIO[node.attr]
            if module is None:
                return ast.copy_location(ast.Name(id=name, ctx=node.ctx), node)
            node.value.id, node.attr = module, name
            return node
        node.attr = NAMES.get(node.attr, node.attr)
        return self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        base = node.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if name in UNWRAP:
            return self.visit(node.slice)
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            node.value = _rewrite_text(node.value)
        return node

    # -- imports

    def visit_Import(self, node: ast.Import) -> ast.AST | list[ast.stmt]:
        names: list[ast.alias] = []
        for alias in node.names:
            if alias.name == "asyncio":
                names += [ast.alias(name="threading"), ast.alias(name="time")]
            else:
                names.append(ast.alias(MODULE_MAP.get(alias.name, alias.name), alias.asname))
        node.names = names
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | list[ast.stmt]:
        module = node.module or ""
        renamed = [ast.alias(NAMES.get(a.name, a.name), a.asname) for a in node.names]
        if module not in MODULE_MAP:
            node.names = renamed
            return node
        # ``from turnstore.postgres import statements``: a submodule with no twin stays.
        kept = [a for a in renamed if _is_plain_module(f"{module}.{a.name}")]
        moved = [a for a in renamed if a not in kept]
        result: list[ast.stmt] = []
        if kept:
            result.append(ast.ImportFrom(module=module, names=kept, level=0))
        if moved:
            result.append(ast.ImportFrom(module=MODULE_MAP[module], names=moved, level=0))
        return result


def _is_statements(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], ast.stmt)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _rewrite_doc(text: str) -> str:
    """A docstring: ``_rewrite_text``, and the generated modules named by their twins."""
    text = _rewrite_text(text)
    for old in sorted(MODULE_MAP, key=len, reverse=True):
        if old.startswith("turnstore._compat"):
            continue
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w]|\.\w)", MODULE_MAP[old], text)
    return text


def _is_asyncio_mark(node: ast.expr) -> bool:
    return ast.unparse(node) in ("pytest.mark.asyncio", "pytest_asyncio.fixture")


def _is_plain_module(dotted: str) -> bool:
    """A module of the package that has no sync twin."""
    if dotted in MODULE_MAP:
        return False
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _drop_shared(tree: ast.Module, module: Module) -> ast.ImportFrom | None:
    """Remove the shared definitions; the import that brings them from the asyncio module."""
    if not module.shared:
        return None
    wanted = set(module.shared)
    body: list[ast.stmt] = []
    for stmt in tree.body:
        name = _defined_name(stmt)
        if name is not None and name in wanted:
            wanted.discard(name)
            continue
        body.append(stmt)
    if wanted:
        raise GenerationError(f"{module.source}: shared names not defined: {sorted(wanted)}")
    tree.body = body
    return ast.ImportFrom(
        module=_dotted(module.source), names=[ast.alias(name=n) for n in module.shared], level=0
    )


def _insert_import(tree: ast.Module, node: ast.ImportFrom) -> None:
    """Put ``node`` right after ``from __future__ import annotations``."""
    index = next(
        i + 1
        for i, stmt in enumerate(tree.body)
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"
    )
    tree.body.insert(index, node)


def _defined_name(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return stmt.name
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def _ruff(args: list[str], text: str, filename: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(filename), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise GenerationError(f"ruff {args[0]} failed on {filename}:\n{result.stderr}")
    return result.stdout


def generate(module: Module) -> str:
    """The sync twin of ``module``, formatted, header included."""
    path = SRC / "turnstore" / module.source
    text = path.read_text(encoding="utf-8")
    markers = _markers(text)
    tree = ast.parse(text, filename=str(path))
    shared = _drop_shared(tree, module)
    transformer = _ToSync(module, markers)
    tree.body = transformer._statements(tree.body)
    if shared is not None:
        _insert_import(tree, shared)
    unused = set(markers) - transformer.used_markers
    if unused:
        lines = ", ".join(str(n) for n in sorted(unused))
        raise GenerationError(
            f"{module.source}: marker(s) on line(s) {lines} are not on a statement's first line"
        )
    ast.fix_missing_locations(tree)
    code = HEADER.format(source=module.source) + ast.unparse(tree) + "\n"
    target = SRC / "turnstore" / module.target
    fix = ["check", "--fix", "--exit-zero", "--quiet", "--select", "I,F401,UP"]
    code = _ruff(fix, code, target)
    return _ruff(["format", "--quiet"], code, target)


def generated_files() -> set[Path]:
    """Files under ``src/turnstore/sync`` that say they are generated."""
    found = set()
    for path in SYNC_DIR.rglob("*.py"):
        with path.open(encoding="utf-8") as f:
            if f.readline().startswith("# WARNING: this file is generated"):
                found.add(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a generated file differs from what would be generated",
    )
    args = parser.parse_args(argv)
    expected = {SRC / "turnstore" / m.target: generate(m) for m in MODULES}
    stale = sorted(generated_files() - set(expected))
    differing = sorted(
        path
        for path, code in expected.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != code
    )
    if args.check:
        for path in differing:
            print(f"stale or edited: {path.relative_to(ROOT)}", file=sys.stderr)
        for path in stale:
            print(f"generated but without a source: {path.relative_to(ROOT)}", file=sys.stderr)
        if differing or stale:
            print("run: python tools/async_to_sync.py", file=sys.stderr)
            return 1
        print(f"{len(expected)} generated sync modules are current")
        return 0
    for path in differing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
