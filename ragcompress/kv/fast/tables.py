"""RoPE tables for writes into the static buffer: one :class:`~ragcompress.models.rope.Rotary`
for every layer, or one per layer for a family with per-layer-type tables (Gemma 3's local and
global layers).

The kernels take the *distinct* tables (T, rot_dim // 2) and each layer's index into them: a
program computes cos/sin once per distinct table (two for Gemma 3) and picks per row, instead
of once per row and channel (a transcendental per element made a 32K-token write of Gemma 3
12B cost ~60 ms on an H200).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import torch

    from ragcompress.models.rope import Rotary

__all__ = ["Rotaries", "layer_freqs", "layer_tables"]

# one table for every layer, or one per layer
Rotaries: TypeAlias = "Rotary | Sequence[Rotary]"


def _per_layer(rotary: Rotaries, layers: int) -> tuple[Rotary, ...]:
    tables = (rotary,) * layers if not isinstance(rotary, Sequence) else tuple(rotary)
    if len(tables) != layers:
        raise ValueError(f"{len(tables)} RoPE tables for {layers} layers")
    return tables


def layer_tables(rotary: Rotaries, layers: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(freqs, index)`` on ``device``: the distinct tables (T, rot_dim // 2) fp32, in layer
    order, and each layer's row in them (layers,) int32. Memoized per (tables, device): built
    and copied to the device once, not per request."""
    import torch

    tables = _per_layer(rotary, layers)
    key = ("tables", tables, str(device))  # Rotary hashes by identity; the key holds them alive
    hit = _MEMO.get(key)
    if hit is None:
        distinct = list(dict.fromkeys(tables))
        freqs = torch.stack([t.inv_freq for t in distinct]).to(device=device, dtype=torch.float32)
        index = torch.tensor([distinct.index(t) for t in tables], dtype=torch.int32).to(device)
        hit = _remember(key, (freqs.contiguous(), index))
    return hit  # type: ignore[no-any-return]


def layer_freqs(rotary: Rotaries, layers: int, device: Any) -> torch.Tensor:
    """(layers, rot_dim // 2) fp32 inverse frequencies on ``device``: layer ``l``'s table
    (memoized like :func:`layer_tables`)."""
    freqs, index = layer_tables(rotary, layers, device)
    key = ("layers", _per_layer(rotary, layers), str(device))
    hit = _MEMO.get(key)
    return hit if hit is not None else _remember(key, freqs[index.long()].contiguous())  # type: ignore[no-any-return]


_MEMO: dict[tuple[Any, ...], Any] = {}


def _remember(key: tuple[Any, ...], value: Any) -> Any:
    if len(_MEMO) > 64:
        _MEMO.clear()
    _MEMO[key] = value
    return value
