"""Observed attention: evict the tokens that the passage's own tokens attend to least.

The passage is its own observation window: scores are the attention weights each token
receives during encoding (H2O's accumulated attention; with ``window`` only the last rows
count, as in SnapKV), summed over query rows, averaged over the query heads of each KV group
and optionally smoothed by average pooling (SnapKV's ``kernel_size``). Query-agnostic: the
question is never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.presses.base import EvictionPress
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

__all__ = ["ObservedAttentionPress"]


@register("observed", kind="press")
@dataclass
class ObservedAttentionPress(EvictionPress):
    """Keep the most attended tokens per KV head.

    ``window``: 0 sums over every query row (causal rows favour early tokens, as in H2O); w > 0
    sums over the last w rows only and always keeps those w tokens (SnapKV). ``kernel_size``:
    odd width of the average pooling over token scores (1 = none).
    """

    window: int = 0
    kernel_size: int = 1
    needs_attention: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "kernel_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ObservedAttentionPress.{name} must be an int ≥ 0, got {v!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"ObservedAttentionPress.kernel_size must be odd, got {self.kernel_size}")

    def score(
        self, keys: torch.Tensor, values: torch.Tensor, *, layer_idx: int, attn: torch.Tensor | None
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        h, n, _ = keys.shape
        if attn is None:
            raise ValueError("observed needs the passage's attention weights (the encoder passes them)")
        if attn.dim() != 3 or attn.shape[1:] != (n, n) or attn.shape[0] % h:
            raise ValueError(
                f"attn must be (num_attention_heads, {n}, {n}) with a multiple of {h} heads, "
                f"got {tuple(attn.shape)}"
            )
        rows = attn[:, -self.window :] if self.window else attn
        s = rows.float().sum(dim=1)  # (num_attention_heads, n)
        s = s.reshape(h, -1, n).mean(dim=1)  # query heads of one KV group share its keys
        if self.kernel_size > 1:
            s = F.avg_pool1d(s[:, None], self.kernel_size, stride=1, padding=self.kernel_size // 2)[:, 0]
            s = s[:, :n]
        if self.window:
            # SnapKV keeps its observation window: it is the most recent context.
            recent = torch.arange(n, device=s.device) >= n - self.window
            s = torch.where(recent[None], torch.full_like(s, float("inf")), s)
        return s
