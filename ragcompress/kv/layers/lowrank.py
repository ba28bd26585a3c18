"""A chunk layer whose keys (and optionally values) are coefficients on a low-rank basis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import ChunkLayer, check_dtypes, register_layer
from ragcompress.kv.layers.lowrank_basis import LowRankBasis, load_verified

if TYPE_CHECKING:
    import torch

__all__ = ["LowRankLayer", "project", "reconstruct"]


def project(x: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(h, n, d) → coefficients (h, n, r) on orthonormal columns ``basis`` (h, d, r), fp32."""
    return (x.float() - mean[:, None]) @ basis


def reconstruct(coef: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`project` (exact when r = d): (h, n, r) → (h, n, d) fp32."""
    return coef.float() @ basis.transpose(-1, -2) + mean[:, None]


@register_layer("lowrank")
@dataclass(frozen=True, eq=False)
class LowRankLayer(ChunkLayer):
    """``key_coef`` (kv_heads, n, rank); ``values``: coefficients (kv_heads, n, rank) when
    ``values_lowrank`` else dense (kv_heads, n, head_dim); ``positions`` (kv_heads, n) int32.
    The basis is referenced by ``basis_path`` + ``digest`` and row ``layer_idx`` of it."""

    key_coef: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    values_lowrank: bool
    basis_path: str
    digest: str
    layer_idx: int
    dtype: str

    @property
    def basis(self) -> LowRankBasis:
        return load_verified(self.basis_path, self.digest)

    def __post_init__(self) -> None:
        h, n, r = self.key_coef.shape
        if tuple(self.positions.shape) != (h, n) or tuple(self.values.shape[:2]) != (h, n):
            raise ValueError(
                f"low-rank layer: key_coef {tuple(self.key_coef.shape)}, "
                f"values {tuple(self.values.shape)} and "
                f"positions {tuple(self.positions.shape)} disagree"
            )
        if self.values_lowrank and self.values.shape[2] != r:
            raise ValueError(f"low-rank layer: value coefficients have rank {self.values.shape[2]}, keys {r}")
        check_dtypes(
            "low-rank layer",
            floating={"key_coef": self.key_coef, "values": self.values},
            integer={"positions": self.positions},
        )

    def heads_dim(self) -> tuple[int, int]:
        # the (cached, verified) basis gives head_dim without reconstructing any key
        return int(self.key_coef.shape[0]), int(self.basis.key_mean.shape[-1])

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        from ragcompress.kv.kernels.reference import rerotate

        b, li, r = self.basis, self.layer_idx, int(self.key_coef.shape[2])
        dev, dt = self.key_coef.device, getattr(torch, self.dtype)
        kb, km = b.key_basis[li, :, :, :r].to(dev), b.key_mean[li].to(dev)
        keys = reconstruct(self.key_coef, kb, km)
        pos = self.positions.long()
        if b.inv_freq is not None:
            keys = rerotate(keys, pos, b.inv_freq.to(dev))
        values = self.values
        if self.values_lowrank:
            assert b.value_basis is not None and b.value_mean is not None
            values = reconstruct(values, b.value_basis[li, :, :, :r].to(dev), b.value_mean[li].to(dev))
        return keys.to(dt), values.to(dt), pos

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"key_coef": self.key_coef, "values": self.values, "positions": self.positions}

    def meta(self) -> dict[str, str]:
        return {
            "values_lowrank": str(int(self.values_lowrank)),
            "basis_path": self.basis_path,
            "digest": self.digest,
            "layer_idx": str(self.layer_idx),
            "dtype": self.dtype,
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> LowRankLayer:
        need = ("values_lowrank", "basis_path", "digest", "layer_idx", "dtype")
        missing = [k for k in ("key_coef", "values", "positions") if k not in tensors]
        missing += [k for k in need if k not in meta]
        if missing:
            raise ValueError(f"low-rank layer: stored data lacks {missing}")
        return cls(
            tensors["key_coef"],
            tensors["values"],
            tensors["positions"],
            meta["values_lowrank"] == "1",
            meta["basis_path"],
            meta["digest"],
            int(meta["layer_idx"]),
            meta["dtype"],
        )

    @property
    def num_tokens(self) -> int:
        return int(self.key_coef.shape[1])
