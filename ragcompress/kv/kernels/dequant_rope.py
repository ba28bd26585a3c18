"""Triton kernel: dequantize (int4 / int8 / none) + RoPE re-rotation + write into a KV cache slice.

Program ``(head, token block, layer)`` reads ``BLOCK_N`` tokens of one KV head of one layer,
turns codes into fp32 with their group scales, rotates each key channel pair
``(j, j + head_dim/2)`` by ``delta * inv_freq[j]`` and stores keys and values straight into
destination rows ``offset .. offset + n``. Each source byte is read once and each destination
element written once, so the kernel is bound by memory bandwidth (or, for small chunks, by the
launch): :func:`write_dense_layers_triton` / :func:`write_quantized_layers_triton` write every
layer of a chunk in one launch when the layers are stacked (as the fast path's buffer holds them).

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
    kb = k_ptr + (lh * n + tt) * DC
    if BITS == 4:
        b = tl.load(kb + j1, mask=m, other=0)
        k1 = (b & 0xF).to(tl.float32)
        k2 = (b >> 4).to(tl.float32)
    else:
        k1 = tl.load(kb + j1, mask=m, other=0).to(tl.float32)
        k2 = tl.load(kb + j2, mask=m, other=0).to(tl.float32)
    if BITS != 0:
        # per-channel scales: one row of D per group of GROUP tokens
        sb = (lh * ((n + GROUP - 1) // GROUP) + tt // GROUP) * D
        k1 = k1 * tl.load(ks_ptr + sb + j1, mask=m, other=0).to(tl.float32) + tl.load(
            kz_ptr + sb + j1, mask=m, other=0
        ).to(tl.float32)
        k2 = k2 * tl.load(ks_ptr + sb + j2, mask=m, other=0).to(tl.float32) + tl.load(
            kz_ptr + sb + j2, mask=m, other=0
        ).to(tl.float32)

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
    tl.store(ok + j1 * s_okd, (k1 * c - k2 * s).to(dk_ptr.dtype.element_ty), mask=m)
    tl.store(ok + j2 * s_okd, (k2 * c + k1 * s).to(dk_ptr.dtype.element_ty), mask=m)

    # -- values: dequantize and copy ---------------------------------------------------------
    vb = v_ptr + (lh * n + tt) * DC
    if BITS == 4:
        b = tl.load(vb + j1, mask=m, other=0)
        v1 = (b & 0xF).to(tl.float32)
        v2 = (b >> 4).to(tl.float32)
    else:
        v1 = tl.load(vb + j1, mask=m, other=0).to(tl.float32)
        v2 = tl.load(vb + j2, mask=m, other=0).to(tl.float32)
    if BITS != 0:
        # per-token scales: VG per row, one per group of GROUP channels
        sb = (lh * n + tt) * VG
        v1 = v1 * tl.load(vs_ptr + sb + j1 // GROUP, mask=m, other=0).to(tl.float32) + tl.load(
            vz_ptr + sb + j1 // GROUP, mask=m, other=0
        ).to(tl.float32)
        v2 = v2 * tl.load(vs_ptr + sb + j2 // GROUP, mask=m, other=0).to(tl.float32) + tl.load(
            vz_ptr + sb + j2 // GROUP, mask=m, other=0
        ).to(tl.float32)
    ov = dv_ptr + lyr * s_ovl + h * s_ovh + (tt + offset) * s_ovn
    tl.store(ov + j1 * s_ovd, v1.to(dv_ptr.dtype.element_ty), mask=m)
    tl.store(ov + j2 * s_ovd, v2.to(dv_ptr.dtype.element_ty), mask=m)


def _block_n(half: int) -> int:
    # ~4K elements per half-tile keeps registers low while giving each program enough bytes.
    return max(16, min(128, 4096 // triton.next_power_of_2(half)))


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launch(
    src: tuple[torch.Tensor, ...], dk: torch.Tensor, dv: torch.Tensor, delta: torch.Tensor,
    inv_freq: torch.Tensor, layers: int, h: int, n: int, d: int, offset: int, bits: int, group: int,
) -> None:  # fmt: skip
    """``src``: six tensors (codes/dense, scale, zero for keys then values), each with a leading
    layer axis; ``dk``/``dv``: (layers, kv_heads, max_len, head_dim) views; ``delta`` (h, n)."""
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


def write_dense_triton(
    keys: torch.Tensor,
    values: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Triton twin of :func:`~ragcompress.kv.kernels.reference.write_dense_reference`."""
    h, n, d = keys.shape
    if values.shape != keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")
    dk, dv, delta = check_write(dst_k, dst_v, h, n, d, offset, delta, inv_freq)
    k, v = keys[None], values[None]
    _launch((k, k, k, v, v, v), dk[None], dv[None], delta, inv_freq, 1, h, n, d, offset, 0, 1)


def write_quantized_triton(
    src: QuantizedKV,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Triton twin of :func:`~ragcompress.kv.kernels.reference.write_quantized_reference`."""
    h, n, d = src.kv_heads, src.num_tokens, src.head_dim
    dk, dv, delta = check_write(dst_k, dst_v, h, n, d, offset, delta, inv_freq)
    tensors = tuple(t[None] for t in src.tensors())
    _launch(tensors, dk[None], dv[None], delta, inv_freq, 1, h, n, d, offset, src.bits, src.group)


def write_dense_layers_triton(
    keys: torch.Tensor,
    values: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Every layer in one launch: keys/values (layers, kv_heads, n, head_dim); dst (layers,
    kv_heads, max_len, head_dim), any strides; the same ``delta`` for every layer."""
    layers, h, n, d = keys.shape
    if values.shape != keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")
    dk, dv = _stacked_dst(dst_k, layers), _stacked_dst(dst_v, layers)
    _, _, delta = check_write(dk[0], dv[0], h, n, d, offset, delta, inv_freq)
    _launch(
        (keys, keys, keys, values, values, values), dk, dv, delta, inv_freq, layers, h, n, d, offset, 0, 1
    )


def write_quantized_layers_triton(
    src: QuantizedKV,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Every layer in one launch: ``src`` from :meth:`QuantizedKV.stack` (leading layer axis)."""
    layers = int(src.key_codes.shape[0]) if src.key_codes.dim() == 4 else 0
    if layers == 0:
        raise ValueError("write_quantized_layers_triton needs a stacked QuantizedKV (QuantizedKV.stack)")
    h, n, d = src.kv_heads, src.num_tokens, src.head_dim
    dk, dv = _stacked_dst(dst_k, layers), _stacked_dst(dst_v, layers)
    _, _, delta = check_write(dk[0], dv[0], h, n, d, offset, delta, inv_freq)
    _launch(src.tensors(), dk, dv, delta, inv_freq, layers, h, n, d, offset, src.bits, src.group)
