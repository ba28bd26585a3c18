"""The one place that knows which transformers cache API the installed version speaks.

transformers renamed the forward's ``past_key_values`` keyword (and output field) to ``cache``;
the old name is deprecated and goes in 5.40, while the GPU machines still run 5.17, which only
knows the old one. Every forward with an explicit cache in the library, the benchmarks and the
tests goes through :func:`cache_kwargs` and reads the returned cache with :func:`output_cache`,
so moving to a new transformers touches this file alone.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_kwargs", "output_cache"]

_CACHE_ARG: dict[type, str] = {}


def _cache_arg(cls: type) -> str:
    if cls not in _CACHE_ARG:
        params = inspect.signature(cls.forward).parameters  # type: ignore[attr-defined]
        # A forward that still lists past_key_values (5.17) takes only that; one that lists only
        # `cache` (>= 5.24) takes the new name, the old one through a deprecation shim.
        _CACHE_ARG[cls] = (
            "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
        )
    return _CACHE_ARG[cls]


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)``: whichever of ``cache`` / ``past_key_values`` the
    model's forward takes (the signature is read once per model class)."""
    return {_cache_arg(type(model)): cache}


def output_cache(out: Any) -> Any:
    """The cache a forward returned, or None (``use_cache=False``): ``out.cache`` in newer
    transformers, ``out.past_key_values`` before. The old attribute is read only on outputs that
    lack the new field: where both exist, reading the old one logs a deprecation."""
    if "cache" in out:  # a ModelOutput is a dict of its non-None fields
        return out["cache"]
    if hasattr(type(out), "cache"):  # the new field, left None
        return None
    return getattr(out, "past_key_values", None)
