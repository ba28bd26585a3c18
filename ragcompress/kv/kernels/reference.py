"""Torch reference of the fused "dequantize + re-rotate + write" step of KV assembly.

Every function here has a Triton twin in :mod:`ragcompress.kv.kernels.dequant_rope` that
computes exactly the same thing (same fp32 arithmetic, same rounding to the destination
dtype); the GPU tests compare the two on random inputs.

Re-rotation is :func:`ragcompress.models.rope.rotate` (the one torch RoPE reference, exported
here as ``rerotate``): the channel pair ``(j, j + head_dim // 2)`` turns by ``delta * inv_freq[j]``,
``inv_freq`` being the layer's table from the model's :class:`~ragcompress.models.arch.ModelArch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values
from ragcompress.models.rope import rotate as rerotate

if TYPE_CHECKING:
    import torch

__all__ = ["QuantizedKV", "rerotate", "write_dense_reference", "write_quantized_reference"]


@dataclass(frozen=True, eq=False)
class QuantizedKV:
    """The raw tensors of one quantized layer (see :mod:`~ragcompress.kv.kernels.quant_format`).

    key_codes/value_codes: (kv_heads, n, head_dim // 2) uint8 for 4 bits, (kv_heads, n, head_dim)
    for 8; key_scale/key_zero: (kv_heads, ceil(n / group), head_dim) fp16; value_scale/value_zero:
    (kv_heads, n, ceil(head_dim / group)) fp16.
    """

    key_codes: torch.Tensor
    key_scale: torch.Tensor
    key_zero: torch.Tensor
    value_codes: torch.Tensor
    value_scale: torch.Tensor
    value_zero: torch.Tensor
    bits: int
    group: int

    @property
    def kv_heads(self) -> int:
        return int(self.key_codes.shape[-3])

    @property
    def num_tokens(self) -> int:
        return int(self.key_codes.shape[-2])

    @property
    def head_dim(self) -> int:
        d = int(self.key_codes.shape[-1])
        return 2 * d if self.bits == 4 else d

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(key_codes, key_scale, key_zero, value_codes, value_scale, value_zero)."""
        return (
            self.key_codes,
            self.key_scale,
            self.key_zero,
            self.value_codes,
            self.value_scale,
            self.value_zero,
        )

    @classmethod
    def stack(cls, layers: Sequence[QuantizedKV]) -> QuantizedKV:
        """The layers of one chunk stacked on a leading axis (same shapes, bits and group)."""
        import torch

        if not layers or any((q.bits, q.group) != (layers[0].bits, layers[0].group) for q in layers):
            raise ValueError("stacking needs ≥ 1 layers quantized with the same bits and group")
        kc, ks, kz, vc, vs, vz = (torch.stack(ts) for ts in zip(*(q.tensors() for q in layers), strict=True))
        return cls(kc, ks, kz, vc, vs, vz, bits=layers[0].bits, group=layers[0].group)

    def layer(self, i: int) -> QuantizedKV:
        """Layer ``i`` of a stacked QuantizedKV."""
        kc, ks, kz, vc, vs, vz = (t[i] for t in self.tensors())
        return QuantizedKV(kc, ks, kz, vc, vs, vz, bits=self.bits, group=self.group)


def _slot(dst: torch.Tensor) -> torch.Tensor:
    """The (kv_heads, max_len, head_dim) view of a (1, kv_heads, max_len, head_dim) cache."""
    if dst.dim() == 4:
        if dst.shape[0] != 1:
            raise ValueError(f"destination batch must be 1, got shape {tuple(dst.shape)}")
        return dst[0]
    if dst.dim() != 3:
        raise ValueError(f"destination must be (1, kv_heads, max_len, head_dim), got {tuple(dst.shape)}")
    return dst


def check_write(
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    kv_heads: int,
    n: int,
    head_dim: int,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a write; returns the 3-d destination views and ``delta`` expanded to (kv_heads, n)."""
    dk, dv = _slot(dst_k), _slot(dst_v)
    if dk.shape != dv.shape:
        raise ValueError(f"key and value destinations differ: {tuple(dk.shape)} vs {tuple(dv.shape)}")
    h, max_len, d = dk.shape
    if (h, d) != (kv_heads, head_dim):
        raise ValueError(f"destination has (kv_heads, head_dim) = {(h, d)}, the layer {(kv_heads, head_dim)}")
    if head_dim % 2:
        raise ValueError(f"RoPE re-rotation needs an even head_dim, got {head_dim}")
    if offset < 0 or offset + n > max_len:
        raise ValueError(f"writing {n} tokens at offset {offset} overflows a destination of {max_len}")
    if tuple(inv_freq.shape) != (head_dim // 2,):
        raise ValueError(f"inv_freq must have shape ({head_dim // 2},), got {tuple(inv_freq.shape)}")
    if delta.is_floating_point():
        raise ValueError("delta must be integer positions")
    try:
        delta = delta.to(dk.device).expand(kv_heads, n)
    except RuntimeError:
        raise ValueError(
            f"delta of shape {tuple(delta.shape)} does not broadcast to {(kv_heads, n)}"
        ) from None
    return dk, dv, delta


def write_dense_reference(
    keys: torch.Tensor,
    values: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """``dst_k[.., offset:offset+n] = rerotate(keys, delta)``, ``dst_v[..] = values``.

    keys/values: (kv_heads, n, head_dim), any float dtype; dst: (1, kv_heads, max_len, head_dim)
    or (kv_heads, max_len, head_dim), any strides; delta: int64 broadcastable to (kv_heads, n).
    """
    h, n, d = keys.shape
    dk, dv, delta = check_write(dst_k, dst_v, h, n, d, offset, delta, inv_freq)
    dk[:, offset : offset + n] = rerotate(keys.float(), delta, inv_freq).to(dk.dtype)
    dv[:, offset : offset + n] = values.float().to(dv.dtype)


def write_quantized_reference(
    src: QuantizedKV,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Like :func:`write_dense_reference` for a quantized layer (dequantized in fp32 first)."""
    h, n, d = src.kv_heads, src.num_tokens, src.head_dim
    dk, dv, delta = check_write(dst_k, dst_v, h, n, d, offset, delta, inv_freq)
    keys = dequantize_keys(src.key_codes, src.key_scale, src.key_zero, src.bits, src.group)
    values = dequantize_values(src.value_codes, src.value_scale, src.value_zero, src.bits, src.group)
    dk[:, offset : offset + n] = rerotate(keys, delta, inv_freq).to(dk.dtype)
    dv[:, offset : offset + n] = values.to(dv.dtype)
