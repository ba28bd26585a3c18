"""Knorm: evict the tokens whose keys have the largest L2 norm (Devoto et al. 2024, kvpress's
``KnormPress``): low-norm keys draw the most attention.

Keys are stored RoPE-rotated, and rotation preserves norms, so scoring post-RoPE keys is the
same as scoring pre-RoPE ones. Nothing is protected: the attention sink of a prompt is its
BOS/template prefix, which is never part of a passage chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.presses.base import EvictionPress
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

__all__ = ["KnormPress"]


@register("knorm", kind="press")
@dataclass
class KnormPress(EvictionPress):
    """Keep the ``1 - ratio`` tokens of smallest key norm, per layer and KV head."""

    def score(
        self, keys: torch.Tensor, values: torch.Tensor, *, layer_idx: int, attn: torch.Tensor | None
    ) -> torch.Tensor:
        return -keys.float().norm(dim=-1)
