"""Triton kernel: the global layers' split-KV context pass, reading the queries in place.

:class:`~ragcompress.kv.fast.attention.FlashCascade` cut the context into ``S`` segments and ran
them as flash's variable-length sequences, each with its own copy of the folded queries (the
query heads that share a KV head folded into the rows, by a Triton launch). On an H200 at 32K context
(Llama-3-8B shape, 32 question tokens) that pass took 56 µs a layer, about 305 TFLOP/s: flash
2's tiles run on the pre-Hopper tensor-core instructions. Here one program per (segment, KV
head, block of folded rows) reads its rows straight from the rotated queries (row ``t*G + j`` of
KV head ``kv`` is query head ``kv*G + j`` of token ``t``), so the fold launch and its copies go,
and Triton emits Hopper's warpgroup products for the tiles. The scores are kept in base 2 (the
scale times log2(e), folded into each weight's exponent: :func:`~ragcompress.kv.fast._online.base2_weights`)
and only the segment's last key tile is masked.

Outputs as the other context passes (``_window.py``, ``_paged.py``), so
:func:`~ragcompress.kv.fast._merge.merge_with_own` merges them: o (S*N*G, kv_heads, D), lse
fp32 (S, kv_heads, N*G), natural log, -inf for a row of a segment with no keys. Segment ``s``
covers the slots ``[seg_start[s], seg_start[s] + ctx_used[s])`` (``StepMeta.refresh`` cuts them
on the device, so a captured graph serves any context length). Imported only where Triton is
(CUDA, or the interpreter in tests).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._online import base2_weights, folded_rows, partials, store_partial
from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs
from ragcompress.kv.fast.waves import CONTIGUOUS, Tiling

__all__ = ["context_pass"]

_LOG2E = 1.4426950408889634


@triton.jit
def _tile(q, kb, vb, keys, km, sk_t, sv_t, qk_scale, m_i, l_i, acc, MASKED: tl.constexpr, D: tl.constexpr):
    """One tile of keys ``keys`` (BLOCK_N,) into the base-2 online softmax; ``kb``/``vb``: the
    KV head's keys and values; ``km`` hides the scores of the keys past the filled ones
    (``MASKED``: a partly filled tile). ``keys`` must all be in bounds: a caller points the rows
    past the fill at the last filled one (:func:`_clamped`), so no load is masked (masked loads
    made the paged pass 3% slower, results/ttft_paged_tiles_h200/)."""
    d = tl.arange(0, D)
    k = tl.load(kb + keys[:, None] * sk_t + d[None, :])
    s = tl.dot(q, tl.trans(k))  # unscaled: qk_scale (which holds log2(e)) goes in below
    if MASKED:
        s = tl.where(km[None, :], s, float("-inf"))
    m_new, l_new, alpha, p = base2_weights(s, qk_scale, m_i, l_i)
    v = tl.load(vb + keys[:, None] * sv_t + d[None, :])  # hidden rows: p = 0, any finite v
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_new, acc


@triton.jit
def _clamped(first, n, used):
    """Rows ``first + n`` of a tile filled up to ``used``, those past the fill pointed at the last
    filled row (the first when ``used`` is 0): in bounds, for :func:`_tile`'s unmasked loads."""
    return first + tl.maximum(tl.minimum(n, used - 1), 0)


@triton.jit
def _context_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    wait_inputs(PDL)  # the queries (and what the step wrote before) are earlier outputs
    q = tl.load(q_ptr + tok[:, None] * q_n + head[:, None] * q_h + d[None, :], mask=rm[:, None], other=0.0)
    start = tl.load(start_ptr + seg).to(tl.int64)
    used = tl.load(used_ptr + seg)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    full = used // BLOCK_N * BLOCK_N
    for off in range(0, full, BLOCK_N):
        keys = start + off + tl.arange(0, BLOCK_N).to(tl.int64)
        m_i, l_i, acc = _tile(q, kb, vb, keys, keys >= 0, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, D)
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        keys = _clamped(start, n, used)
        m_i, l_i, acc = _tile(q, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
    release_next(PDL)  # only the partial's store is left
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def context_pass(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    seg_start: torch.Tensor,
    ctx_used: torch.Tensor,
    scale: float,
    tiling: Tiling = CONTIGUOUS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)`` of the context pass (layout in the module docstring).

    q (N, heads, D) rotated queries with a unit last stride; ctx_k/ctx_v (capacity, kv_heads,
    D) with unit stride over heads and channels (a layer's view of the buffer); seg_start and
    ctx_used (S,) int32: each segment's first slot and its number of keys; ``tiling``: rows,
    warps and stages of a program (the segments are the caller's)."""
    if q.stride(-1) != 1:
        raise ValueError("context_pass needs queries with a unit last stride")
    segs, d, kvh = seg_start.numel(), q.shape[2], ctx_k.shape[1]
    g, ng, o, lse = partials("context_pass", q, ctx_k, ctx_v, segs)
    block_m = tiling.block_m(ng)
    # key tiles: 128 keys under 128 folded rows of 128 channels (Qwen2.5's 224 rows: 4% faster
    # a layer at 32K, Llama's 128 a tie; results/ttft_context_ws_h200/), fewer past 128 channels
    block_n = 32 if d > 128 else 128 if block_m == 128 else 64
    grid: Any = (segs, kvh, triton.cdiv(ng, block_m))
    _context_kernel[grid](
        q, ctx_k, ctx_v, seg_start, ctx_used, o, lse,
        q.stride(0), q.stride(1), ctx_k.stride(0), ctx_v.stride(0), ng, scale * _LOG2E,
        G=g, KVH=kvh, D=d, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=tiling.warps(block_m),
        num_stages=tiling.stages, **pdl_launch(q),
    )  # fmt: skip
    return o, lse
