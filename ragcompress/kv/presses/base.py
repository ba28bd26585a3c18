"""Shared machinery of eviction presses: score every token, keep the best per KV head.

An eviction press reduces to one method, ``score(keys, values, attn) -> (kv_heads, n)``
(higher = keep). The base class keeps ``n - floor(n * ratio)`` tokens per head — the same
count in every layer and head, so assembled caches stay rectangular — in their original
order, with their original positions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.chunk import ChunkLayer, DenseLayer

if TYPE_CHECKING:
    import torch

__all__ = ["EvictionPress", "kept_count"]


def kept_count(n: int, ratio: float) -> int:
    """Tokens kept out of ``n`` when evicting the fraction ``ratio`` (≥ 1 when n ≥ 1)."""
    # The epsilon absorbs float noise such as 10 * 0.3 = 3.0000000000000004.
    return n - math.floor(n * ratio + 1e-9)


@dataclass
class EvictionPress(ABC):
    """Evicts the fraction ``ratio`` of a chunk's tokens (0 keeps everything, < 1)."""

    ratio: float = 0.5
    needs_attention: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float):
            raise TypeError(f"{type(self).__name__}.ratio must be a number, got {self.ratio!r}")
        if not 0.0 <= float(self.ratio) < 1.0:
            raise ValueError(
                f"{type(self).__name__}.ratio is the evicted fraction, in [0, 1); got {self.ratio}"
            )

    @abstractmethod
    def score(
        self, keys: torch.Tensor, values: torch.Tensor, *, layer_idx: int, attn: torch.Tensor | None
    ) -> torch.Tensor:
        """(kv_heads, n) scores, higher = keep; keys/values (kv_heads, n, head_dim)."""

    def __call__(self, layer: DenseLayer, *, layer_idx: int, attn: torch.Tensor | None) -> ChunkLayer:
        import torch

        keys, values, positions = layer.dense()
        h, n, d = keys.shape
        keep = kept_count(n, self.ratio)
        if keep == n:
            return layer
        scores = self.score(keys, values, layer_idx=layer_idx, attn=attn).float()
        if tuple(scores.shape) != (h, n):
            raise ValueError(f"{type(self).__name__}.score returned {tuple(scores.shape)}, expected {(h, n)}")
        # A stable sort breaks ties by position, so equal scores never make the result vary.
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep]
        idx = torch.sort(order, dim=-1).values
        gather = idx[..., None].expand(h, keep, d)
        return DenseLayer(
            torch.gather(keys, 1, gather).contiguous(),
            torch.gather(values, 1, gather).contiguous(),
            torch.gather(positions, 1, idx).contiguous(),
        )
