"""Window (StreamingLLM, Xiao et al. 2023): keep the first ``sinks`` tokens and the most
recent ones; a position-only baseline that ignores content."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.presses.base import EvictionPress
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

__all__ = ["WindowPress"]


@register("window", kind="press")
@dataclass
class WindowPress(EvictionPress):
    """Keep ``sinks`` leading tokens + a recent window of ``n - floor(n * ratio) - sinks``."""

    sinks: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"WindowPress.sinks must be an int ≥ 0, got {self.sinks!r}")

    def score(
        self, keys: torch.Tensor, values: torch.Tensor, *, layer_idx: int, attn: torch.Tensor | None
    ) -> torch.Tensor:
        import torch

        h, n, _ = keys.shape
        idx = torch.arange(n, device=keys.device, dtype=torch.float32)
        # Sinks outrank everything, then recency decides.
        score = torch.where(idx < self.sinks, float(n) + 1.0, idx)
        return score[None].expand(h, n)
