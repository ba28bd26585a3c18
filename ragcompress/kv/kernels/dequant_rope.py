"""Triton kernel: dequantize (int4 / int8 / none) + RoPE re-rotation + write into a KV cache slice.

One launch writes one layer of one chunk: program ``(head, token block)`` reads ``BLOCK_N``
tokens of one KV head, turns codes into fp32 with their group scales, rotates each key channel
pair ``(j, j + head_dim/2)`` by ``delta[head, token] * inv_freq[j]`` and stores keys and values
straight into the destination rows ``offset .. offset + n``. Each source byte is read once and
each destination element written once, so the kernel is bound by memory bandwidth.

Importing this module needs ``triton``; :mod:`ragcompress.kv.kernels` imports it lazily.
The torch twin is :mod:`ragcompress.kv.kernels.reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.kernels.reference import QuantizedKV, check_write

__all__ = ["write_dense_triton", "write_quantized_triton"]


@triton.jit
def _dequant_rope_kernel(
    k_ptr, ks_ptr, kz_ptr, v_ptr, vs_ptr, vz_ptr, delta_ptr, freq_ptr, dk_ptr, dv_ptr,
    n, offset,
    s_kh, s_kn, s_kd, s_ksh, s_ksg, s_ksd,
    s_vh, s_vn, s_vd, s_vsh, s_vsn, s_vsg,
    s_dh, s_dn,
    s_okh, s_okn, s_okd, s_ovh, s_ovn, s_ovd,
    HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BITS: tl.constexpr, GROUP: tl.constexpr, UNIFORM: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    j = tl.arange(0, BLOCK_D)
    tm = t < n
    jm = j < HALF
    m = tm[:, None] & jm[None, :]
    tt = t[:, None]
    j1 = j[None, :]
    j2 = j1 + HALF

    # -- keys: load the two halves of every rotation pair ------------------------------------
    kb = k_ptr + h * s_kh + tt * s_kn
    if BITS == 4:
        b = tl.load(kb + j1 * s_kd, mask=m, other=0)
        k1 = (b & 0xF).to(tl.float32)
        k2 = (b >> 4).to(tl.float32)
    else:
        k1 = tl.load(kb + j1 * s_kd, mask=m, other=0).to(tl.float32)
        k2 = tl.load(kb + j2 * s_kd, mask=m, other=0).to(tl.float32)
    if BITS != 0:
        # per-channel scales: one row per group of GROUP tokens
        sb = h * s_ksh + (tt // GROUP) * s_ksg
        k1 = k1 * tl.load(ks_ptr + sb + j1 * s_ksd, mask=m, other=0).to(tl.float32) + tl.load(
            kz_ptr + sb + j1 * s_ksd, mask=m, other=0
        ).to(tl.float32)
        k2 = k2 * tl.load(ks_ptr + sb + j2 * s_ksd, mask=m, other=0).to(tl.float32) + tl.load(
            kz_ptr + sb + j2 * s_ksd, mask=m, other=0
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
    ok = dk_ptr + h * s_okh + (tt + offset) * s_okn
    tl.store(ok + j1 * s_okd, (k1 * c - k2 * s).to(dk_ptr.dtype.element_ty), mask=m)
    tl.store(ok + j2 * s_okd, (k2 * c + k1 * s).to(dk_ptr.dtype.element_ty), mask=m)

    # -- values: dequantize and copy ---------------------------------------------------------
    vb = v_ptr + h * s_vh + tt * s_vn
    if BITS == 4:
        b = tl.load(vb + j1 * s_vd, mask=m, other=0)
        v1 = (b & 0xF).to(tl.float32)
        v2 = (b >> 4).to(tl.float32)
    else:
        v1 = tl.load(vb + j1 * s_vd, mask=m, other=0).to(tl.float32)
        v2 = tl.load(vb + j2 * s_vd, mask=m, other=0).to(tl.float32)
    if BITS != 0:
        # per-token scales: one column per group of GROUP channels
        sb = h * s_vsh + tt * s_vsn
        v1 = v1 * tl.load(vs_ptr + sb + (j1 // GROUP) * s_vsg, mask=m, other=0).to(tl.float32) + tl.load(
            vz_ptr + sb + (j1 // GROUP) * s_vsg, mask=m, other=0
        ).to(tl.float32)
        v2 = v2 * tl.load(vs_ptr + sb + (j2 // GROUP) * s_vsg, mask=m, other=0).to(tl.float32) + tl.load(
            vz_ptr + sb + (j2 // GROUP) * s_vsg, mask=m, other=0
        ).to(tl.float32)
    ov = dv_ptr + h * s_ovh + (tt + offset) * s_ovn
    tl.store(ov + j1 * s_ovd, v1.to(dv_ptr.dtype.element_ty), mask=m)
    tl.store(ov + j2 * s_ovd, v2.to(dv_ptr.dtype.element_ty), mask=m)


def _block_n(half: int) -> int:
    # ~4K elements per half-tile keeps registers low while giving each program enough bytes.
    return max(16, min(128, 4096 // triton.next_power_of_2(half)))


def _launch(
    k: torch.Tensor, ks: torch.Tensor, kz: torch.Tensor,
    v: torch.Tensor, vs: torch.Tensor, vz: torch.Tensor,
    dk: torch.Tensor, dv: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor,
    h: int, n: int, d: int, offset: int, bits: int, group: int,
) -> None:  # fmt: skip
    if n == 0:
        return
    for name, t in (("source", k), ("destination", dk), ("delta", delta)):
        if t.device.type != "cuda" and not _interpreting():
            raise ValueError(f"the Triton kernel needs CUDA tensors; the {name} is on {t.device}")
    half = d // 2
    block_n = _block_n(half)
    freq = inv_freq.to(device=dk.device, dtype=torch.float32).contiguous()
    grid: Any = (h, triton.cdiv(n, block_n))
    _dequant_rope_kernel[grid](
        k, ks, kz, v, vs, vz, delta, freq, dk, dv, n, offset,
        *k.stride(), *ks.stride(), *v.stride(), *vs.stride(), *delta.stride(), *dk.stride(), *dv.stride(),
        HALF=half, BLOCK_D=triton.next_power_of_2(half), BLOCK_N=block_n, BITS=bits, GROUP=group,
        UNIFORM=delta.stride() == (0, 0),
        num_warps=4,
    )  # fmt: skip


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    # Strides of dummy scale tensors are never read when BITS == 0.
    _launch(keys, keys, keys, values, values, values, dk, dv, delta, inv_freq, h, n, d, offset, 0, 1)


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
    _launch(
        src.key_codes, src.key_scale, src.key_zero, src.value_codes, src.value_scale, src.value_zero,
        dk, dv, delta, inv_freq, h, n, d, offset, src.bits, src.group,
    )  # fmt: skip
