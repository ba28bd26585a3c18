"""Name → class registries, one per kind: text compressors, KV presses, assembly modes.

A registered class is a dataclass whose fields are its whole configuration, so a spec is just
``{"name": <registered name>, **fields}`` and round-trips through :func:`build`. Each kind has its
own registry: a spec section or CLI flag that expects one kind accepts only that kind, lists only
that kind in its errors, and says so at once when given a method of another kind ("'knorm' is a
KV press, not a text compressor"). :func:`build` checks a spec's fields against the dataclass's
type hints (pydantic, strict: ``ratio: "half"`` fails naming ``ratio``), including the
constraints a field declares with ``Annotated[float, Field(gt=0, le=1)]``, before the class's own
``__post_init__`` runs. Third-party packages add methods through the ``ragcompress.plugins``
entry-point group (each entry point is a module imported for its ``@register`` calls).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_origin

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

__all__ = [
    "KINDS",
    "SpecError",
    "UnknownMethodError",
    "available",
    "build",
    "kind_of",
    "lookup",
    "register",
    "spec_of",
]

T = TypeVar("T")

# kind → (singular, plural) as messages say them; a plugin may register a kind of its own.
KINDS: dict[str, tuple[str, str]] = {
    "text": ("text compressor", "text compressors"),
    "press": ("KV press", "KV presses"),
    "assembly": ("assembly mode", "assembly modes"),
}
# The wrapper each kind builds a list spec into.
_LIST_WRAPPER = {"text": "chain", "press": "compose"}

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_BUILTINS_LOADED = False
# Modules whose import registers the built-in methods; imported on first lookup so that
# `import ragcompress` stays cheap and free of torch until a method is used.
_BUILTIN_MODULES = (
    "ragcompress.text.sentences",
    "ragcompress.text.tokens",
    "ragcompress.text.summarize",
    "ragcompress.text.redundancy",
    "ragcompress.text.chain",
    "ragcompress.text.random_drop",
    "ragcompress.kv.presses",
    "ragcompress.kv.assembly",
)


class SpecError(ValueError, TypeError):
    """A spec is wrong. Each issue is ``(path, message)``, the path a key path such as
    ``kv.presses[0].bits`` (empty: the spec as a whole); ``source`` says where the spec came from
    (a YAML file's name, a CLI flag). ``str(err)`` is ``"SOURCE: PATH: MESSAGE"``. A ``ValueError``
    and, for callers that caught a bad parameter as one, a ``TypeError``."""

    def __init__(self, message: str = "", path: str = "", source: str = "") -> None:
        super().__init__(message)
        self.issues: list[tuple[str, str]] = [(path, message)]
        self.source = source
        self._render()

    @classmethod
    def of(cls, issues: Sequence[tuple[str, str]], source: str = "") -> SpecError:
        err = cls(source=source)
        err.issues = list(issues)
        err._render()
        return err

    def at(self, prefix: str) -> SpecError:
        """The same error, its paths below ``prefix`` (``"compressors"``, ``"[0]"``)."""
        self.issues = [(join_path(prefix, path), msg) for path, msg in self.issues]
        self._render()
        return self

    def came_from(self, source: str) -> SpecError:
        """The same error, naming where the spec came from (kept when already set)."""
        self.source = self.source or source
        self._render()
        return self

    def _render(self) -> None:
        body = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.issues)
        self.args = (f"{self.source}: {body}" if self.source else body,)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def join_path(prefix: str, path: str) -> str:
    """``compressors`` + ``[0]`` → ``compressors[0]``; ``kv`` + ``store`` → ``kv.store``."""
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def issues_of(err: ValidationError) -> list[tuple[str, str]]:
    """A pydantic error as ``(path, message)`` pairs: ``("kv.cache_dirr", "unknown key")``."""
    out: list[tuple[str, str]] = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path = join_path(path, f"[{part}]" if isinstance(part, int) else str(part))
        inner = e.get("ctx", {}).get("error")
        if isinstance(inner, SpecError):  # from a validator or a nested section: its own paths
            out.extend((join_path(path, p), m) for p, m in inner.issues)
            continue
        if e["type"] == "extra_forbidden":
            out.append((path, "unknown key"))
            continue
        bound = next((op for op in _BOUNDS if op in e.get("ctx", {})), None)
        if e["type"].startswith(("greater_than", "less_than")) and bound:
            limit = e["ctx"][bound]
            limit = f"{limit:g}" if isinstance(limit, float) else limit
            out.append((path, f"out of range: must be {_BOUNDS[bound]} {limit}, got {e['input']!r}"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("value_error", "assertion_error", "missing"):
            got = repr(e["input"])
            msg += f", got {got if len(got) <= 60 else got[:57] + '...'}"
        out.append((path, msg))
    return out


def _resolve(cls: type, f: dataclasses.Field[Any]) -> Any:
    # `from __future__ import annotations` leaves hints as strings; a hint naming something
    # imported only for type checking is not checked (Any) rather than failing the spec.
    if not isinstance(f.type, str):
        return f.type
    for klass in cls.__mro__:
        if f.name in getattr(klass, "__annotations__", {}):
            module = sys.modules.get(klass.__module__)
            try:
                return eval(f.type, dict(vars(module)) if module else {})
            except Exception:
                return Any
    return Any


@functools.cache
def _params_model(cls: type) -> type[BaseModel]:
    """A pydantic model of ``cls``'s init fields: strict types (YAML and JSON give native ones,
    so ``"8"`` for an int is a mistake), lists and tuples interchangeable."""
    # imported here: `import ragcompress` stays cheap until a spec is checked
    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        hint = _resolve(cls, f)
        if get_origin(hint) in (list, tuple):
            hint = Annotated[hint, Field(strict=False)]
        fields[f.name] = (hint, None)
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Spec", __config__=config, **fields)


def check_fields(cls: type, params: Mapping[str, Any]) -> None:
    """Check ``params`` against ``cls``'s dataclass fields: every key a field, every value of the
    field's type and inside the constraints it declares. :class:`SpecError` names each field."""
    from pydantic import ValidationError

    try:
        _params_model(cls).model_validate(dict(params))
    except ValidationError as err:
        fields = sorted(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]
        takes = f"; {getattr(cls, 'registered_name', cls.__name__)!r} takes {', '.join(fields)}"
        issues = [(path, msg + takes if msg == "unknown key" else msg) for path, msg in issues_of(err)]
        raise SpecError.of(issues) from None


