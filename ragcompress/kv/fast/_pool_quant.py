"""Triton kernel: a chunk quantized straight into an int4/int8 pool's blocks, one launch a run.

:class:`~ragcompress.kv.fast.pool_int4.Int4ChunkPool` stores what
:mod:`~ragcompress.kv.kernels.quant_format` gives with key groups of one block (per channel) and
value groups of half a head (per token). Through torch that is an fp32 copy of the chunk
permuted heads-first, eight reductions and as many temporaries, and a host sync per group
kind for the finite check: on an H200 a 128K-token request's cold insert took 394 ms
(``benchmarks/results/ttft_pool_insert_h200/``) where the bf16 pool's copy took 11.6. Here
each block of a run is cut into ``SUB`` parts: program ``(layer * kv_head, block * SUB + part,
side)`` reads its part of the chunk's keys (side 0: all the block's tokens over 1/SUB of the
channel pairs) or values (side 1: 1/SUB of the tokens over the whole head) once, in the chunk's
token-major layout, and writes the codes, scales and zeros in place: the bytes move once. One
program a block (the first kernel: 395 -> 60 ms at 128K, 35 -> 5 ms at 10K) held a 16 KB tile in
255 registers a thread plus a spill stack, one program an SM (``ncu.txt``), 177 µs a 512-token
chunk; eight one-warp parts take 120 µs (``split.txt``, both in
``benchmarks/results/ttft_pool_quant_h200/``). Still ~560 GB/s of bf16 read, so the
instructions (two reductions a statistic, an IEEE division an element), not the bytes, bound it.

The arithmetic is quant_format's, to the bit: zero = fp16(min), scale = fp16((max - zero) /
levels) with IEEE division, codes = round-half-even((x - zero) / scale) clamped (0 where the
scale is 0), a ragged last block's statistics over the tokens it has. A block holding a NaN or
an infinity sets ``bad`` (the pool refuses the request's new chunks when it reads it).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["quantize_run"]

_RNE = tl.constexpr(12582912.0)  # 1.5 * 2**23: (y + _RNE) - _RNE rounds |y| < 2**22 half to even (fp32)


@triton.jit
def _codes(x, zero, scale, LEVELS: tl.constexpr):
    """Codes of ``x`` against the stored fp16 ``zero``/``scale`` (broadcast to ``x``)."""
    s = scale.to(tl.float32)
    y = tl.math.div_rn(x - zero.to(tl.float32), tl.where(s > 0, s, 1.0))
    q = tl.minimum(tl.maximum((y + _RNE) - _RNE, 0.0), LEVELS)
    return tl.where(s > 0, q, 0.0).to(tl.uint8)


@triton.jit
def _stats(lo, hi, LEVELS: tl.constexpr):
    zero = lo.to(tl.float16)
    return zero, tl.math.div_rn(hi - zero.to(tl.float32), LEVELS * 1.0).to(tl.float16)


@triton.jit
def _column_stats(x, ok, LEVELS: tl.constexpr):
    """Per column of ``x`` (rows, cols), over the rows ``ok`` (rows, 1) keeps."""
    lo = tl.min(tl.where(ok, x, float("inf")), axis=0)
    return _stats(lo, tl.max(tl.where(ok, x, -float("inf")), axis=0), LEVELS)


@triton.jit
def _nonfinite(x, mask):
    return tl.max(tl.max(tl.where(mask & ((x != x) | (tl.abs(x) == float("inf"))), 1, 0), axis=1), axis=0)


@triton.jit
def _store_codes(c_ptr, out, q1, q2, ok, H: tl.constexpr, BITS: tl.constexpr):
    if BITS == 4:  # byte j: channel j in the low nibble, j + D/2 in the high (half-split)
        tl.store(c_ptr + out, q1 | (q2 << 4), mask=ok)
    else:
        tl.store(c_ptr + out, q1, mask=ok)
        tl.store(c_ptr + out + H, q2, mask=ok)


@triton.jit
def _keys(k_ptr, kc_ptr, ks_ptr, kz_ptr, rows, out, ok, at, H: tl.constexpr, BITS: tl.constexpr):
    """A block's keys: per channel over its tokens; one scale and zero a channel at ``at``."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    x1 = tl.load(k_ptr + rows, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(k_ptr + rows + H, mask=ok, other=0.0).to(tl.float32)
    z1, s1 = _column_stats(x1, ok, LEVELS)
    z2, s2 = _column_stats(x2, ok, LEVELS)
    _store_codes(kc_ptr, out, _codes(x1, z1[None, :], s1[None, :], LEVELS),
                 _codes(x2, z2[None, :], s2[None, :], LEVELS), ok, H, BITS)  # fmt: skip
    tl.store(ks_ptr + at, s1)
    tl.store(ks_ptr + at + H, s2)
    tl.store(kz_ptr + at, z1)
    tl.store(kz_ptr + at + H, z2)
    return tl.maximum(_nonfinite(x1, ok), _nonfinite(x2, ok))


