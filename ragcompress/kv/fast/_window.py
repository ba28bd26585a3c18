"""Triton kernel: a local (sliding-window) layer's context pass, masked by logical position.

A local layer's query at logical position ``q`` sees the context slots whose logical position
``p`` has ``q - p < window`` (docs/design.md, "Local sliding-window layers"). Slots are not
positions (chunks are moved, presses leave gaps, ``ape`` stacks chunks at the same positions),
so flash attention's window (by slot index) cannot express it; this kernel reads the slots'
positions (``StaticKVBuffer.ctx_pos``) and the queries' positions from device tensors, so it
runs inside a captured CUDA graph.

Split-KV as :class:`~ragcompress.kv.fast.attention.FlashCascade`'s context pass (the query
heads sharing a KV head folded into the rows), and the same outputs, so
:func:`~ragcompress.kv.fast._merge.merge_with_own` merges them: o (S*N*G, kv_heads, D), lse fp32
(S, kv_heads, N*G), natural log, -inf for a row that sees no key of the segment. The ``S``
segments cut the step's *window span* (:func:`~ragcompress.kv.fast.step_meta.window_span`: the
slots the earliest query can see, computed once per step), not the whole context: cut over the
whole context, the one or two
segments holding the window did all the work, one key tile after another (62 µs per local layer
at 32K on an H200, Gemma 3 12B shape). A program then scans its segment's positions for the
slots any of its rows can see and attends over that sub-span only.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import base2_weights, folded_rows, partials, store_partial

__all__ = ["window_context"]


@triton.jit
def _window_kernel(
    q_ptr, k_ptr, v_ptr, qpos_ptr, kpos_ptr, span_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, window, qk_scale, S,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(
        q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D + d[None, :], mask=rm[:, None], other=0.0
    )
    qp = tl.load(qpos_ptr + tok, mask=rm, other=0)
    # a key is seen by some row iff the earliest row sees it (q - p < window)
    qmin = tl.min(tl.where(rm, qp, 2**62), axis=0)
    # this program's segment of the span [lo, hi): S equal cuts
    span_lo = tl.load(span_ptr).to(tl.int64)
    span_hi = tl.load(span_ptr + 1).to(tl.int64)
    seg_len = (span_hi - span_lo + S - 1) // S
    start = span_lo + seg * seg_len
    used = tl.maximum(tl.minimum(seg_len, span_hi - start), 0)
    # 1. the span [lo, hi) of segment slots some row of this program can see
    lo = used
    hi = used * 0
    for off in range(0, used, SCAN):
        n = off + tl.arange(0, SCAN).to(tl.int64)
        kp = tl.load(kpos_ptr + start + n, mask=n < used, other=0)
        seen = (n < used) & (qmin - kp < window)
        lo = tl.minimum(lo, tl.min(tl.where(seen, n, used), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(seen, n + 1, 0), axis=0))
    # 2. online softmax over that span, each row masked by its own position
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for off in range(lo, hi, BLOCK_N):
        n = off + tl.arange(0, BLOCK_N).to(tl.int64)
        nm = n < hi
        kp = tl.load(kpos_ptr + start + n, mask=nm, other=0)
        vis = rm[:, None] & nm[None, :] & (qp[:, None] - kp[None, :] < window)
        k = tl.load(k_ptr + (start + n)[:, None] * sk_t + kv * D + d[None, :], mask=nm[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k))  # unscaled: base2_weights folds in qk_scale (log2(e) with it)
        s = tl.where(vis, s, float("-inf"))
        m_i, l_i, alpha, p = base2_weights(s, qk_scale, m_i, l_i)
        v = tl.load(v_ptr + (start + n)[:, None] * sv_t + kv * D + d[None, :], mask=nm[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def window_context(
    q: torch.Tensor,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    q_pos: torch.Tensor,
    ctx_pos: torch.Tensor,
    span: torch.Tensor,
    segs: int,
    window: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)`` of the context pass of a local layer (layout in the module docstring).

    q (N, heads, D) contiguous; ctx_k/ctx_v (capacity, kv_heads, D) with unit stride over heads
    and channels (a layer's view of the buffer); q_pos (N,) int64; ctx_pos (capacity,) int64;
    span (2,) int32 from :func:`~ragcompress.kv.fast.step_meta.window_span`; ``segs``: the
    number of segments S.
    """
    d, kvh = q.shape[2], ctx_k.shape[1]
    g, ng, o, lse = partials("window_context", q, ctx_k, ctx_v, segs)
    block_m = 16
    block_n = 64 if d <= 128 else 32
    grid: Any = (segs, kvh, triton.cdiv(ng, block_m))
    _window_kernel[grid](
        q.contiguous(), ctx_k, ctx_v, q_pos, ctx_pos, span, o, lse,
        ctx_k.stride(0), ctx_v.stride(0), ng, window, scale * _LOG2E, segs,
        G=g, KVH=kvh, D=d, BLOCK_M=block_m, BLOCK_N=block_n, SCAN=256, num_warps=4,
    )  # fmt: skip
    return o, lse
