"""The storage format of quantized KV (KIVI-style), shared by the quantize press, the torch
reference and the Triton kernel.

Keys are quantized **per channel**: each channel of a head gets its own (scale, zero) for every
group of ``group`` consecutive tokens, because key outliers sit in fixed channels. Values are
quantized **per token**: each token gets a (scale, zero) for every group of ``group`` channels.
Quantization is asymmetric, ``x ≈ code * scale + zero`` with ``code`` in ``[0, 2**bits - 1]``;
scales and zeros are fp16.

Codes are uint8. int8 codes take one byte per element. int4 codes are packed two to a byte
with the **half-split** pairing of RoPE's ``rotate_half``: byte ``j`` of a row holds channel
``j`` in its low nibble and channel ``j + head_dim // 2`` in its high nibble, so the kernel
gets both members of a rotation pair from one byte.

Shapes, for keys/values (kv_heads, n, head_dim) and ``G = group``:

* codes: (kv_heads, n, head_dim) for 8 bits, (kv_heads, n, head_dim // 2) for 4 bits
* key scale/zero: (kv_heads, ceil(n / G), head_dim)
* value scale/zero: (kv_heads, n, ceil(head_dim / G))

A ragged last group (n or head_dim not a multiple of G) is quantized over the elements it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "BITS",
    "QuantizedTensor",
    "dequantize_keys",
    "dequantize_values",
    "pack_int4",
    "quantize_keys",
    "quantize_values",
    "unpack_int4",
]

BITS = (4, 8)

# (codes, scale, zero)
QuantizedTensor = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(..., head_dim) uint8 codes < 16 → (..., head_dim // 2): low nibble = first half."""
    d = codes.shape[-1]
    if d % 2:
        raise ValueError(f"int4 packing needs an even head_dim, got {d}")
    return codes[..., : d // 2] | (codes[..., d // 2 :] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., head_dim // 2) → (..., head_dim) uint8."""
    import torch

    return torch.cat((packed & 0xF, packed >> 4), dim=-1)


def _quantize_last(x: torch.Tensor, bits: int) -> QuantizedTensor:
    """Quantize ``x`` (..., g) over its last axis: codes (..., g) uint8, scale/zero (..., 1) fp16."""
    import torch

    xf = x.float()
    if not bool(torch.isfinite(xf).all()):
        raise ValueError("cannot quantize non-finite keys/values (inf or nan in the chunk)")
    lo = xf.amin(dim=-1, keepdim=True)
    hi = xf.amax(dim=-1, keepdim=True)
    levels = (1 << bits) - 1
    # Round scale and zero to their stored fp16 first and quantize against the stored values,
    # so that dequantization sees exactly what quantization assumed.
    zero = lo.to(torch.float16)
    scale = ((hi - zero.float()) / levels).to(torch.float16)
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    codes = torch.round((xf - zero.float()) / safe).clamp_(0, levels)
    codes = torch.where(s > 0, codes, torch.zeros_like(codes))
    return codes.to(torch.uint8), scale, zero


def _pad_to(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    """Pad ``dim`` to a multiple by repeating the last element (keeps group min/max unchanged)."""
    import torch

    n = x.shape[dim]
    pad = (-n) % multiple
    if pad == 0 or n == 0:
        return x
    last = x.narrow(dim, n - 1, 1)
    reps = [1] * x.dim()
    reps[dim] = pad
    return torch.cat((x, last.repeat(*reps)), dim=dim)


def quantize_keys(keys: torch.Tensor, bits: int, group: int) -> QuantizedTensor:
    """Per-channel quantization of keys (kv_heads, n, head_dim), groups of ``group`` tokens."""
    _check_bits(bits)
    h, n, d = keys.shape
    x = _pad_to(keys, 1, group)
    g = x.shape[1] // group
    # (h, g, group, d) → quantize over the token axis of each group
    xg = x.reshape(h, g, group, d).transpose(2, 3)
    codes, scale, zero = _quantize_last(xg, bits)
    codes = codes.transpose(2, 3).reshape(h, g * group, d)[:, :n]
    if bits == 4:
        codes = pack_int4(codes)
    return codes.contiguous(), scale[..., 0].contiguous(), zero[..., 0].contiguous()


def quantize_values(values: torch.Tensor, bits: int, group: int) -> QuantizedTensor:
    """Per-token quantization of values (kv_heads, n, head_dim), groups of ``group`` channels."""
    _check_bits(bits)
    h, n, d = values.shape
    x = _pad_to(values, 2, group)
    g = x.shape[2] // group
    codes, scale, zero = _quantize_last(x.reshape(h, n, g, group), bits)
    codes = codes.reshape(h, n, g * group)[..., :d]
    if bits == 4:
        codes = pack_int4(codes)
    return codes.contiguous(), scale[..., 0].contiguous(), zero[..., 0].contiguous()


def _codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_int4(codes) if bits == 4 else codes


def dequantize_keys(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int
) -> torch.Tensor:
    """fp32 keys (kv_heads, n, head_dim) from :func:`quantize_keys` output."""
    q = _codes(codes, bits).float()
    n = q.shape[1]
    s = scale.float().repeat_interleave(group, dim=1)[:, :n]
    z = zero.float().repeat_interleave(group, dim=1)[:, :n]
    return q * s + z


def dequantize_values(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int
) -> torch.Tensor:
    """fp32 values (kv_heads, n, head_dim) from :func:`quantize_values` output."""
    q = _codes(codes, bits).float()
    d = q.shape[2]
    s = scale.float().repeat_interleave(group, dim=2)[..., :d]
    z = zero.float().repeat_interleave(group, dim=2)[..., :d]
    return q * s + z