@triton.jit
def _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, rows, out, ok, at, H: tl.constexpr, BITS: tl.constexpr):
    """A block's values: per token over each half head; its two scales and zeros at ``at``."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    x1 = tl.load(v_ptr + rows, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(v_ptr + rows + H, mask=ok, other=0.0).to(tl.float32)
    z1, s1 = _stats(tl.min(x1, axis=1), tl.max(x1, axis=1), LEVELS)
    z2, s2 = _stats(tl.min(x2, axis=1), tl.max(x2, axis=1), LEVELS)
    _store_codes(vc_ptr, out, _codes(x1, z1[:, None], s1[:, None], LEVELS),
                 _codes(x2, z2[:, None], s2[:, None], LEVELS), ok, H, BITS)  # fmt: skip
    m = tl.reshape(ok, (ok.shape[0],))
    tl.store(vs_ptr + at, s1, mask=m)
    tl.store(vs_ptr + at + 1, s2, mask=m)
    tl.store(vz_ptr + at, z1, mask=m)
    tl.store(vz_ptr + at + 1, z2, mask=m)
    return tl.maximum(_nonfinite(x1, ok), _nonfinite(x2, ok))


@triton.jit
def _key_part(k_ptr, kc_ptr, ks_ptr, kz_ptr, src_t, src, dst, count, LH, lh, blk, sub,
              BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """Block ``blk``'s keys over channel pairs ``(j, j + D/2)``, ``j`` in ``sub``'s 1/SUB of them:
    a channel's statistics need all the block's tokens, not all its channels."""
    H: tl.constexpr = D // 2
    DC: tl.constexpr = D * BITS // 8
    CP: tl.constexpr = H // SUB
    t = tl.arange(0, BS)
    c = sub * CP + tl.arange(0, CP)
    ok = (blk * BS + t < count)[:, None]
    rows = (src + blk * BS + t).to(tl.int64)[:, None] * src_t + lh * D + c[None, :]
    out = (dst + blk * BS + t).to(tl.int64)[:, None] * (LH * DC) + lh * DC + c[None, :]
    at = ((dst // BS + blk) * LH + lh) * D + c
    return _keys(k_ptr, kc_ptr, ks_ptr, kz_ptr, rows, out, ok, at, H, BITS)


@triton.jit
def _value_part(v_ptr, vc_ptr, vs_ptr, vz_ptr, src_t, src, dst, count, LH, lh, blk, sub,
                BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """``sub``'s 1/SUB of block ``blk``'s value tokens over both half heads: a token's
    statistics need its half head, not the block's other tokens."""
    H: tl.constexpr = D // 2
    DC: tl.constexpr = D * BITS // 8
    TT: tl.constexpr = BS // SUB
    t = sub * TT + tl.arange(0, TT)
    c = tl.arange(0, H)
    ok = (blk * BS + t < count)[:, None]
    rows = (src + blk * BS + t).to(tl.int64)[:, None] * src_t + lh * D + c[None, :]
    slots = (dst + blk * BS + t).to(tl.int64)
    out = slots[:, None] * (LH * DC) + lh * DC + c[None, :]
    return _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, rows, out, ok, (slots * LH + lh) * 2, H, BITS)


@triton.jit
def _quantize_run(
    k_ptr, v_ptr, src_t,  # chunk keys / values (n, LH, D), token stride src_t
    kc_ptr, vc_ptr,  # pool codes (slots, LH, D * BITS // 8) uint8
    ks_ptr, kz_ptr,  # key scale / zero (blocks, LH, D) fp16
    vs_ptr, vz_ptr,  # value scale / zero (slots, LH, 2) fp16
    bad_ptr,  # (1,) int32, set to 1 where a block holds a non-finite value
    src, dst, count, LH,
    BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    # (layer x KV head) varies fastest: programs running together read a token's whole row;
    # then a block's SUB parts, which read the same rows
    lh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1) // SUB
    sub = tl.program_id(1) % SUB
    # each side in its own function: Triton wants a name bound in both branches of an `if` to
    # have one type, and the two sides' tiles differ in shape
    if tl.program_id(2) == 0:
        bad = _key_part(
            k_ptr, kc_ptr, ks_ptr, kz_ptr, src_t, src, dst, count, LH, lh, blk, sub, BS, D, BITS, SUB
        )
    else:
        bad = _value_part(
            v_ptr, vc_ptr, vs_ptr, vz_ptr, src_t, src, dst, count, LH, lh, blk, sub, BS, D, BITS, SUB
        )
    if bad > 0:
        tl.store(bad_ptr, 1)


def quantize_run(
    pool: Any,
    keys: torch.Tensor,
    values: torch.Tensor,
    run: tuple[int, int, int],
    bad: torch.Tensor,
    num_warps: int = 1,
    parts: int = 8,
) -> None:
    """Quantize tokens ``token .. token + count`` of a chunk's ``keys``/``values`` (n, layers,
    kv_heads, head_dim), contiguous (as a PackedChunk holds them), on the pool's device, into
    ``pool`` (an Int4/Int8 chunk pool) at slots ``slot ..`` (``run`` = (token, slot, count),
    ``slot`` on a block boundary); ``bad`` (1,) int32 becomes 1 where a block holds a NaN or an
    infinity (left as it was otherwise). ``parts``: programs a block's keys (and values) are
    cut into (capped at the block size and half the head); ``num_warps`` a program. 8 parts of
    one warp: 120 µs a 512-token chunk on an H200, against 177 for whole blocks at 4 warps
    (whose 255 registers a thread left one program an SM; ``split.txt``)."""
    if not (keys.is_contiguous() and values.is_contiguous() and keys.shape == values.shape):
        raise ValueError("quantize_run takes contiguous keys and values of one shape (a PackedChunk's)")
    if parts < 1 or parts & (parts - 1):
        raise ValueError(f"quantize_run cuts a block into a power of two of parts, got {parts}")
    token, slot, count = run
    _, layers, kv_heads, d = keys.shape
    bs = pool.block_size
    sub = min(parts, bs, d // 2)
    grid: Any = (layers * kv_heads, triton.cdiv(count, bs) * sub, 2)
    k, v = keys, values
    _quantize_run[grid](
        k, v, k.stride(0), pool.keys, pool.values, pool.key_scale, pool.key_zero,
        pool.value_scale, pool.value_zero, bad, token, slot, count, layers * kv_heads,
        BS=bs, D=d, BITS=pool.bits, SUB=sub, num_warps=num_warps,
    )  # fmt: skip
