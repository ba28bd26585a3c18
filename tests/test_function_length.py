"""The function-length contract: no function or method of the library is longer than
:data:`LIMIT` lines.

Every module under ``ragcompress/`` (and the two partner packages under ``integrations/``, which
ship beside it) is parsed with :mod:`ast`; nothing is imported or run.

What is counted: the lines from the first statement of the body (the docstring, when there is
one) to the function's last line, blank lines and comments inside included; the decorators and
the signature are not counted, so a long parameter list costs nothing. A nested function counts
towards the function around it and is measured on its own as well. Lambdas are not functions here.

Known long functions, each in code another change is editing now, are listed with their current
length in :data:`ALLOWED_LONG` (``"module:Class.method"``). The list is a ratchet: the test fails
when a listed function grows, when it shrinks without its entry being lowered to match, and when
an entry is no longer needed (the function is at most :data:`LIMIT` lines, or gone), so the list
only empties over time. A new function over the limit fails outright.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The packages held to the contract: (source root, the folder the module names start from).
PACKAGES: tuple[tuple[Path, Path], ...] = (
    (REPO / "ragcompress", REPO),
    (REPO / "integrations" / "langchain" / "langchain_ragcompress", REPO / "integrations" / "langchain"),
    (REPO / "integrations" / "llamaindex" / "llama_index", REPO / "integrations" / "llamaindex"),
    (REPO / "integrations" / "llamaindex-llms" / "llama_index", REPO / "integrations" / "llamaindex-llms"),
)

LIMIT = 60

#: ``"module:qualified.name"`` -> its length now; may only shrink, and goes when it fits LIMIT.
ALLOWED_LONG: dict[str, int] = {}


def function_lengths(source: str, module: str) -> Iterator[tuple[str, int]]:
    """``("module:qualified.name", length)`` of every function in ``source`` (see the module doc)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                end = child.end_lineno if child.end_lineno is not None else child.lineno
                yield f"{module}:{name}", end - child.body[0].lineno + 1
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), "")


def _module_name(path: Path, base: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for root, base in PACKAGES:
        for path in sorted(root.rglob("*.py")):
            lengths.update(function_lengths(path.read_text(encoding="utf-8"), _module_name(path, base)))
    return lengths


def test_the_counting_rule():
    """Docstring and body lines count, the signature and decorators don't; nested functions count
    in both places; methods are named by their class."""
    source = '''
@decorator
def outer(
    a: int,
    b: int,
) -> int:
    """Doc."""

    # a comment
    def inner() -> int:
        return 1
    return inner()


class C:
    def m(self) -> None:
        pass
'''
    assert dict(function_lengths(source, "pkg.mod")) == {
        "pkg.mod:outer": 6,
        "pkg.mod:outer.inner": 1,
        "pkg.mod:C.m": 1,
    }


def test_every_package_is_read():
    lengths = library_lengths()
    for root, base in PACKAGES:
        assert any(name.startswith(_module_name(root / "__init__.py", base) + ".") for name in lengths), root


def test_no_function_is_longer_than_the_limit():
    too_long = {name: n for name, n in library_lengths().items() if n > LIMIT and name not in ALLOWED_LONG}
    assert not too_long, (
        f"functions longer than {LIMIT} lines (split them; see the counting rule in this test's "
        f"docstring): {too_long}"
    )


def test_the_allowed_list_only_shrinks():
    lengths = library_lengths()
    stale = {name: lengths.get(name) for name in ALLOWED_LONG if lengths.get(name, 0) <= LIMIT}
    assert not stale, f"no longer over {LIMIT} lines (or gone): remove from ALLOWED_LONG: {stale}"
    grown = {name: (lengths[name], n) for name, n in ALLOWED_LONG.items() if lengths[name] > n}
    assert not grown, f"listed functions grew (now, allowed): shorten them instead: {grown}"
    shrunk = {name: lengths[name] for name, n in ALLOWED_LONG.items() if lengths[name] < n}
    assert not shrunk, f"listed functions got shorter: lower their ALLOWED_LONG entries to {shrunk}"
