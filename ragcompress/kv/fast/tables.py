"""RoPE tables for writes into the static buffer: one :class:`~ragcompress.models.rope.Rotary`
for every layer, or one per layer for a family with per-layer-type tables (Gemma 3's local and
global layers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import torch

    from ragcompress.models.rope import Rotary

__all__ = ["Rotaries", "layer_freqs", "uniform"]

# one table for every layer, or one per layer
Rotaries: TypeAlias = "Rotary | Sequence[Rotary]"


def layer_freqs(rotary: Rotaries, layers: int, device: Any) -> torch.Tensor:
    """(layers, rot_dim // 2) fp32 inverse frequencies on ``device``: layer ``l``'s table.
    Memoized per (tables, device): built and copied to the device once, not per request."""
    import torch

    tables = (rotary,) * layers if not isinstance(rotary, Sequence) else tuple(rotary)
    if len(tables) != layers:
        raise ValueError(f"{len(tables)} RoPE tables for {layers} layers")
    key = (tables, str(device))  # Rotary hashes by identity; the key holds them alive
    hit = _FREQS.get(key)
    if hit is None:
        if len(_FREQS) > 64:
            _FREQS.clear()
        stacked = torch.stack([t.inv_freq for t in tables])
        hit = _FREQS[key] = stacked.to(device=device, dtype=torch.float32).contiguous()
    return hit


_FREQS: dict[tuple[Any, str], Any] = {}


def uniform(rotary: Rotaries) -> Rotary | None:
    """The one table of ``rotary`` when every layer has the same object, else None."""
    if not isinstance(rotary, Sequence):
        return rotary
    first = rotary[0]
    return first if all(r is first for r in rotary) else None
