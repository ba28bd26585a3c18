"""Quantize: int8 / int4 KV with group-wise fp16 scales, keys per channel and values per token
(KIVI, Liu et al. 2024), codes packed so the stored bytes really shrink.

Bytes per element: ``bits / 8`` for the codes plus ``4 / group`` for scale and zero (both fp16)
— int4 with group 32 stores 0.625 bytes per element, 31% of fp16. Dequantization happens at
assembly (fused with re-rotation on the GPU, :mod:`ragcompress.kv.kernels`). Apply it after
an eviction press with a composition (``[{"name": "knorm", ...}, {"name": "quantize", ...}]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.kv.kernels.quant_format import BITS, quantize_keys, quantize_values
from ragcompress.kv.kernels.reference import QuantizedKV
from ragcompress.kv.layers.quantized import QuantizedLayer
from ragcompress.registry import register

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import ChunkLayer

__all__ = ["QuantizePress"]


@register("quantize", kind="press")
@dataclass
class QuantizePress:
    """``bits`` ∈ {4, 8}; ``group_size``: tokens per key scale group and channels per value
    scale group (a ragged last group is allowed)."""

    bits: int = 4
    group_size: int = 32
    needs_attention: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.bits not in BITS or isinstance(self.bits, bool):
            raise ValueError(f"QuantizePress.bits must be one of {BITS}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"QuantizePress.group_size must be an int ≥ 1, got {self.group_size!r}")

    def __call__(self, layer: ChunkLayer, *, layer_idx: int, attn: torch.Tensor | None) -> ChunkLayer:
        import torch

        keys, values, positions = layer.dense()
        if keys.shape[-1] % 2:
            raise ValueError(f"quantize needs an even head_dim, got {keys.shape[-1]}")
        kc, ks, kz = quantize_keys(keys, self.bits, self.group_size)
        vc, vs, vz = quantize_values(values, self.bits, self.group_size)
        kv = QuantizedKV(kc, ks, kz, vc, vs, vz, bits=self.bits, group=self.group_size)
        small = positions.numel() == 0 or int(positions.abs().max()) < 2**31
        pos = positions.to(torch.int32) if small else positions
        return QuantizedLayer(kv, pos.contiguous(), str(keys.dtype).removeprefix("torch."))
