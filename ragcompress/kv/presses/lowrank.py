"""Low-rank: store keys (and optionally values) as coefficients on a per-layer, per-KV-head
basis calibrated offline (:func:`~ragcompress.kv.encode.calibrate.calibrate`), the CSKV
idea. Keys shrink to ``rank / head_dim`` of their bytes; values too with ``values=True``.

The press references the basis file by path and by the SHA-256 of its bytes (filled in from
the file when not given); the digest is part of the spec, so a new basis gives new chunk keys,
and a changed file is refused instead of silently decoding old chunks wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.layers.lowrank import LowRankLayer, project
from ragcompress.kv.layers.lowrank_basis import file_digest, load_verified
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import ChunkLayer

__all__ = ["LowRankPress"]


@register("lowrank", kind="press")
@dataclass
class LowRankPress:
    """``basis``: path of a basis file; ``rank``: leading columns used (0 = all of the file's);
    ``values``: also project values (the file must hold a value basis); ``digest``: SHA-256 of
    the file (computed when empty, checked when given)."""

    basis: str = ""
    rank: int = 0
    values: bool = False
    digest: str = ""
    needs_attention: ClassVar[bool] = False

    def __post_init__(self) -> None:
        from pathlib import Path

        if not self.basis or not Path(self.basis).is_file():
            raise ValueError(f"LowRankPress.basis must be the path of a basis file, got {self.basis!r}")
        self.basis = str(Path(self.basis).resolve())
        if not self.digest:
            self.digest = file_digest(self.basis)
        b = load_verified(self.basis, self.digest)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank <= b.rank:
            raise ValueError(
                f"LowRankPress.rank must be in [0, {b.rank}] for {self.basis!r}, got {self.rank!r}"
            )
        if self.values and b.value_basis is None:
            raise ValueError(f"LowRankPress.values=True but {self.basis!r} has no value basis")

    def __call__(self, layer: ChunkLayer, *, layer_idx: int, attn: torch.Tensor | None) -> ChunkLayer:
        import torch

        from ragcompress.models.rope import rotate

        b = load_verified(self.basis, self.digest)
        keys, values, positions = layer.dense()
        h, _, d = keys.shape
        if layer_idx >= b.layers or tuple(b.key_basis.shape[1:3]) != (h, d):
            raise ValueError(
                f"basis {self.basis!r} is for {b.layers} layers of {tuple(b.key_basis.shape[1:3])} "
                f"(kv_heads, head_dim); got layer {layer_idx} of {(h, d)}"
            )
        r = self.rank or b.rank
        dev = keys.device
        k = keys.float()
        if b.inv_freq is not None:
            k = rotate(k, -positions, b.inv_freq)  # back to the pre-RoPE frame of the basis
        coef = project(k, b.key_basis[layer_idx, :, :, :r].to(dev), b.key_mean[layer_idx].to(dev))
        vals = values
        if self.values:
            assert b.value_basis is not None and b.value_mean is not None
            vb, vm = b.value_basis[layer_idx, :, :, :r].to(dev), b.value_mean[layer_idx].to(dev)
            vals = project(values, vb, vm).to(values.dtype)
        small = positions.numel() == 0 or int(positions.abs().max()) < 2**31
        return LowRankLayer(
            coef.to(keys.dtype).contiguous(),
            vals.contiguous(),
            (positions.to(torch.int32) if small else positions).contiguous(),
            self.values,
            self.basis,
            self.digest,
            layer_idx,
            str(keys.dtype).removeprefix("torch."),
        )
