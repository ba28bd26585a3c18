"""Triton kernel: the paged context pass over int4 or int8 pool blocks, dequantized in registers.

The pool (:class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool`) holds half-split int4 codes
(byte ``j`` of a row: channel ``j`` low nibble, ``j + D/2`` high; an
:class:`~ragcompress.kv.fast.pool_int4.Int8ChunkPool` one byte a channel, ``BITS = 8``), a key
scale and zero per block and channel, a value scale and zero per token and half head. A
block's key codes unpack into the two halves of a RoPE rotation pair, so its scores are two
half-width products against the query halves rotated by the chunk's ``-delta`` (``a1 = q1 c +
q2 s``, ``a2 = q2 c - q1 s``); its values are dequantized with two (BS,) vectors a half, one
product each. The table, the splits, the one-block-ahead table rows and the partials are
:mod:`~ragcompress.kv.fast._paged`'s. A half-precision step multiplies fp16 operands (codes
dequantized into fp16 by their bits, :func:`_half`): 5-11% faster a layer than bf16 operands
dequantized through fp32, and finer (``benchmarks/results/ttft_paged_int4_f16_h200/``).

On an H200 at 32K (one layer, 32 question tokens) this ran 100 µs (Llama-3-8B heads) and 97
(Qwen2.5-7B) against 84/86 for the bf16 pass it was timed beside (v5, before rows one block
ahead), reading 0.28x the bytes; gathering the value scales per element instead of as vectors
cost 2x (``benchmarks/results/ttft_paged_int4_h200/``, ``ttft_paged_int4_v2_h200/``). The
torch twin is :func:`~ragcompress.kv.fast.paged_int4.paged_int4_reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import base2_weights, partials, store_partial
from ragcompress.kv.fast._paged import _entries, _row, question_rows, question_tables
from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs
from ragcompress.kv.fast.waves import PAGED_INT4, Tiling

# one layer's (key codes, key scale, key zero, value codes, value scale, value zero)
Int4Views = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["paged_int4_context"]


@triton.jit
def _half(codes, scale, zero, dt: tl.constexpr):
    """Dequantized (BS, D/2) half, ``codes * scale + zero`` in ``dt``. fp16: each code (0..255)
    becomes ``1024 + code`` exactly by its bits under fp16's exponent of 1024 (``0x6400``), no
    int-to-float conversion, and the subtraction and multiply-add run on fp16 pairs (one
    rounding, finer than bf16's); otherwise in fp32, then ``dt``."""
    if dt == tl.float16:
        x = (codes.to(tl.uint16) | tl.full(codes.shape, 0x6400, tl.uint16)).to(tl.float16, bitcast=True)
        x = x - tl.full(codes.shape, 1024.0, tl.float16)
        return x * scale.to(tl.float16) + zero.to(tl.float16)
    return (codes.to(tl.float32) * scale.to(tl.float32) + zero.to(tl.float32)).to(dt)


@triton.jit
def _halves(c_ptr, crow, km, HALF: tl.constexpr, BITS: tl.constexpr):
    """The codes of a block's channels ``[0, D/2)`` and ``[D/2, D)``, (BS, D/2) each: the two
    nibbles of one byte (int4, half-split), or two bytes ``D/2`` apart (int8)."""
    if BITS == 4:
        c = tl.load(c_ptr + crow, mask=km[:, None], other=0)
        return c & 0xF, c >> 4
    return tl.load(c_ptr + crow, mask=km[:, None], other=0), tl.load(
        c_ptr + crow + HALF, mask=km[:, None], other=0
    )


@triton.jit
def _rotated_halves(qrow, i, rm, freq, delta, HALF: tl.constexpr, dt: tl.constexpr):
    """The query rows' halves rotated by ``-delta``: ``(q1 c + q2 s, q2 c - q1 s)``, (BLOCK_M,
    D/2) each in ``dt`` (read again at each rotation, not held in fp32, as _paged.py)."""
    q1 = tl.load(qrow + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(qrow + HALF + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    ang = delta.to(tl.float32) * freq
    c = tl.cos(ang)[None, :]
    s = tl.sin(ang)[None, :]
    return (q1 * c + q2 * s).to(dt), (q2 * c - q1 * s).to(dt)


@triton.jit
def _paged_int4_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sc_t, sks_b, svs_t, NG, QG, TAB_Q, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BITS: tl.constexpr, OP: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, QG, TAB_Q, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    wait_inputs(PDL)  # the queries (and what the step wrote before) are earlier outputs
    CW: tl.constexpr = HALF if BITS == 4 else D  # code bytes a head
    dt = OP  # the products' operands: fp16 for a bf16/fp16 step (see paged_int4_context)
    i = tl.arange(0, HALF)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    freq = tl.load(freq_ptr + i)
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HALF], tl.float32)
    acc2 = tl.zeros([BLOCK_M, HALF], tl.float32)
    a1 = tl.zeros([BLOCK_M, HALF], dt)
    a2 = tl.zeros([BLOCK_M, HALF], dt)
    last = tl.full((), 0, tl.int32)  # any value: a split's first entry always rotates
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)  # one block ahead, as _paged.py
        if (delta != last) | (e == e0):  # once a chunk, as _paged.py
            a1, a2 = _rotated_halves(qrow, i, rm, freq, delta, HALF, dt)
            last = delta
        slots = blk * BS + n
        km = n < used
        crow = slots[:, None] * sc_t + kv * CW + i[None, :]
        kc1, kc2 = _halves(kc_ptr, crow, km, HALF, BITS)
        kq = blk * sks_b + kv * D + i  # the block's key scale/zero, per channel
        k1 = _half(kc1, tl.load(ks_ptr + kq)[None, :], tl.load(kz_ptr + kq)[None, :], dt)
        kq += HALF
        k2 = _half(kc2, tl.load(ks_ptr + kq)[None, :], tl.load(kz_ptr + kq)[None, :], dt)
        s = tl.dot(a1, tl.trans(k1)) + tl.dot(a2, tl.trans(k2))  # unscaled (base2_weights)
        s = tl.where(km[None, :], s, float("-inf"))
        m_i, l_i, alpha, p = base2_weights(s, qk_scale, m_i, l_i)
        vc1, vc2 = _halves(vc_ptr, crow, km, HALF, BITS)
        # a token's value scale and zero are (BS,) vectors a half, broadcast over its channels:
        # gathered per element they cost 2x the pass (results/ttft_paged_int4_h200/)
        vq = slots * svs_t + kv * 2
        vs1 = tl.load(vs_ptr + vq, mask=km, other=0.0)[:, None]
        vz1 = tl.load(vz_ptr + vq, mask=km, other=0.0)[:, None]
        vs2 = tl.load(vs_ptr + vq + 1, mask=km, other=0.0)[:, None]
        vz2 = tl.load(vz_ptr + vq + 1, mask=km, other=0.0)[:, None]
        pd = p.to(dt)
        acc1 = acc1 * alpha[:, None] + tl.dot(pd, _half(vc1, vs1, vz1, dt))
        acc2 = acc2 * alpha[:, None] + tl.dot(pd, _half(vc2, vs2, vz2, dt))
        blk, used, delta = nblk, nused, ndelta
    acc = tl.reshape(tl.permute(tl.join(acc1, acc2), (0, 2, 1)), (BLOCK_M, D))
    release_next(PDL)  # only the partial's store is left
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def paged_int4_context(
    q: torch.Tensor,
    pool: Int4Views,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    block_size: int,
    splits: int,
    scale: float,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    tiling: Tiling = PAGED_INT4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)`` of the context pass, :func:`~ragcompress.kv.fast._paged.paged_context`'s
    layout. q (N, heads, D) rotated at its own positions; ``pool``: one layer's views ``(kc,
    ks, kz, vc, vs, vz)`` of :class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool` (codes
    (slots, kv_heads, D/2) uint8, key scale/zero (blocks, kv_heads, D), value scale/zero
    (slots, kv_heads, 2), unit stride within a slot or block) or of an ``Int8ChunkPool`` (codes
    (slots, kv_heads, D): the code width says which)."""
    kc, ks, kz, vc, vs, vz = pool
    d, kvh, cw = q.shape[2], kc.shape[1], kc.shape[2]
    if cw not in (d // 2, d):
        raise ValueError(
            f"paged_int4_context reads D/2 (int4) or D (int8) code bytes a head of {d}, got {cw}"
        )
    if kc.stride()[1:] != (cw, 1) or vc.stride() != kc.stride() or ks.stride()[1:] != (d, 1):
        raise ValueError("paged_int4_context needs each slot's (and block's) rows contiguous")
    if vs.stride()[1:] != (2, 1) or kz.stride() != ks.stride() or vz.stride() != vs.stride():
        raise ValueError("paged_int4_context needs each slot's value scales contiguous")
    dense = q.new_empty(1, kvh, d)  # partials() checks q against a dense pool's shape
    g, ng, o, lse = partials("paged_int4_context", q, dense, dense, splits, out)
    nq, qg, tab_q = question_tables(q, table, g)
    block_m = tiling.block_m(qg)
    grid: Any = (splits, kvh, nq * triton.cdiv(qg, block_m))
    # a half-precision step multiplies fp16 operands: codes dequantize exactly into fp16 by
    # their bits (_half), where bf16 needed an int-to-fp32 conversion, an fp32 multiply-add and
    # a rounding an element; rotated queries and softmax weights are as exact in fp16 at
    # attention's magnitudes. fp32 (the CPU tests) stays fp32
    op = tl.float16 if q.dtype in (torch.bfloat16, torch.float16) else tl.float32
    _paged_int4_kernel[grid](
        q.contiguous(), kc, ks, kz, vc, vs, vz, table, inv_freq, o, lse,
        kc.stride(0), ks.stride(0), vs.stride(0), ng, qg, tab_q, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=block_size, BLOCK_M=block_m, BITS=4 if cw < d else 8,
        OP=op, num_warps=tiling.warps(block_m), num_stages=tiling.stages, **pdl_launch(q),
    )  # fmt: skip
    return o, lse
