"""Triton kernel: the log-sum-exp merge of the cascade's partial attentions, in one pass.

:class:`~ragcompress.kv.fast.attention.FlashCascade` gets ``S`` context partials (split-KV
segments, GQA groups folded into the query rows) and one own-question partial per query.
Merged in torch that is ~10 launches per layer over fp32 copies of every partial (unfold,
mask, cat, exp, max, sum, divide, cast); here one program per (query token, head) reads its
``S`` context rows and its own row once, in the layout flash wrote them, and writes the
merged output in the query dtype::

    out = (sum_s o_s * exp(lse_s - m) + o_b * exp(lse_b - m)) / (sum_s exp(lse_s - m) + exp(lse_b - m))

Segments with no keys (``ctx_used[s] == 0``) are skipped: flash leaves them 0 / +inf.
Imported only where Triton is (CUDA, or the interpreter in tests).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["merge_partials"]


@triton.jit
def _merge_kernel(
    oa_ptr, la_ptr, ob_ptr, lb_ptr, used_ptr, out_ptr,
    N, T, la_s, la_h, la_r, lb_b, lb_h, lb_t,
    S: tl.constexpr, SP: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    kv = h // G
    j = h % G
    s = tl.arange(0, SP)
    sm = s < S
    used = tl.load(used_ptr + s, mask=sm, other=0)
    valid = sm & (used > 0)
    r = n * G + j  # folded query row inside each segment
    la = tl.load(la_ptr + s.to(tl.int64) * la_s + kv * la_h + r * la_r, mask=valid, other=0.0)
    la = tl.where(valid, la, float("-inf"))
    b = n // T
    t = n % T
    lb = tl.load(lb_ptr + b * lb_b + h * lb_h + t * lb_t)
    m = tl.maximum(tl.max(la, axis=0), lb)
    wa = tl.exp(la - m)
    wb = tl.exp(lb - m)
    d = tl.arange(0, D)
    rows = s.to(tl.int64) * (N * G) + r  # (SP,) rows of the (S*N*G, KVH, D) context output
    oa = tl.load(oa_ptr + (rows[:, None] * KVH + kv) * D + d[None, :], mask=valid[:, None], other=0.0)
    ob = tl.load(ob_ptr + (n * (KVH * G) + h) * D + d).to(tl.float32)
    acc = tl.sum(oa.to(tl.float32) * wa[:, None], axis=0) + ob * wb
    out = acc / (tl.sum(wa, axis=0) + wb)
    tl.store(out_ptr + (n * (KVH * G) + h) * D + d, out.to(out_ptr.dtype.element_ty))


def _strides3(lse: torch.Tensor, rows: int) -> tuple[int, int, int]:
    """(sequence, head, row) strides of flash's log-sum-exp: it comes as (seqs, heads, max_q)
    or as (heads, total_q) with ``rows`` queries per sequence."""
    if lse.dim() == 3:
        return lse.stride(0), lse.stride(1), lse.stride(2)
    return rows * lse.stride(1), lse.stride(0), lse.stride(1)


def merge_partials(
    o_a: torch.Tensor,
    lse_a: torch.Tensor,
    o_b: torch.Tensor,
    lse_b: torch.Tensor,
    ctx_used: torch.Tensor,
    qlen: int,
    group: int,
) -> torch.Tensor:
    """Merged attention (N, heads, D) in ``o_b``'s dtype.

    o_a (S*N*G, kv_heads, D): context partials, segment-major, query row ``t*G + j`` for head
    ``kv*G + j``; lse_a fp32 (S, kv_heads, N*G) or (kv_heads, S*N*G); o_b (N, heads, D) own
    partials; lse_b fp32 (B, heads, T) or (heads, N); ctx_used (S,) int32; qlen = T.
    """
    n, heads, d = o_b.shape
    kvh = o_a.shape[1]
    segs = ctx_used.numel()
    if heads != kvh * group or o_a.shape[0] != segs * n * group or o_a.shape[2] != d:
        raise ValueError(
            f"context partials {tuple(o_a.shape)} do not fold {segs} segments of {n} queries x "
            f"{heads} heads (group {group})"
        )
    oa, ob = o_a.contiguous(), o_b.contiguous()
    out = torch.empty_like(ob)
    grid: Any = (n, heads)
    _merge_kernel[grid](
        oa, lse_a, ob, lse_b, ctx_used, out, n, qlen, *_strides3(lse_a, n * group), *_strides3(lse_b, qlen),
        S=segs, SP=triton.next_power_of_2(segs), G=group, KVH=kvh, D=d, num_warps=4,
    )  # fmt: skip
    return out
