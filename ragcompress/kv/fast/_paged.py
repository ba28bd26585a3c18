"""Triton kernel: the context pass of paged attention, chunks read in place through a block table.

The chunk pool (:mod:`~ragcompress.kv.fast.pool`) keeps every key rotated at its *encoding*
position; the request moves chunk ``c`` by ``delta_c`` positions. RoPE is a rotation, so
``q . R(delta) k = (R(-delta) q) . k``: instead of rewriting every key by ``+delta``, each
program rotates its (few) query rows by ``-delta`` of the chunk it reads, once per chunk (a
chunk's blocks follow each other in the table with one delta), ``D`` cos/sin and ``2 x
BLOCK_M x D`` multiply-adds against the chunk's keys. The scores are one full-width product in
base 2, as in the contiguous context pass (:mod:`~ragcompress.kv.fast._context`, whose tile it
runs, masked by each block's filled slots); 64-row programs of one warpgroup, two an SM
(:data:`~ragcompress.kv.fast.waves.PAGED`); each block's table row is loaded while the block
before it computes. On an H200 at 32K (one layer, 32
question tokens) that is 68-73 µs against 154-159 for the first version (half-width products, a
rotation per block, base e, 64-row programs in two waves): ``benchmarks/results/``
``ttft_paged_v2_h200/``, ``ttft_paged_v4_h200/``, ``ttft_paged_v6_h200/``.

Table (int32, ``1 + max_blocks`` rows of 3): row 0 ``[count, 0, 0]``, row ``1 + e``
``[block, used, delta]`` for the request's ``e``-th block (its id in the pool, the slots
filled in it, its chunk's position delta). Read from device memory, so one captured CUDA graph
serves any request. A ragged batch (each question its own chunks) passes one such table per
question, (B, 1 + max_blocks, 3); a program then holds one question's rows
(:func:`question_rows`). Split-KV like :class:`~ragcompress.kv.fast.attention.FlashCascade`'s context
pass: program ``(s, kv, m)`` takes the entries ``[s * per, (s + 1) * per)``, ``per =
ceil(count / S)``, of KV head ``kv`` for query rows ``m*BLOCK_M ..`` (the query heads sharing a
KV head folded into the rows, row ``t * G + j``), and writes the same partials as the window
kernel (:mod:`~ragcompress.kv.fast._window`): o (S*N*G, kv_heads, D), lse fp32 (S, kv_heads,
N*G), natural log, ``-inf`` (and o = 0) for a split with no entry, so
:func:`~ragcompress.kv.fast._merge.merge_with_own` merges them with the question's own pass.
The torch twin it is tested against is :func:`~ragcompress.kv.fast.paged.paged_context_reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _clamped, _tile
from ragcompress.kv.fast._online import partials, store_partial
from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs
from ragcompress.kv.fast.waves import PAGED, Tiling

__all__ = ["paged_context", "question_tables"]


@triton.jit
def _row(tab_ptr, e, e1):
    """Entry ``e``'s ``(block, used, delta)``; past the split's end (``e >= e1``) an empty
    block (used 0: every load masked), read from an in-bounds row."""
    row = tab_ptr + 3 * (1 + tl.minimum(e, e1 - 1))
    used = tl.where(e < e1, tl.load(row + 1), 0)
    return tl.load(row).to(tl.int64), used, tl.load(row + 2)


@triton.jit
def question_rows(NG, QG, TAB_Q, tab_ptr, G, BLOCK_M: tl.constexpr):
    """This program's place in a paged pass's grid (split, KV head, question x block of its
    folded rows): ``(seg, kv, rows, rm, tok, head, tab)``. Question ``b`` owns folded rows
    ``[b * QG, (b + 1) * QG)`` and reads its own table at ``tab_ptr + b * TAB_Q`` (a ragged
    batch); ``QG == NG`` and ``TAB_Q == 0``: one table for the whole batch, the grid of
    :func:`~ragcompress.kv.fast._online.folded_rows`. A program never holds two questions'
    rows, so each reads one table."""
    seg = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1).to(tl.int64)
    per_q = (QG + BLOCK_M - 1) // BLOCK_M
    m = tl.program_id(2).to(tl.int64)
    b = m // per_q
    local = (m - b * per_q) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rows = b * QG + local
    rm = (local < QG) & (rows < NG)
    return seg, kv, rows, rm, rows // G, kv * G + rows % G, tab_ptr + b * TAB_Q


@triton.jit
def _entries(tab_ptr, seg, S: tl.constexpr):
    """The table entries ``[e0, e1)`` of split ``seg`` of ``S``: ``ceil(count / S)`` each."""
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    return e0, tl.minimum(e0 + per, count)


@triton.jit
def _paged_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, QG, TAB_Q, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, QG, TAB_Q, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    wait_inputs(PDL)  # the queries (and what the step wrote before) are earlier outputs
    d = tl.arange(0, D)
    # R(-delta) q in rotate_half's pairing, full width: (q1 c + q2 s, q2 c - q1 s) = q c + qs s
    # with qs = (q2, -q1), so each block's scores are one D-wide product
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)  # any value: a split's first entry always rotates
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        # the next block's row is loaded before this block's tile, so its key address is known
        # when its iteration starts and the pipeliner can issue its loads early: 68 against 84
        # µs (rows two blocks ahead: 90; the next key tile held in registers: 85;
        # results/ttft_paged_v6_h200/)
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
        # a chunk's blocks follow each other with one delta: rotate once a chunk (rotating at
        # every block made the pass 1.75x slower on an H200, results/ttft_paged_v2_h200/). The
        # query rows are read again here (L1/L2 hits) rather than held as fp32 across the loop:
        # 128 registers a thread fewer, 6% faster (results/ttft_paged_v4_h200/)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
            last = delta
        # every tile's scores masked by its filled slots, so the loads sit outside any branch:
        # 15% faster than masking only partly filled blocks in an if/else
        # (results/ttft_paged_v4_h200/); the rows past the fill read the last filled one
        keys = _clamped(blk * BS, n, used)
        m_i, l_i, acc = _tile(a, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        blk, used, delta = nblk, nused, ndelta
    release_next(PDL)  # only the partial's store is left
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def question_tables(q: torch.Tensor, table: torch.Tensor, g: int) -> tuple[int, int, int]:
    """``(questions, QG, TAB_Q)`` of a paged pass over ``table``: (1 + max_blocks, 3), one table
    for every query row; or (B, 1 + max_blocks, 3), question ``b``'s table for its ``N / B``
    query tokens (a ragged batch: each question its own chunks)."""
    n = q.shape[0]
    if table.dim() == 2:
        return 1, n * g, 0
    b = table.shape[0]
    if table.dim() != 3 or n % b or table.stride(1) != 3 or table.stride(2) != 1:
        raise ValueError(
            f"per-question tables (B, rows, 3) with B dividing {n} query rows, got {tuple(table.shape)}"
        )
    return b, n // b * g, table.stride(0)


def paged_context(
    q: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    block_size: int,
    splits: int,
    scale: float,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    tiling: Tiling = PAGED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)`` of the context pass (layout in the module docstring).

    q (N, heads, D), already rotated at its own positions; pool_k/pool_v (slots, kv_heads, D)
    with unit stride over heads and channels (a layer's view of the pool); table (1 +
    max_blocks, 3) int32, or (B, 1 + max_blocks, 3): one per question of N / B tokens
    (:func:`question_tables`); inv_freq (D // 2,) fp32; ``splits``: S, fixed per captured
    shape (:meth:`~ragcompress.kv.fast.waves.Tiling.splits` fills the device once);
    ``tiling``: rows, warps and stages of a program.
    """
    d, kvh = q.shape[2], pool_k.shape[1]
    g, ng, o, lse = partials("paged_context", q, pool_k, pool_v, splits, out)
    nq, qg, tab_q = question_tables(q, table, g)
    block_m = tiling.block_m(qg)
    grid: Any = (splits, kvh, nq * triton.cdiv(qg, block_m))
    _paged_kernel[grid](
        q.contiguous(), pool_k, pool_v, table, inv_freq, o, lse,
        pool_k.stride(0), pool_v.stride(0), ng, qg, tab_q, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=block_size, BLOCK_M=block_m,
        num_warps=tiling.warps(block_m), num_stages=tiling.stages, **pdl_launch(q),
    )  # fmt: skip
    return o, lse