def _singular(kind: str) -> str:
    return KINDS.get(kind, (kind, kind))[0]


def _a(kind: str) -> str:
    word = _singular(kind)
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _plural(kind: str) -> str:
    return KINDS.get(kind, (kind, kind + "s"))[1]


def register(name: str, kind: str = "text") -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` buildable as ``{"name": name, ...}`` among methods of ``kind``."""

    def deco(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
        names = _REGISTRY.setdefault(kind, {})
        old = names.get(name)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"{_singular(kind)} name {name!r} is already registered to {old.__qualname__}")
        names[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            # A built-in module whose optional dependency is missing must not make the others
            # unusable.
            if err.name is None or not err.name.startswith(mod):
                raise
    for ep in entry_points(group="ragcompress.plugins"):
        ep.load()


def available(kind: str | None = None) -> list[str]:
    """Sorted registered names of one kind (``"text"``, ``"press"``, ``"assembly"``), or of all."""
    _load_builtins()
    if kind is not None:
        return sorted(_REGISTRY.get(kind, {}))
    return sorted({n for names in _REGISTRY.values() for n in names})


class UnknownMethodError(SpecError, KeyError):
    """No method of the kind asked for is registered under the name (a ``ValueError``; a
    ``KeyError`` for older callers). The message lists the names of that kind, and names the kind
    the name does belong to when it is registered as another kind."""

    def __str__(self) -> str:  # KeyError would quote the message
        return SpecError.__str__(self)


def _listing(kind: str | None) -> str:
    kinds = [kind] if kind is not None else [k for k in _REGISTRY if _REGISTRY[k]]
    return "; ".join(f"{_plural(k)}: {', '.join(available(k)) or '-'}" for k in kinds)


def lookup(name: str, kind: str | None = None) -> tuple[str, type]:
    """``(kind, class)`` registered under ``name`` (among ``kind`` only, when given).

    :class:`UnknownMethodError` lists the known names of ``kind``; a name registered as another
    kind fails naming both kinds."""
    _load_builtins()
    try:
        if kind is not None and name in _REGISTRY.get(kind, {}):
            return kind, _REGISTRY[kind][name]
        found = [k for k, names in _REGISTRY.items() if name in names]
    except TypeError:  # an unhashable "name" such as a list
        found = []
    if kind is None and found:
        return found[0], _REGISTRY[found[0]][name]
    if found:
        raise UnknownMethodError(f"{name!r} is {_a(found[0])}, not {_a(kind or '')}; {_listing(kind)}")
    # "unknown method" for compressors and presses: the phrase their callers have always matched
    what = "method" if kind in (None, "text", "press") else _singular(kind or "")
    raise UnknownMethodError(f"unknown {what} {name!r}; {_listing(kind)}")


def kind_of(obj: Any) -> str | None:
    """The kind a registered object (or class) belongs to; None when it is not registered."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(cls, "registered_name", None)
    for kind, names in _REGISTRY.items():
        if isinstance(name, str) and names.get(name) is cls:
            return kind
    return None


def build(spec: Any, kind: str | None = None) -> Any:
    """Build a method from a spec, checking it is of ``kind`` when given.

    ``spec`` may be a registered object (returned as is), a dict ``{"name": ..., **params}``,
    a JSON string of either or a bare name, or a list of specs (a chain of text compressors, or
    a composition of presses). Errors are :class:`SpecError`\\ s naming the field at fault.
    """
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            spec = {"name": spec}
    if hasattr(spec, "registered_name") and not isinstance(spec, type):
        return _check_object(spec, kind)
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        return _build_list(spec, kind)
    if not isinstance(spec, Mapping) or "name" not in spec:
        what = f"a {_singular(kind)} spec" if kind else "a spec"
        raise SpecError(f"{what} is a dict with a 'name' key, got {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    _, cls = lookup(name, kind)
    check_fields(cls, params)
    try:
        return cls(**params)
    except SpecError:
        raise
    except (TypeError, ValueError) as err:  # a range or a combination that __post_init__ refuses
        raise SpecError(str(err)) from err


def _check_object(obj: Any, kind: str | None) -> Any:
    got = kind_of(obj)
    if kind is not None and got is not None and got != kind:
        raise UnknownMethodError(f"{obj.registered_name!r} is {_a(got)}, not {_a(kind)}; {_listing(kind)}")
    return obj


def _build_list(specs: Sequence[Any], kind: str | None) -> Any:
    parts = []
    for i, s in enumerate(specs):
        try:
            parts.append(build(s, kind))
        except SpecError as err:
            raise err.at(f"[{i}]") from None
    kinds = {kind_of(p) for p in parts}
    if len(kinds) != 1:
        raise SpecError("a list spec must hold only text compressors or only presses")
    (got,) = kinds
    wrapper = _LIST_WRAPPER.get(got or "")
    if wrapper is None:
        raise SpecError(f"a list of {_plural(got or '')} has no meaning; give one spec")
    return lookup(wrapper, got)[1](parts)


def spec_of(obj: Any) -> dict[str, Any]:
    """The JSON-able spec of a registered dataclass instance; nested methods become specs too."""

    def conv(v: Any) -> Any:
        if hasattr(v, "registered_name") and dataclasses.is_dataclass(v):
            return spec_of(v)
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        return v

    out: dict[str, Any] = {"name": obj.registered_name}
    for f in dataclasses.fields(obj):
        if f.init and f.repr:
            out[f.name] = conv(getattr(obj, f.name))
    return out
