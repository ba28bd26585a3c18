"""Triton kernel: the context pass of paged attention, chunks read in place through a block table.

The chunk pool (:mod:`~ragcompress.kv.fast.pool`) keeps every key rotated at its *encoding*
position; the request moves chunk ``c`` by ``delta_c`` positions. RoPE is a rotation, so
``q . R(delta) k = (R(-delta) q) . k``: instead of rewriting every key by ``+delta``, each
program rotates its (few) query rows by ``-delta`` of the block it reads, once per block,
``HALF`` cos/sin and ``BLOCK_M x D`` multiply-adds against ``block_size x D`` keys read.

Table (int32, ``1 + max_blocks`` rows of 3): row 0 ``[count, 0, 0]``, row ``1 + e``
``[block, used, delta]`` for the request's ``e``-th block (its id in the pool, the slots
filled in it, its chunk's position delta). Read from device memory, so one captured CUDA graph
serves any request. Split-KV like :class:`~ragcompress.kv.fast.attention.FlashCascade`'s context
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

from ragcompress.kv.fast._online import folded_rows, online_update, partials, store_partial

__all__ = ["paged_context"]


@triton.jit
def _paged_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    i = tl.arange(0, HALF)
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    q1 = tl.load(qrow + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(qrow + HALF + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    freq = tl.load(freq_ptr + i)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        ang = tl.load(row + 2).to(tl.float32) * freq
        cs = tl.cos(ang)[None, :]
        sn = tl.sin(ang)[None, :]
        # R(-delta) q in rotate_half's pairing: (q1 c + q2 s, q2 c - q1 s)
        a1 = (q1 * cs + q2 * sn).to(k_ptr.dtype.element_ty)
        a2 = (q2 * cs - q1 * sn).to(k_ptr.dtype.element_ty)
        nm = n < used
        slot = blk * BS + n
        kp = k_ptr + slot[:, None] * sk_t + kv * D
        k1 = tl.load(kp + i[None, :], mask=nm[:, None], other=0.0)
        k2 = tl.load(kp + HALF + i[None, :], mask=nm[:, None], other=0.0)
        s = (tl.dot(a1, tl.trans(k1)) + tl.dot(a2, tl.trans(k2))) * scale
        s = tl.where(nm[None, :], s, float("-inf"))
        m_i, l_i, p, alpha = online_update(s, m_i, l_i)
        v = tl.load(v_ptr + slot[:, None] * sv_t + kv * D + d[None, :], mask=nm[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def paged_context(
    q: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    table: torch.Tensor,
    inv_freq: torch.Tensor,
    block_size: int,
    splits: int,
    scale: float,
    block_m: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)`` of the context pass (layout in the module docstring).

    q (N, heads, D), already rotated at its own positions; pool_k/pool_v (slots, kv_heads, D)
    with unit stride over heads and channels (a layer's view of the pool); table (1 +
    max_blocks, 3) int32; inv_freq (D // 2,) fp32; ``splits``: S, fixed per captured shape;
    ``block_m``: query rows per program (default: the folded rows up to 64, at least 16).
    """
    d, kvh = q.shape[2], pool_k.shape[1]
    g, ng, o, lse = partials("paged_context", q, pool_k, pool_v, splits)
    block_m = block_m or max(16, min(64, triton.next_power_of_2(ng)))
    grid: Any = (splits, kvh, triton.cdiv(ng, block_m))
    _paged_kernel[grid](
        q.contiguous(), pool_k, pool_v, table, inv_freq, o, lse,
        pool_k.stride(0), pool_v.stride(0), ng, scale,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=block_size, BLOCK_M=block_m, num_warps=num_warps,
    )  # fmt: skip
    return o, lse
