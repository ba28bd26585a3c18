"""The import-layer contract of ``ragcompress/``: imports go one way only.

Every module under ``ragcompress/`` is parsed with :mod:`ast` (nothing is imported or run) and
each ``import`` / ``from … import`` of a ``ragcompress`` module becomes an edge, of one of three
kinds:

- *module*: executed when the importer is imported (top level, ``try``, ``if`` outside
  ``TYPE_CHECKING``, class bodies);
- *deferred*: inside a function, executed when it is called;
- *type*: under ``if TYPE_CHECKING:``, never executed.

The rules:

1. **Layers.** :data:`LAYERS` lists the layers from the bottom up; every module belongs to
   exactly one (the longest matching entry; a new module that matches none fails the test).
   An import of any kind (type and deferred included) may point to the importer's own layer
   or a lower one, never to a higher one: moving an upward import into a function or under
   ``TYPE_CHECKING`` does not make it legal.
2. **No cycles** among the executed imports (module + deferred): a deferred import inside a
   layer may go sideways but not close a loop, since that only hides the cycle until the call.
   *Type* imports are left out of this check (they never run, and annotations may name each
   other).
3. **The library stands alone**: nothing in ``ragcompress/`` imports ``tests``,
   ``ragcompress_bench`` or ``benchmarks``.

Known violations, each owned by code that is being moved now, are listed edge by edge in
:data:`ALLOWED_UPWARD` and :data:`ALLOWED_CYCLE_EDGES` with what fixes them; an entry that is
no longer needed fails the test, so the lists only shrink. Imports by name through
:mod:`importlib` (the registries' plug-in loading) are not seen here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ragcompress"

#: The layers, bottom first (copy this table into docs/design.md). An entry names a module and,
#: when it is a package, everything under it; ``ragcompress`` is the root package alone.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # corpus: document loaders over types only, used by the indexer and the retriever alike
    ("core", ("ragcompress", "ragcompress.types", "ragcompress.registry", "ragcompress.validate",
              "ragcompress.prompt", "ragcompress.lru", "ragcompress.corpus", "ragcompress.sampling")),
    ("models", ("ragcompress.models",)),
    # Below the text compressors: the summarizing compressor decodes with a Generator.
    ("generate", ("ragcompress.generate", "ragcompress.streaming")),
    ("text", ("ragcompress.text",)),
    ("kv.chunk", ("ragcompress.kv", "ragcompress.kv.chunk", "ragcompress.kv.key", "ragcompress.kv.serialize",
                  "ragcompress.kv.layers", "ragcompress.kv.prefix", "ragcompress.kv.fingerprint",
                  "ragcompress.kv.kernels")),
    ("kv.presses", ("ragcompress.kv.presses",)),
    ("kv.encode", ("ragcompress.kv.encode",)),
    ("kv.store", ("ragcompress.kv.store",)),
    ("kv.assembly", ("ragcompress.kv.assembly", "ragcompress.kv.assemble")),
    ("kv.answer", ("ragcompress.kv.cache", "ragcompress.kv.context", "ragcompress.kv.answer",
                   "ragcompress.kv.index")),
    ("kv.fast", ("ragcompress.kv.fast",)),
    ("sources", ("ragcompress.retrieve", "ragcompress.adapters")),
    ("pipeline", ("ragcompress.pipeline",)),
    ("cli", ("ragcompress.cli",)),
)  # fmt: skip

#: (importer, imported) upward imports allowed today, each with its owner and its fix.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

#: (importer, imported) edges left out of the cycle check: the one that closes each known cycle.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}

_OUTSIDE = ("tests", "ragcompress_bench", "benchmarks")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    kind: str  # "module" | "deferred" | "type"
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.imported} ({self.kind})"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) for every module under ragcompress/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, name: str, package: bool) -> Iterator[str]:
    """The modules an import statement names: ``from pkg import sub`` is the submodule ``sub``
    when one exists, else ``pkg`` itself."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    if node.level:
        base = name.split(".") if package else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        mod = ".".join([*base, *([node.module] if node.module else [])])
    else:
        mod = node.module or ""
    for alias in node.names:
        yield f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in MODULES else mod


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(body: list[ast.stmt], kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Import statements of ``body`` with their kind (see the module docstring)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    yield sub, "deferred"
        elif isinstance(node, ast.If):
            yield from _walk(node.body, "type" if _is_type_checking(node.test) else kind)
            yield from _walk(node.orelse, kind)
        else:  # class bodies, try/with/for/while blocks: executed with the module
            for field in ("body", "orelse", "finalbody"):
                yield from _walk(getattr(node, field, []), kind)
            for handler in getattr(node, "handlers", []):
                yield from _walk(handler.body, kind)


def _edges() -> list[Edge]:
    edges = []
    for name, (path, package) in MODULES.items():
        for node, kind in _walk(ast.parse(path.read_text(), str(path)).body, "module"):
            for target in _targets(node, name, package):
                if target.split(".")[0] in ("ragcompress", *_OUTSIDE) and target != name:
                    edges.append(Edge(name, target, kind, node.lineno))
    return list(dict.fromkeys(edges))  # `from m import a, b` names m once


EDGES = _edges()


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest entry naming ``module`` or a package above it."""
    best, rank = -1, -1
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "ragcompress" and module.startswith(entry + "."))
            if covers and len(entry) > best:
                best, rank = len(entry), i
    if rank < 0:
        raise LookupError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return rank


def _inside(edge: Edge) -> bool:
    return edge.imported.split(".")[0] == "ragcompress"


def upward_imports() -> list[Edge]:
    """Edges from a lower layer to a higher one (any kind)."""
    return [e for e in EDGES if _inside(e) and layer_of(e.imported) > layer_of(e.importer)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module among ``edges`` (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        if e.imported in graph:
            graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _pair(edge: Edge) -> tuple[str, str]:
    return edge.importer, edge.imported


def test_every_module_has_a_layer() -> None:
    missing = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError as err:
            missing.append(str(err))
    assert not missing, "\n".join(missing)


def test_no_upward_imports() -> None:
    bad = [e for e in upward_imports() if _pair(e) not in ALLOWED_UPWARD]
    names = [name for name, _ in LAYERS]
    assert not bad, "lower layers import higher ones:\n" + "\n".join(
        f"  {e}  [{names[layer_of(e.importer)]} -> {names[layer_of(e.imported)]}]" for e in bad
    )


def test_no_import_cycles() -> None:
    allowed = ALLOWED_CYCLE_EDGES.keys() | ALLOWED_UPWARD.keys()  # an allowed upward edge may close one
    runtime = [e for e in EDGES if _inside(e) and e.kind != "type" and _pair(e) not in allowed]
    found = cycles(runtime)
    assert not found, "import cycles (module-level and deferred imports):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in found
    )


def test_library_imports_no_tests_or_benchmarks() -> None:
    bad = [str(e) for e in EDGES if not _inside(e)]
    assert not bad, "ragcompress/ imports test or benchmark code:\n" + "\n".join(bad)


def test_allow_lists_only_shrink() -> None:
    """Every allowed upward import is still one, every allowed cycle edge still exists: a fixed
    one must leave its list. (A cycle edge is legal on its own once its cycle is gone, so that
    list is checked for existence only: delete an entry when its cycle is fixed.) Entries naming
    a module absent from this tree are skipped: the lists may run ahead of a branch."""
    present = {pair for pair in (*ALLOWED_UPWARD, *ALLOWED_CYCLE_EDGES) if set(pair) <= MODULES.keys()}
    stale = sorted(present & ALLOWED_UPWARD.keys() - {_pair(e) for e in upward_imports()})
    stale += sorted(present & ALLOWED_CYCLE_EDGES.keys() - {_pair(e) for e in EDGES if e.kind != "type"})
    assert not stale, f"no longer violations, remove them from the allow lists: {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import ragcompress.kv.chunk\n", ["ragcompress.kv.chunk (module)"]),
        ("def f():\n    from ragcompress.kv import chunk\n", ["ragcompress.kv.chunk (deferred)"]),
        ("if TYPE_CHECKING:\n    from ragcompress.types import Passage\n", ["ragcompress.types (type)"]),
        (
            "try:\n    from ragcompress import types\nexcept ImportError:\n    pass\n",
            ["ragcompress.types (module)"],
        ),
    ],
)
def test_the_parser_sees_each_kind(source: str, expected: list[str]) -> None:
    """The contract is only as good as the edges it sees."""
    got = [
        f"{t} ({kind})"
        for node, kind in _walk(ast.parse(source).body, "module")
        for t in _targets(node, "ragcompress.x", False)
    ]
    assert got == expected
