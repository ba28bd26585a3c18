"""A config's RoPE parameters as one :class:`~ragcompress.models.arch.base.RopeSpec`, for every
transformers version the project supports (``rope_parameters`` since 5.x; ``rope_theta`` +
``rope_scaling`` before)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragcompress.models.arch.base import ROPE_TYPES, RopeSpec, UnsupportedModelError

__all__ = ["rope_params", "rope_spec"]


def rope_params(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """``{"rope_type": ..., "rope_theta": ..., scaling fields...}`` of ``config`` (of the given
    layer type's table when the config holds one table per layer type)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, Mapping) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if not isinstance(params, Mapping) or "rope_theta" not in params:
        scaling = getattr(config, "rope_scaling", None)
        params = {**(scaling or {}), "rope_theta": getattr(config, "rope_theta", 10000.0)}
    out = dict(params)
    out["rope_type"] = out.get("rope_type", out.get("type", "default"))
    return out


def rope_spec(config: Any, head_dim: int, layer_type: str | None = None) -> RopeSpec:
    """The frequency table of ``config`` for keys of ``head_dim`` channels; raises
    :class:`UnsupportedModelError` naming the family and the RoPE type it cannot re-rotate."""
    p = rope_params(config, layer_type)
    family, kind = getattr(config, "model_type", "?"), str(p["rope_type"])
    if kind not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"{family}: RoPE type {kind!r} is not supported by the KV path (supported: {list(ROPE_TYPES)}); "
            "its rotation is not a fixed rotation per position, so cached keys cannot be moved exactly"
        )
    rot_dim = int(
        head_dim * float(p.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    )
    try:
        if kind == "default":
            return RopeSpec(kind, float(p["rope_theta"]), rot_dim)
        if kind == "linear":
            return RopeSpec(kind, float(p["rope_theta"]), rot_dim, factor=float(p["factor"]))
        return RopeSpec(
            kind,
            float(p["rope_theta"]),
            rot_dim,
            factor=float(p["factor"]),
            low_freq_factor=float(p["low_freq_factor"]),
            high_freq_factor=float(p["high_freq_factor"]),
            original_max_positions=int(p["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise UnsupportedModelError(
            f"{family}: RoPE type {kind!r} needs {e.args[0]!r} in its parameters"
        ) from None
