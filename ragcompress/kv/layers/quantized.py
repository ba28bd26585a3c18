"""A chunk layer stored as int4/int8 codes with fp16 group scales (format in
:mod:`ragcompress.kv.kernels.quant_format`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import ChunkLayer, check_dtypes, register_layer
from ragcompress.kv.kernels.quant_format import BITS, dequantize_keys, dequantize_values
from ragcompress.kv.kernels.reference import QuantizedKV

if TYPE_CHECKING:
    import torch

__all__ = ["QuantizedLayer"]

_TENSORS = ("key_codes", "key_scale", "key_zero", "value_codes", "value_scale", "value_zero", "positions")


@register_layer("quantized")
@dataclass(frozen=True, eq=False)
class QuantizedLayer(ChunkLayer):
    """Quantized keys/values of one layer; ``dense()`` dequantizes to ``dtype``.

    ``kv`` holds codes and scales; ``positions`` (kv_heads, n) int32 (int64 in ``dense()``);
    ``dtype`` the name of the dtype the layer had before quantization.
    """

    kv: QuantizedKV
    positions: torch.Tensor
    dtype: str

    def __post_init__(self) -> None:
        kv = self.kv
        h, n = kv.kv_heads, kv.num_tokens
        d, g = kv.head_dim, kv.group
        want = {
            "key_codes": (h, n, d // 2 if kv.bits == 4 else d),
            "value_codes": (h, n, d // 2 if kv.bits == 4 else d),
            "key_scale": (h, -(-n // g), d),
            "key_zero": (h, -(-n // g), d),
            "value_scale": (h, n, -(-d // g)),
            "value_zero": (h, n, -(-d // g)),
        }
        for name, shape in want.items():
            got = tuple(getattr(kv, name).shape)
            if got != shape:
                raise ValueError(f"quantized layer: {name} has shape {got}, expected {shape}")
        if tuple(self.positions.shape) != (h, n):
            raise ValueError(
                f"quantized layer: positions has shape {tuple(self.positions.shape)}, expected {(h, n)}"
            )
        scales = {name: getattr(kv, name) for name in ("key_scale", "key_zero", "value_scale", "value_zero")}
        check_dtypes("quantized layer", floating=scales, integer={"positions": self.positions})
        import torch

        for name in ("key_codes", "value_codes"):
            codes = getattr(kv, name)
            if codes.dtype != torch.uint8:  # the kernels read bytes
                raise ValueError(f"quantized layer: {name} must be uint8, got {codes.dtype}")

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        kv, dt = self.kv, getattr(torch, self.dtype)
        keys = dequantize_keys(kv.key_codes, kv.key_scale, kv.key_zero, kv.bits, kv.group)
        values = dequantize_values(kv.value_codes, kv.value_scale, kv.value_zero, kv.bits, kv.group)
        return keys.to(dt), values.to(dt), self.positions.long()

    def quantized_kv(self) -> QuantizedKV:
        """The raw codes and scales, as the fused assembly kernel reads them."""
        return self.kv

    def tensors(self) -> dict[str, torch.Tensor]:
        kv = self.kv
        return {name: getattr(kv, name) if name != "positions" else self.positions for name in _TENSORS}

    def meta(self) -> dict[str, str]:
        return {"bits": str(self.kv.bits), "group": str(self.kv.group), "dtype": self.dtype}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> QuantizedLayer:
        import torch

        missing = [k for k in _TENSORS if k not in tensors] + [
            k for k in ("bits", "group", "dtype") if k not in meta
        ]
        if missing:
            raise ValueError(f"quantized layer: stored data lacks {missing}")
        bits, group, dtype = int(meta["bits"]), int(meta["group"]), meta["dtype"]
        if bits not in BITS or group < 1:
            raise ValueError(f"quantized layer: bad stored bits={bits} / group={group}")
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"quantized layer: unknown stored dtype {dtype!r}")
        t = tensors
        kv = QuantizedKV(
            t["key_codes"], t["key_scale"], t["key_zero"],
            t["value_codes"], t["value_scale"], t["value_zero"],
            bits=bits, group=group,
        )  # fmt: skip
        return cls(kv, tensors["positions"], dtype)

    @property
    def num_tokens(self) -> int:
        return self.kv.num_tokens

    def heads_dim(self) -> tuple[int, int]:
        return self.kv.kv_heads, self.kv.head_dim
