"""Triton helpers shared by the split-KV context kernels (``_context.py``, ``_paged.py``,
``_paged_int4.py``, ``_window.py``): the online-softmax step over a tile of keys (base 2, the
scale folded in), and the store of a segment's partial ``(o, lse)`` in the layout
:func:`~ragcompress.kv.fast._merge.merge_with_own` reads. Imported only where Triton is (CUDA,
or the interpreter in tests)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["base2_weights", "folded_rows", "partials", "store_partial"]


def partials(
    caller: str,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    segs: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Checks a layer's ``keys``/``values`` (slots, kv_heads, D) have unit stride over heads and
    channels, and allocates the outputs of a context pass of ``q`` (N, heads, D) over ``segs``
    segments: ``(G, N*G, o (segs*N*G, kv_heads, D), lse fp32 (segs, kv_heads, N*G))``. ``out``:
    those two, given (contiguous: e.g. a range of segments of a larger pair, so that two passes
    write one merge's partials without a concatenation)."""
    n, heads, d = q.shape
    kvh = keys.shape[1]
    for name, t in (("keys", keys), ("values", values)):
        if t.stride(2) != 1 or t.stride(1) != d:
            raise ValueError(f"{caller} needs {name} with (.., kv_heads, D) contiguous, got {t.stride()}")
    ng = n * (heads // kvh)
    if out is None:
        o = torch.empty(segs * ng, kvh, d, device=q.device, dtype=q.dtype)
        lse = torch.empty(segs, kvh, ng, device=q.device, dtype=torch.float32)
        return heads // kvh, ng, o, lse
    o, lse = out
    want_o, want_lse = (segs * ng, kvh, d), (segs, kvh, ng)
    if o.shape != want_o or lse.shape != want_lse or not (o.is_contiguous() and lse.is_contiguous()):
        raise ValueError(f"{caller}: out must be contiguous o {want_o} and lse {want_lse}")
    return heads // kvh, ng, o, lse


@triton.jit
def folded_rows(NG, G, BLOCK_M: tl.constexpr):
    """This program's place in a context pass's grid (segment, KV head, block of folded rows):
    ``(seg, kv, rows, rm, tok, head)``, with ``rows`` (BLOCK_M,) int64 folded query rows
    (valid where ``rm``: below ``NG``), row ``t*G + j`` being query head ``head = kv*G + j`` of
    token ``tok = t``."""
    seg = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(2).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    return seg, kv, rows, rows < NG, rows // G, kv * G + rows % G


@triton.jit
def base2_weights(s, qk_scale, m_i, l_i):
    """One tile of *unscaled* products ``s`` (BLOCK_M, BLOCK_N) fp32 (``-inf`` where hidden) into
    the base-2 online softmax whose running max and sum are ``m_i``, ``l_i`` (BLOCK_M,):
    ``(m_new, l_new, alpha, p)``, the logits being ``s * qk_scale`` (``qk_scale`` > 0, holding
    log2(e)); the caller scales its accumulator by ``alpha`` and adds ``p @ v``. The scale is never
    applied on its own: the row max is taken over the raw products and scaled once a row
    (rounding is monotone, so it is the scaled scores' max bit for bit), and each weight is one
    fused multiply-add into the exponent. One instruction a score fewer than scaling the tile
    first: the bf16 paged pass 3-4% faster a layer at 10K-32K on an H200, the contiguous pass
    bit for bit as before (results/ttft_lazy_rescale_h200/). tests/kv/test_fast_online.py."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(tl.fma(s, qk_scale, -m_safe[:, None]))
    return m_new, l_i * alpha + tl.sum(p, axis=1), alpha, p


@triton.jit
def store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH: tl.constexpr, D: tl.constexpr):
    """Segment ``seg``'s partial for KV head ``kv`` and folded query ``rows`` (BLOCK_M,) (valid
    where ``rm``) from the base-2 running max ``m_i`` and sum ``l_i`` of :func:`base2_weights`:
    o (S*NG, KVH, D) normalized, lse (S, KVH, NG) natural log (the max times ln 2), ``-inf``
    (and o 0) for a row that saw no key."""
    d = tl.arange(0, D)
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i * 0.6931471805599453 + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(
        o_ptr + ((seg * NG + rows[:, None]) * KVH + kv) * D + d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=rm[:, None],
    )
    tl.store(lse_ptr + (seg * KVH + kv) * NG + rows, lse, mask=rm)
