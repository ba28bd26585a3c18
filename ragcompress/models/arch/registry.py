"""Model family → adapter: :func:`arch_for` and :func:`supported_families`."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ragcompress.models.arch.base import ModelArch, UnsupportedModelError

__all__ = ["arch_for", "register_family", "supported_families", "supported_model_types"]

Adapter = Callable[[Any], ModelArch]
F = TypeVar("F", bound=Adapter)

_FAMILIES: dict[str, Adapter] = {}  # config.model_type -> adapter
_NAMES: dict[str, str] = {}  # config.model_type -> family name (what users and errors see)
# model -> (id of its config, arch): the KV path asks on every request. A model's RoPE tables
# and modules are fixed when it is built, so the arch is kept for as long as its config object is.
_KEPT: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], ModelArch]] = weakref.WeakKeyDictionary()


def register_family(*model_types: str, family: str | None = None) -> Callable[[F], F]:
    """Decorator: ``adapter(config) -> ModelArch`` handles configs whose ``model_type`` is one of
    ``model_types``; ``family`` names them (default: the first model type), e.g. Gemma 3's text
    models have model type ``gemma3_text`` and family ``gemma3``."""
    if not model_types:
        raise ValueError("register_family needs at least one model_type")

    def deco(fn: F) -> F:
        for name in model_types:
            old = _FAMILIES.get(name)
            if old is not None and old is not fn:
                raise ValueError(f"model type {name!r} already has an adapter ({old.__qualname__})")
            _FAMILIES[name] = fn
            _NAMES[name] = family or model_types[0]
        return fn

    return deco


def supported_families() -> list[str]:
    """The model families the KV path (encoder, presses, assembly, engines) runs, e.g.
    ``["gemma3", "llama", ...]``; :func:`supported_model_types` gives the ``config.model_type``
    values they cover."""
    return sorted(set(_NAMES.values()))


def supported_model_types() -> dict[str, str]:
    """``{config.model_type: family}`` of every registered adapter."""
    return dict(sorted(_NAMES.items()))


def arch_for(model_or_config: Any) -> ModelArch:
    """The :class:`ModelArch` of a model or its config. Raises :class:`UnsupportedModelError`
    naming the family and the supported ones, or what the family's adapter cannot handle.

    A model (anything with a ``config``) is also checked to have the modules the adapter names."""
    config = getattr(model_or_config, "config", model_or_config)
    stamp: tuple[Any, ...] = ()
    if config is not model_or_config:
        try:
            kept = _KEPT.get(model_or_config)
        except TypeError:  # not weakly referenceable: computed each time
            kept = None
        stamp = (id(config), *_table_stamp(model_or_config))  # a cast replaces the table: rebuild
        if kept is not None and _same(kept[0], stamp):
            return kept[1]
    family = getattr(config, "model_type", None)
    adapter = _FAMILIES.get(str(family))
    if adapter is None:
        raise UnsupportedModelError(
            f"model type {family!r} ({type(model_or_config).__name__}) is not supported by the KV path; "
            f"supported families: {supported_families()} (model types {sorted(_FAMILIES)})"
        )
    arch = adapter(config)
    if config is not model_or_config:
        arch.check_model(model_or_config)
        arch = _with_live_table(arch, model_or_config)
        with contextlib.suppress(TypeError):  # not weakly referenceable: not kept
            _KEPT[model_or_config] = (stamp, arch)
    return arch


def _with_live_table(arch: ModelArch, model: Any) -> ModelArch:
    """``arch`` with the model's own RoPE values where they differ from the config's (a cast
    model's rounded table); read once per (config, table dtype), so one device sync per table
    at most. Families with one table per layer type (Gemma 3's ``{type}_inv_freq``) are read
    per type."""
    live = _live_tables(model)
    if not live or ("" in live and len(set(arch.rope)) != 1):  # one live table cannot describe several
        return arch
    types = getattr(model.config, "layer_types", None) or ()
    read: dict[str, tuple[float, ...]] = {}
    specs = []
    for i, spec in enumerate(arch.rope):
        name = "" if "" in live else (str(types[i]) if i < len(types) else None)
        if name is None or name not in live:
            specs.append(spec)
            continue
        if name not in read:
            read[name] = tuple(float(x) for x in live[name].detach().float().cpu().tolist())
        values = read[name]
        same = len(values) != spec.rot_dim // 2 or values == tuple(spec.inv_freq().tolist())
        specs.append(spec if same else dataclasses.replace(spec, table=values))
    return dataclasses.replace(arch, rope=tuple(specs))


def _live_tables(model: Any) -> dict[str, Any]:
    """The model's rotary buffers: ``{"": inv_freq}`` for one table, else ``{layer_type: table}``."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None:
        return {}
    one = getattr(rotary, "inv_freq", None)
    if one is not None:
        return {"": one}
    types = getattr(getattr(model, "config", None), "layer_types", None) or ()
    found = {str(t): getattr(rotary, f"{t}_inv_freq", None) for t in sorted(set(types))}
    return {t: v for t, v in found.items() if v is not None}


def _table_stamp(model: Any) -> tuple[Any, ...]:
    """The model's live RoPE tables (weakly: an id could be reused after a cast frees one) and
    their version counters: ``model.to(...)`` replaces a buffer and an in-place write bumps its
    counter, so either means "read it again"."""
    stamp: list[Any] = []
    for table in _live_tables(model).values():
        stamp += [weakref.ref(table), table._version]
    return tuple(stamp)


def _same(kept: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    if len(kept) != len(now) or kept[0] != now[0]:
        return False
    pairs = zip(kept[1::2], now[1::2], strict=True)
    versions = zip(kept[2::2], now[2::2], strict=True)
    return all(a() is b() for a, b in pairs) and all(a == b for a, b in versions)
