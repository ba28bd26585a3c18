"""Triton kernel: dequantize (int4 / int8 / none) + RoPE re-rotation + write into a KV cache slice.

Program ``(head, token block, layer)`` reads ``BLOCK_N`` tokens of one KV head of one layer,
turns codes into fp32 with their group scales, rotates each key channel pair
``(j, j + head_dim/2)`` by ``delta * inv_freq[j]`` and stores keys and values straight into
destination rows ``offset .. offset + n``. Each source byte is read once and each destination
element written once, so the kernel is bound by memory bandwidth (or, for small chunks, by the
launch): :func:`write_dense_triton` / :func:`write_quantized_triton` write every layer of a chunk
in one launch when given the layers stacked on a leading axis (as the fast path's buffer holds them).
Keys and values, quantized or dense, go through the same jitted load / dequantize / store helpers.

Sources are read as contiguous tensors (strides computed in the kernel, which keeps the launch
cheap); destinations may have any strides. Importing this module needs ``triton``;
:mod:`ragcompress.kv.kernels` imports it lazily. The torch twin is
:mod:`ragcompress.kv.kernels.reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.kernels.reference import QuantizedKV, check_write

__all__ = [
    "write_dense_layers_triton",
    "write_dense_triton",
    "write_quantized_layers_triton",
    "write_quantized_triton",
]


@triton.jit
def _halves(row_ptr, j1, j2, m, BITS: tl.constexpr):
    """Channels ``j`` and ``j + HALF`` of each row as fp32: the two nibbles of one byte for 4 bits,
    two loads otherwise (8-bit codes, or dense values when ``BITS == 0``)."""
    if BITS == 4:
        b = tl.load(row_ptr + j1, mask=m, other=0)
        x1 = (b & 0xF).to(tl.float32)
        x2 = (b >> 4).to(tl.float32)
    else:
        x1 = tl.load(row_ptr + j1, mask=m, other=0).to(tl.float32)
        x2 = tl.load(row_ptr + j2, mask=m, other=0).to(tl.float32)
    return x1, x2


@triton.jit
def _dequant(x, scale_ptr, zero_ptr, idx, m):
    """``code * scale + zero`` in fp32, scale and zero read at ``idx``."""
    scale = tl.load(scale_ptr + idx, mask=m, other=0).to(tl.float32)
    return x * scale + tl.load(zero_ptr + idx, mask=m, other=0).to(tl.float32)


@triton.jit
def _store_halves(row_ptr, s_d, j1, j2, x1, x2, m):
    """Store the two channel halves into destination rows of channel stride ``s_d``."""
    tl.store(row_ptr + j1 * s_d, x1.to(row_ptr.dtype.element_ty), mask=m)
    tl.store(row_ptr + j2 * s_d, x2.to(row_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dequant_rope_kernel(
    k_ptr, ks_ptr, kz_ptr, v_ptr, vs_ptr, vz_ptr, delta_ptr, freq_ptr, dk_ptr, dv_ptr,
    H, n, offset, s_dh, s_dn,
    s_okl, s_okh, s_okn, s_okd, s_ovl, s_ovh, s_ovn, s_ovd,
    HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BITS: tl.constexpr, GROUP: tl.constexpr, UNIFORM: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    lyr = tl.program_id(2).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    j = tl.arange(0, BLOCK_D)
    tm = t < n
    jm = j < HALF
    m = tm[:, None] & jm[None, :]
    tt = t[:, None]
    j1 = j[None, :]
    j2 = j1 + HALF
    D: tl.constexpr = 2 * HALF
    DC: tl.constexpr = HALF if BITS == 4 else D  # code bytes per row
    VG: tl.constexpr = (D + GROUP - 1) // GROUP  # value scale groups per row
    lh = lyr * H + h  # (layer, head) row of every contiguous source

    # -- keys: both halves of every rotation pair --------------------------------------------
    k1, k2 = _halves(k_ptr + (lh * n + tt) * DC, j1, j2, m, BITS)
    if BITS != 0:
        # per-channel scales: one row of D per group of GROUP tokens
        sb = (lh * ((n + GROUP - 1) // GROUP) + tt // GROUP) * D
        k1 = _dequant(k1, ks_ptr, kz_ptr, sb + j1, m)
        k2 = _dequant(k2, ks_ptr, kz_ptr, sb + j2, m)

    # -- re-rotation by delta * inv_freq (rotate_half convention) ----------------------------
    f = tl.load(freq_ptr + j, mask=jm, other=0.0)
    if UNIFORM:
        # One delta for the whole chunk (the usual assembly case): cos/sin of one row, shared by
        # every token, instead of BLOCK_N rows of transcendentals.
        ang1 = tl.load(delta_ptr).to(tl.float32) * f
        c = tl.cos(ang1)[None, :]
        s = tl.sin(ang1)[None, :]
    else:
        d = tl.load(delta_ptr + h * s_dh + t * s_dn, mask=tm, other=0).to(tl.float32)
        ang = d[:, None] * f[None, :]
        c = tl.cos(ang)
        s = tl.sin(ang)
    ok = dk_ptr + lyr * s_okl + h * s_okh + (tt + offset) * s_okn
    _store_halves(ok, s_okd, j1, j2, k1 * c - k2 * s, k2 * c + k1 * s, m)

    # -- values: dequantize and copy ---------------------------------------------------------
    v1, v2 = _halves(v_ptr + (lh * n + tt) * DC, j1, j2, m, BITS)
    if BITS != 0:
        # per-token scales: VG per row, one per group of GROUP channels
        sb = (lh * n + tt) * VG
        v1 = _dequant(v1, vs_ptr, vz_ptr, sb + j1 // GROUP, m)
        v2 = _dequant(v2, vs_ptr, vz_ptr, sb + j2 // GROUP, m)
    ov = dv_ptr + lyr * s_ovl + h * s_ovh + (tt + offset) * s_ovn
    _store_halves(ov, s_ovd, j1, j2, v1, v2, m)


def _block_n(half: int) -> int:
    # ~4K elements per half-tile keeps registers low while giving each program enough bytes.
    return max(16, min(128, 4096 // triton.next_power_of_2(half)))


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launch(
    src: tuple[torch.Tensor, ...], dk: torch.Tensor, dv: torch.Tensor, delta: torch.Tensor,
    inv_freq: torch.Tensor, offset: int, bits: int, group: int,
) -> None:  # fmt: skip
    """``src``: six tensors (codes/dense, scale, zero for keys then values) of shape (layers,
    kv_heads, n, ..); ``dk``/``dv``: (layers, kv_heads, max_len, head_dim) views; ``delta`` (h, n)."""
    layers, h, n, d = dk.shape[0], dk.shape[1], delta.shape[1], dk.shape[3]
    if n == 0 or layers == 0:
        return
    if dk.device.type != "cuda" and not _interpreting():
        raise ValueError(f"the Triton kernel needs CUDA tensors; the destination is on {dk.device}")
    for t in src:
        if t.device != dk.device:
            raise ValueError(f"source on {t.device}, destination on {dk.device}")
    k, ks, kz, v, vs, vz = (t.contiguous() for t in src)
    half = d // 2
    block_n = _block_n(half)
    freq = inv_freq.to(device=dk.device, dtype=torch.float32).contiguous()
    grid: Any = (h, triton.cdiv(n, block_n), layers)
    _dequant_rope_kernel[grid](
        k, ks, kz, v, vs, vz, delta, freq, dk, dv, h, n, offset, *delta.stride(), *dk.stride(), *dv.stride(),
        HALF=half, BLOCK_D=triton.next_power_of_2(half), BLOCK_N=block_n, BITS=bits, GROUP=group,
        UNIFORM=delta.stride() == (0, 0), num_warps=4,
    )  # fmt: skip


def _stacked_dst(dst: torch.Tensor, layers: int) -> torch.Tensor:
    if dst.dim() != 4 or dst.shape[0] != layers:
        raise ValueError(
            f"stacked destination must be ({layers}, kv_heads, max_len, head_dim), got {tuple(dst.shape)}"
        )
    return dst


def _write(
    src: tuple[torch.Tensor, ...], bits: int, group: int, layer_shape: tuple[int, int, int],
    dst: tuple[torch.Tensor, torch.Tensor], offset: int, delta: torch.Tensor, inv_freq: torch.Tensor,
) -> None:  # fmt: skip
    """Validate one write and launch it. ``src``: the six source tensors of one layer, or of every
    layer stacked on a leading axis (then ``dst`` is stacked the same way); ``layer_shape``:
    (kv_heads, n, head_dim) of one layer."""
    h, n, d = layer_shape
    if src[0].dim() == 4:  # every layer of a chunk in one launch
        layers = int(src[0].shape[0])
        dk, dv = _stacked_dst(dst[0], layers), _stacked_dst(dst[1], layers)
        _, _, delta = check_write(dk[0], dv[0], h, n, d, offset, delta, inv_freq)
    else:
        dk, dv, delta = check_write(dst[0], dst[1], h, n, d, offset, delta, inv_freq)
        src, dk, dv = tuple(t[None] for t in src), dk[None], dv[None]
    _launch(src, dk, dv, delta, inv_freq, offset, bits, group)


def write_dense_triton(
    keys: torch.Tensor,
    values: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Triton twin of :func:`~ragcompress.kv.kernels.reference.write_dense_reference`.

    keys/values (kv_heads, n, head_dim) into dst (1, kv_heads, max_len, head_dim); or every layer
    in one launch: keys/values (layers, kv_heads, n, head_dim) into dst (layers, kv_heads, max_len,
    head_dim), the same ``delta`` for every layer. Destinations may have any strides.
    """
    if values.shape != keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")
    h, n, d = keys.shape[-3:]
    k, v = keys, values  # dense: the codes are the values, scale/zero never read (BITS == 0)
    _write((k, k, k, v, v, v), 0, 1, (h, n, d), (dst_k, dst_v), offset, delta, inv_freq)


def write_quantized_triton(
    src: QuantizedKV,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Triton twin of :func:`~ragcompress.kv.kernels.reference.write_quantized_reference`, laid out
    like :func:`write_dense_triton`: a ``src`` from :meth:`QuantizedKV.stack` (leading layer axis)
    writes every layer of a chunk in one launch."""
    shape = (src.kv_heads, src.num_tokens, src.head_dim)
    _write(src.tensors(), src.bits, src.group, shape, (dst_k, dst_v), offset, delta, inv_freq)


#: The stacked forms by their former names: :func:`write_dense_triton` and
#: :func:`write_quantized_triton` take a leading layer axis themselves.
write_dense_layers_triton = write_dense_triton
write_quantized_layers_triton = write_quantized_triton
