"""Compose: presses applied in order to each layer (e.g. eviction, then quantization).

A list of presses given anywhere (``presses=[...]``, YAML ``kv.presses``, ``--press '[...]'``)
is built into one of these by :func:`ragcompress.kv.presses.protocol.build_presses`, so a list and its
composition encode the same chunk under the same key. A press after one that returned a
compressed layer sees that layer (it calls ``dense()`` on it), so put quantization last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import ChunkLayer, DenseLayer

__all__ = ["ComposedPress"]


@register("compose", kind="press")
@dataclass
class ComposedPress:
    """``presses``: press objects or specs, applied first to last."""

    presses: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from ragcompress.registry import build, lookup

        if not isinstance(self.presses, list | tuple) or not self.presses:
            raise ValueError(f"compose needs a non-empty list of presses, got {self.presses!r}")
        built = [build(p) for p in self.presses]
        for i, p in enumerate(built):
            if lookup(p.registered_name)[0] != "press":
                raise TypeError(f"compose item #{i} ({p.registered_name!r}) is not a KV press")
        self.presses = built

    @property
    def needs_attention(self) -> bool:
        return any(getattr(p, "needs_attention", False) for p in self.presses)

    @property
    def needs_reconstruction(self) -> bool:
        return any(getattr(p, "needs_reconstruction", False) for p in self.presses)

    def __call__(self, layer: DenseLayer, *, layer_idx: int, attn: torch.Tensor | None) -> ChunkLayer:
        from ragcompress.kv.chunk import DenseLayer

        first = layer.positions
        out: ChunkLayer = layer
        for press in self.presses:
            dense = out if isinstance(out, DenseLayer) else DenseLayer(*out.dense())
            sub = attn
            if attn is not None and dense.num_tokens != first.shape[1]:
                if getattr(press, "needs_attention", False):
                    sub = _kept_attention(attn, first, dense.positions)
                elif getattr(press, "needs_reconstruction", False):
                    sub = _kept_columns(attn, first, dense.positions)
            out = press(dense, layer_idx=layer_idx, attn=sub)
        return out


def _kept_columns(attn: torch.Tensor, original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Attention of r queries (num_heads, r, n) restricted to the kept tokens of each KV head:
    (num_heads, r, k). ``original``/``kept``: (kv_heads, n) / (kv_heads, k) sorted positions."""
    import torch

    h, k = kept.shape
    idx = torch.searchsorted(original.contiguous(), kept.contiguous())  # (kv_heads, k)
    nh, r, _ = attn.shape
    idx = idx.repeat_interleave(nh // h, dim=0)  # (num_heads, k)
    return torch.gather(attn, 2, idx[:, None, :].expand(nh, r, k))


def _kept_attention(attn: torch.Tensor, original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The passage's own attention (num_heads, n, n) restricted to the kept tokens, as queries
    and as keys: (num_heads, k, k)."""
    # rows are passage tokens too: restrict the columns of the transpose, then transpose back
    cols = _kept_columns(attn, original, kept)  # (num_heads, n, k)
    return _kept_columns(cols.transpose(1, 2), original, kept).transpose(1, 2)
