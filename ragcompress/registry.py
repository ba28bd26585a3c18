"""Name → class registry for compressors and KV presses.

A registered class is a dataclass whose fields are its whole configuration, so a
spec is just ``{"name": <registered name>, **fields}`` and round-trips through
:func:`build`. Third-party packages add methods through the ``ragcompress.plugins``
entry-point group (each entry point is a module imported for its ``@register`` calls).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = ["UnknownMethodError", "available", "build", "lookup", "register", "spec_of"]

T = TypeVar("T")

_REGISTRY: dict[str, tuple[str, type]] = {}
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
)


def register(name: str, kind: str = "text") -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` buildable as ``{"name": name, ...}``."""

    def deco(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
        old = _REGISTRY.get(name)
        if old is not None and old[1] is not cls and old[1].__qualname__ != cls.__qualname__:
            raise ValueError(f"name {name!r} is already registered to {old[1].__qualname__}")
        _REGISTRY[name] = (kind, cls)
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
            # A built-in module that is not written yet (or an optional dependency that is
            # missing) must not make the others unusable.
            if err.name is None or not err.name.startswith(mod):
                raise
    for ep in entry_points(group="ragcompress.plugins"):
        ep.load()


def available(kind: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those of one kind (``"text"`` or ``"press"``)."""
    _load_builtins()
    return sorted(n for n, (k, _) in _REGISTRY.items() if kind is None or k == kind)


class UnknownMethodError(ValueError, KeyError):
    """No method is registered under the name (a ``ValueError``; a ``KeyError`` for older callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def lookup(name: str) -> tuple[str, type]:
    """``(kind, class)`` registered under ``name``; :class:`UnknownMethodError` lists the known names."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable "name" such as a list
        known = (
            f"KV presses: {', '.join(available('press'))}; text compressors: {', '.join(available('text'))}"
        )
        raise UnknownMethodError(f"unknown method {name!r}; {known}") from None


def build(spec: Any) -> Any:
    """Build a compressor or press from a spec.

    ``spec`` may be a registered object (returned as is), a dict ``{"name": ..., **params}``,
    a JSON string of either, or a list of specs (a chain of text compressors, or a
    composition of presses).
    """
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            spec = {"name": spec}
    if hasattr(spec, "registered_name") and not isinstance(spec, type):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        parts = [build(s) for s in spec]
        kinds = {lookup(p.registered_name)[0] for p in parts}
        if len(kinds) != 1:
            raise ValueError("a list spec must hold only text compressors or only presses")
        wrapper = "chain" if kinds == {"text"} else "compose"
        return lookup(wrapper)[1](parts)
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise TypeError(f"a spec is a dict with a 'name' key, got {spec!r}")
    params = dict(spec)
    _, cls = lookup(params.pop("name"))
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(params) - names
    if unknown:
        raise TypeError(f"{spec['name']!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(names)}")
    return cls(**params)


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
