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
def _own_rows(k_ptr, v_ptr, rows, ok, kv, k_r, k_h, d):
    """Own slots ``rows`` (BR,) of KV head ``kv``: keys and values (BR, D), 0 where not ``ok``."""
    at = rows.to(tl.int64)[:, None] * k_r + kv * k_h + d[None, :]
    return tl.load(k_ptr + at, mask=ok[:, None], other=0.0), tl.load(v_ptr + at, mask=ok[:, None], other=0.0)


@triton.jit
def _own_tile(q, k, v, ok, m_own, l_own, acc):
    """One online-softmax step of a query (D,) fp32, pre-scaled, over own slots k/v (BR, D)
    where ``ok``: the running maximum, weight and unnormalized sum. Values not ``ok`` are
    zeroed (a first tile read before the query's bounds were known may hold an unwritten slot)."""
    v = tl.where(ok[:, None], v, 0.0)
    s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m_new = tl.maximum(m_own, tl.max(s, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe)
    alpha = tl.exp(m_own - m_safe)
    acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
    return m_new, l_own * alpha + tl.sum(p, axis=0), acc


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
    # every load below depends on no loaded value, so they are all in flight at once: the
    # program is a chain of latencies, not bandwidth. The context partials are read whole (a
    # segment with no keys carries lse -inf and o 0, or is hidden by ``used`` at the merge),
    # and so is the question's first own tile, the only one a query of a question of at most
    # BR tokens sees (a query seeing later slots, or a window starting past it, loads those
    # in the loop below)
    s_idx = tl.arange(0, SP)
    sm = s_idx < S
    used = tl.load(used_ptr + s_idx, mask=sm, other=0)
    row = n * G + h % G  # folded query row inside each segment
    la = tl.load(la_ptr + s_idx.to(tl.int64) * la_s + kv * la_h + row * la_r, mask=sm, other=0.0)
    seg_rows = s_idx.to(tl.int64) * (N * G) + row  # (SP,) rows of the (S*N*G, KVH, D) context output
    oa = tl.load(oa_ptr + (seg_rows[:, None] * KVH + kv) * D + d[None, :], mask=sm[:, None], other=0.0)
    b = n // T
    t = n % T
    used_own = tl.load(qused_ptr + b)
    q = tl.load(q_ptr + n * q_n + h * q_h + d).to(tl.float32) * scale
    r = tl.arange(0, BR)
    k0, v0 = _own_rows(k_ptr, v_ptr, b * R + r, r < R, kv, k_r, k_h, d)
    # own slots: online softmax over BR-slot tiles, only over the slots this query sees
    last = t + used_own - T  # the newest own slot this query sees
    lo = tl.maximum(last - WINDOW + 1, 0) // BR * BR
    hi = tl.minimum(tl.minimum(R, used_own), last + 1)
    m_own = tl.full((), float("-inf"), tl.float32)
    l_own = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    if lo == 0:
        ok = (r < hi) & (last - r < WINDOW)
        m_own, l_own, acc = _own_tile(q, k0, v0, ok, m_own, l_own, acc)
    for r0 in range(tl.maximum(lo, BR), hi, BR):
        rr = r0 + r
        ok = (rr < hi) & (last - rr < WINDOW)
        k, v = _own_rows(k_ptr, v_ptr, b * R + rr, ok, kv, k_r, k_h, d)
        m_own, l_own, acc = _own_tile(q, k, v, ok, m_own, l_own, acc)
    release_next(PDL)  # the merge and its store are left
    # the merge
    valid = sm & (used > 0)  # segments with no keys are skipped
    la = tl.where(valid, la, float("-inf"))
    oa = tl.where(valid[:, None], oa, 0.0)  # what a skipped segment holds weighs 0, NaN or not
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
