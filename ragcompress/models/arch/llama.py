"""The Llama-shaped families: Llama (default, linear or llama3-scaled RoPE), Mistral and Qwen2/2.5.

All three are one decoder layer ``x + attn(norm(x))`` then ``h + mlp(norm(h))`` (RMSNorm before
each block), grouped-query attention with half-split RoPE over the whole head, a final RMSNorm
and an ``lm_head``. They differ in QKV bias (Qwen2 always has it, Llama when
``attention_bias``) and in sliding-window attention (Mistral, Qwen2 optionally), which the KV
path does not implement: a config with a window shorter than its context is refused.
"""

from __future__ import annotations

from typing import Any

from ragcompress.models.arch.base import ModelArch, UnsupportedModelError
from ragcompress.models.arch.registry import register_family
from ragcompress.models.arch.rope_params import rope_spec

__all__ = ["llama_arch", "llama_shaped", "mistral_arch", "qwen2_arch"]


def llama_shaped(config: Any, *, qkv_bias: bool, qk_norm: bool = False) -> ModelArch:
    """The :class:`ModelArch` of a Llama-shaped ``config``; ``qk_norm``: per-head RMS norms on
    queries and keys before RoPE (Qwen3)."""
    family = config.model_type
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rope = rope_spec(config, head_dim)
    if rope.rot_dim != head_dim:
        # transformers' Llama-shaped attention rotates the whole head; a partial factor there
        # would not even run, so refuse it here with the reason.
        raise UnsupportedModelError(
            f"{family}: partial rotary ({rope.rot_dim} of {head_dim} channels) is not a {family} layout"
        )
    limit = getattr(config, "max_position_embeddings", None)
    _refuse_sliding_window(config, limit)
    layers = int(config.num_hidden_layers)
    return ModelArch(
        family=family,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=int(config.hidden_size),
        rope=(rope,) * layers,
        attention_scale=head_dim**-0.5,
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        max_positions=None if limit is None else int(limit),
        mlp_act=str(getattr(config, "hidden_act", "silu")),
    )


def _refuse_sliding_window(config: Any, limit: int | None) -> None:
    """A window at least as long as the context never masks anything: full attention."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or ()
    sliding = "sliding_attention" in types or (
        window is not None and getattr(config, "use_sliding_window", True) and not types
    )
    if sliding and window is not None and (limit is None or window < limit):
        raise UnsupportedModelError(
            f"{config.model_type}: sliding-window attention (window {window} < context {limit}) is not "
            "supported by the KV path yet; a config without it (sliding_window=None) runs"
        )


@register_family("llama")
def llama_arch(config: Any) -> ModelArch:
    return llama_shaped(config, qkv_bias=bool(getattr(config, "attention_bias", False)))


@register_family("mistral")
def mistral_arch(config: Any) -> ModelArch:
    return llama_shaped(config, qkv_bias=False)


@register_family("qwen2")
def qwen2_arch(config: Any) -> ModelArch:
    return llama_shaped(config, qkv_bias=True)
