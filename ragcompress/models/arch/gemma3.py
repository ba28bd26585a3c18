"""Gemma 3 (text): ``Gemma3ForCausalLM`` / ``Gemma3TextConfig``, ``model_type == "gemma3_text"``.

What sets it apart from the Llama-shaped families:

* QK-norm (per-head RMSNorm on queries and keys) before RoPE, and sandwich norms: the attention's
  and the MLP's outputs are normed again before each residual add.
* Embeddings scaled by ``sqrt(hidden_size)``; queries scaled by ``query_pre_attn_scalar ** -0.5``
  (not ``head_dim ** -0.5``); optional soft-capping of attention and output logits.
* Local layers (``sliding_attention``: a query sees the last ``sliding_window`` positions, RoPE
  base ``rope_local_base_freq``) interleaved with global layers (``full_attention``, their own
  base and scaling): ``layer_types``, or every ``sliding_window_pattern``-th layer global.
  Each layer gets its type's RoPE table and window in the :class:`ModelArch`; how chunks keep
  and assemble local layers is in ``docs/design.md`` ("Local sliding-window layers").

The multimodal ``gemma3`` config (``Gemma3ForConditionalGeneration``: its decoder lives under
``model.language_model`` and its forward builds its own masks for image tokens) has no adapter:
:func:`~ragcompress.models.arch.arch_for` refuses it naming the supported families, among them
``gemma3_text``; load the text part as ``Gemma3ForCausalLM``.
The GPU fast engine runs Gemma 3 (fused step on CUDA: Gemma's RMSNorm and sandwich order in its
kernels), with local layers masked by logical position.
"""

from __future__ import annotations

from typing import Any

from ragcompress.models.arch.base import ModelArch, RopeSpec, UnsupportedModelError
from ragcompress.models.arch.registry import register_family
from ragcompress.models.arch.rope_params import rope_spec

__all__ = ["gemma3_arch"]

_SLIDING, _FULL = "sliding_attention", "full_attention"
_BLOCK = (
    "input_norm",
    "attention",
    "post_attention_norm",
    "residual",
    "pre_mlp_norm",
    "mlp",
    "post_mlp_norm",
    "residual",
)


def _layer_types(config: Any) -> tuple[str, ...]:
    """``config.layer_types``, or the older ``sliding_window_pattern`` (every n-th layer global)."""
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if types:
        out = tuple(str(t) for t in types)
    else:
        pattern = int(getattr(config, "sliding_window_pattern", None) or 6)
        out = tuple(_SLIDING if (i + 1) % pattern else _FULL for i in range(n))
    unknown = sorted(set(out) - {_SLIDING, _FULL})
    if unknown or len(out) != n:
        raise UnsupportedModelError(
            f"gemma3_text: layer types {unknown or len(out)} are not {_SLIDING}/{_FULL}"
        )
    return out


def _rope(config: Any, head_dim: int, layer_type: str) -> RopeSpec:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and layer_type in params:
        return rope_spec(config, head_dim, layer_type)
    if layer_type == _FULL:  # older configs: rope_theta + rope_scaling are the global layers'
        return rope_spec(config, head_dim)
    return RopeSpec("default", float(getattr(config, "rope_local_base_freq", 10000.0)), head_dim)


@register_family("gemma3_text", family="gemma3")
def gemma3_arch(config: Any) -> ModelArch:
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(
            "gemma3_text: bidirectional attention (an encoder) is not a causal reader"
        )
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    types = _layer_types(config)
    tables = {t: _rope(config, head_dim, t) for t in set(types)}
    if any(r.rot_dim != head_dim for r in tables.values()):
        raise UnsupportedModelError("gemma3_text: partial rotary is not a Gemma 3 layout")
    window = int(getattr(config, "sliding_window", None) or 0)
    if _SLIDING in types and window < 1:
        raise UnsupportedModelError(f"gemma3_text: local layers need a positive sliding_window, got {window}")
    limit = getattr(config, "max_position_embeddings", None)
    final_cap = getattr(config, "final_logit_softcapping", None)
    return ModelArch(
        family="gemma3",
        num_layers=len(types),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=int(config.hidden_size),
        rope=tuple(tables[t] for t in types),
        attention_scale=float(config.query_pre_attn_scalar) ** -0.5,
        qkv_bias=bool(getattr(config, "attention_bias", False)),
        qk_norm=True,
        norm_placement="sandwich",
        block_order=_BLOCK,
        sliding_window=tuple(window if t == _SLIDING else None for t in types),
        max_positions=None if limit is None else int(limit),
        embed_scale=float(config.hidden_size) ** 0.5,
        # no attention soft cap: Gemma 3 dropped it (Gemma 2 had one) and transformers' Gemma 3
        # attention never applies ``attn_logit_softcapping`` even when a config sets it
        attn_softcap=None,
        final_softcap=None if final_cap is None else float(final_cap),
        mlp_act=str(getattr(config, "hidden_activation", None) or "gelu_pytorch_tanh"),
    )
