"""Qwen3: a Llama-shaped decoder whose attention normalizes each query and key head with its own
RMSNorm (``q_norm``/``k_norm`` over ``head_dim``) after the projection and before RoPE.

So a cached key is post-norm and post-RoPE: moving it to another position is still one exact
rotation (the norm acts before it), and un-rotating it gives the post-norm pre-RoPE key. A step
that computes keys itself (the fast engine's) applies the norms before rotating. QKV bias only
where ``attention_bias`` says so (off in the released models); sliding-window layers are refused
as for the other Llama-shaped families.
"""

from __future__ import annotations

from typing import Any

from ragcompress.models.arch.base import ModelArch
from ragcompress.models.arch.llama import llama_shaped
from ragcompress.models.arch.registry import register_family

__all__ = ["qwen3_arch"]


@register_family("qwen3")
def qwen3_arch(config: Any) -> ModelArch:
    return llama_shaped(config, qkv_bias=bool(getattr(config, "attention_bias", False)), qk_norm=True)
