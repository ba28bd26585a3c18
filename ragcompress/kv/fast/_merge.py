"""Triton kernel: the question's attention over its own slots and the log-sum-exp merge with
the context's partial attentions, in one pass.

The cascade (:class:`~ragcompress.kv.fast.attention.FlashCascade`, the paged cascade) gets ``S``
context partials (split-KV segments, GQA groups folded into the query rows). The question's own
slots are few (the question and the answer so far: ``region`` ≤ a few hundred), so one program
per (query token, head) attends over them itself, online softmax over ``BR``-slot tiles, and
merges the result with its ``S`` context rows read once in the layout the context pass wrote:
no own-pass launch, no fp32 copies. Measured on an H200 (32 query tokens, 32 heads over 8 KV
heads, 33 segments, a 48-slot region; CUDA graph of 32 calls): 7.8 µs per layer against 14.8 for
flash's own pass + a separate merge. Two warps per program and 32-slot tiles: 6.8-7.2 µs a
layer at 32K against 7.4-7.7 for one warp and 16 slots, 12-17 for 64-slot tiles
(``benchmarks/results/ttft_own_merge_h200/``; the programs are too small to feed more)::

    out = (sum_s o_s * exp(lse_s - m) + acc * exp(m_own - m)) / (sum_s exp(lse_s - m) + l * exp(m_own - m))

with ``acc``/``l``/``m_own`` the own pass's unnormalized sum, weight and running maximum.
Query ``t`` of a question with ``used`` own slots sees the slots ``j ≤ t + used - T`` (causal,
aligned to the last used slot), and with a local window only the last ``window`` of those.
Segments with no keys (``ctx_used[s] == 0``) are skipped. The own loop runs only over the slots
the query can see (not the whole region, which holds room for the answer), and the context
partials are loaded before it, so their latency overlaps it. Imported only where Triton is (CUDA,
or the interpreter in tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs

if TYPE_CHECKING:
    from ragcompress.kv.fast.step_meta import StepMeta

__all__ = ["merge_with_own"]


@triton.jit
def _own_merge_kernel(
    oa_ptr, la_ptr, q_ptr, k_ptr, v_ptr, used_ptr, qused_ptr, out_ptr,
    N, T, R, WINDOW, scale, la_s, la_h, la_r, q_n, q_h, k_r, k_h,
    S: tl.constexpr, SP: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
    BR: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    kv = h // G
    d = tl.arange(0, D)
    wait_inputs(PDL)  # the partials, the queries and the own slots are earlier kernels' outputs
    # the context partials' loads go first: nothing depends on them until the merge, so their
    # latency overlaps the own pass (the program is a chain of dependent loads, not bandwidth)
    s_idx = tl.arange(0, SP)
    sm = s_idx < S
    used = tl.load(used_ptr + s_idx, mask=sm, other=0)
    valid = sm & (used > 0)  # segments with no keys are skipped
    row = n * G + h % G  # folded query row inside each segment
    la = tl.load(la_ptr + s_idx.to(tl.int64) * la_s + kv * la_h + row * la_r, mask=valid, other=0.0)
    seg_rows = s_idx.to(tl.int64) * (N * G) + row  # (SP,) rows of the (S*N*G, KVH, D) context output
    oa = tl.load(oa_ptr + (seg_rows[:, None] * KVH + kv) * D + d[None, :], mask=valid[:, None], other=0.0)
    # own slots: online softmax over BR-slot tiles, only over the slots this query sees
    b = n // T
    t = n % T
    used_own = tl.load(qused_ptr + b)
    last = t + used_own - T  # the newest own slot this query sees
    q = tl.load(q_ptr + n * q_n + h * q_h + d).to(tl.float32) * scale
    m_own = tl.full((), float("-inf"), tl.float32)
    l_own = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    lo = tl.maximum(last - WINDOW + 1, 0) // BR * BR
    hi = tl.minimum(tl.minimum(R, used_own), last + 1)
    for r0 in range(lo, hi, BR):
        r = r0 + tl.arange(0, BR)
        ok = (r < hi) & (last - r < WINDOW)
        rows = (b * R + r).to(tl.int64)
        k = tl.load(k_ptr + rows[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_own, tl.max(s, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe)
        alpha = tl.exp(m_own - m_safe)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l_own = l_own * alpha + tl.sum(p, axis=0)
        m_own = m_new
    release_next(PDL)  # the merge and its store are left
    # the merge
    la = tl.where(valid, la, float("-inf"))
    m = tl.maximum(tl.max(la, axis=0), m_own)
    m = tl.where(m == float("-inf"), 0.0, m)
    wa = tl.exp(la - m)
    wb = tl.exp(m_own - m)
    num = tl.sum(oa.to(tl.float32) * wa[:, None], axis=0) + acc * wb
    den = tl.sum(wa, axis=0) + l_own * wb
    out = num / tl.where(den > 0, den, 1.0)  # a padded query row with no keys at all: 0
    tl.store(out_ptr + (n * (KVH * G) + h) * D + d, out.to(out_ptr.dtype.element_ty))


def _strides3(lse: torch.Tensor, rows: int) -> tuple[int, int, int]:
    """(sequence, head, row) strides of a context pass's log-sum-exp: it comes as (seqs, heads,
    max_q) or as (heads, total_q) with ``rows`` queries per sequence."""
    if lse.dim() == 3:
        return lse.stride(0), lse.stride(1), lse.stride(2)
    return rows * lse.stride(1), lse.stride(0), lse.stride(1)


def merge_with_own(
    o_a: torch.Tensor,
    lse_a: torch.Tensor,
    ctx_used: torch.Tensor | None,
    q: torch.Tensor,
    own_k: torch.Tensor,
    own_v: torch.Tensor,
    meta: StepMeta,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Attention output (N, heads, D) in ``q``'s dtype: the context partials merged with the
    queries' attention over their own question slots.

    o_a (S*N*G, kv_heads, D): context partials, segment-major, query row ``t*G + j`` for head
    ``kv*G + j``; lse_a fp32 (S, kv_heads, N*G) or (kv_heads, S*N*G); ctx_used (S,) int32 keys per
    segment (None: every segment has keys or carries lse -inf); q (N, heads, D) rotated
    queries; own_k/own_v (≥ B*region, kv_heads, D) the question
    slots (``meta.region`` per question, ``meta.q_used`` used); ``window``: a local layer's window
    (the own slots hold consecutive positions, so it counts slots)."""
    n, heads, d = q.shape
    kvh = o_a.shape[1]
    group = heads // kvh
    if ctx_used is None:
        ctx_used = _ones(o_a.shape[0] // max(1, n * group), q.device)
    segs = ctx_used.numel()
    if heads != kvh * group or o_a.shape[0] != segs * n * group or o_a.shape[2] != d:
        raise ValueError(
            f"context partials {tuple(o_a.shape)} do not fold {segs} segments of {n} queries x "
            f"{heads} heads (group {group})"
        )
    if own_k.stride(-1) != 1 or own_v.stride() != own_k.stride() or q.stride(-1) != 1:
        raise ValueError("own keys/values and queries need a unit last stride (and the same layout)")
    oa = o_a.contiguous()
    out = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    region = meta.region
    grid: Any = (n, heads)
    _own_merge_kernel[grid](
        oa, lse_a, q, own_k, own_v, ctx_used, meta.q_used, out,
        n, meta.qlen, region, region + 1 if window is None else window, scale,
        *_strides3(lse_a, n * group), q.stride(0), q.stride(1), own_k.stride(0), own_k.stride(1),
        S=segs, SP=triton.next_power_of_2(segs), G=group, KVH=kvh, D=d,
        BR=32, num_warps=2, **pdl_launch(q),
    )  # fmt: skip
    return out


_ONES: dict[tuple[int, str], torch.Tensor] = {}


def _ones(n: int, device: torch.device) -> torch.Tensor:
    """(n,) int32 ones on ``device``, made once (a step captured in a graph allocates nothing)."""
    key = (n, str(device))
    if key not in _ONES:
        _ONES[key] = torch.ones(n, dtype=torch.int32, device=device)
    return _ONES[key]
