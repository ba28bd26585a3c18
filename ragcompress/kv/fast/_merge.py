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
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, GP: tl.constexpr,
    BR: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    # program (n, kv): query token n's G heads of KV head kv (rows j < G of a GP-row tile), so
    # each own slot is read once for the G heads, not once a head: the launch is bound by the
    # bytes it reads from L2 (results/ttft_own_merge_loads_h200/)
    n = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, GP)
    hm = j < G
    d = tl.arange(0, D)
    wait_inputs(PDL)  # the partials, the queries and the own slots are earlier kernels' outputs
    q = tl.load(q_ptr + n * q_n + (kv * G + j)[:, None] * q_h + d[None, :], mask=hm[:, None], other=0.0)
    # own slots: online softmax over BR-slot tiles, only over the slots this token sees (loads
    # masked by what it sees: query t of a question reads t + 1 slots, not the tile)
    b = n // T
    last = n % T + tl.load(qused_ptr + b) - T  # the newest own slot this token sees
    m_own = tl.full([GP], float("-inf"), tl.float32)
    l_own = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    lo = tl.maximum(last - WINDOW + 1, 0) // BR * BR
    hi = tl.minimum(tl.minimum(R, tl.load(qused_ptr + b)), last + 1)
    for r0 in range(lo, hi, BR):
        r = r0 + tl.arange(0, BR)
        ok = (r < hi) & (last - r < WINDOW)
        at = (b * R + r).to(tl.int64)[:, None] * k_r + kv * k_h + d[None, :]
        k = tl.load(k_ptr + at, mask=ok[:, None], other=0.0)
        v = tl.load(v_ptr + at, mask=ok[:, None], other=0.0)
        s = tl.where(ok[None, :], tl.dot(q, tl.trans(k), input_precision=PREC) * scale, float("-inf"))
        m_new = tl.maximum(m_own, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_own - m_safe)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        l_own = l_own * alpha + tl.sum(p, axis=1)
        m_own = m_new
    release_next(PDL)  # the merge and its store are left
    # the merge: the context partials of rows n*G + j, segment by segment (unrolled: every load
    # in flight at once); a segment with no keys weighs nothing, whatever its rows hold
    row = n * G + j
    m = m_own
    for s_i in tl.static_range(S):
        ok_s = tl.load(used_ptr + s_i) > 0
        la = tl.load(la_ptr + s_i * la_s + kv * la_h + row * la_r, mask=hm, other=float("-inf"))
        m = tl.maximum(m, tl.where(ok_s, la, float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    wb = tl.exp(m_own - m)
    num = acc * wb[:, None]
    den = l_own * wb
    for s_i in tl.static_range(S):
        ok_s = tl.load(used_ptr + s_i) > 0
        la = tl.load(la_ptr + s_i * la_s + kv * la_h + row * la_r, mask=hm, other=float("-inf"))
        wa = tl.where(ok_s, tl.exp(la - m), 0.0)
        at = ((s_i * N * G + row)[:, None] * KVH + kv) * D + d[None, :]
        oa = tl.load(oa_ptr + at, mask=hm[:, None], other=0.0)
        num += tl.where(ok_s & hm[:, None], oa.to(tl.float32), 0.0) * wa[:, None]
        den += wa
    out = num / tl.where(den > 0, den, 1.0)[:, None]  # a padded query row with no keys at all: 0
    at = (n * (KVH * G) + kv * G + j)[:, None] * D + d[None, :]
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=hm[:, None])


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
    grid: Any = (n, kvh)
    _own_merge_kernel[grid](
        oa, lse_a, q, own_k, own_v, ctx_used, meta.q_used, out,
        n, meta.qlen, region, region + 1 if window is None else window, scale,
        *_strides3(lse_a, n * group), q.stride(0), q.stride(1), own_k.stride(0), own_k.stride(1),
        S=segs, G=group, KVH=kvh, D=d, GP=max(16, triton.next_power_of_2(group)), BR=32,
        PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4, **pdl_launch(q),
    )  # fmt: skip
    return out


_ONES: dict[tuple[int, str], torch.Tensor] = {}


def _ones(n: int, device: torch.device) -> torch.Tensor:
    """(n,) int32 ones on ``device``, made once (a step captured in a graph allocates nothing)."""
    key = (n, str(device))
    if key not in _ONES:
        _ONES[key] = torch.ones(n, dtype=torch.int32, device=device)
    return _ONES[key]
