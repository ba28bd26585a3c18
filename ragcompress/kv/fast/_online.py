"""Triton helpers shared by the split-KV context kernels (``_paged.py``, ``_window.py``): one
online-softmax update over a tile of keys, and the store of a segment's partial ``(o, lse)`` in
the layout :func:`~ragcompress.kv.fast._merge.merge_with_own` reads. Imported only where
Triton is (CUDA, or the interpreter in tests)."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["online_update", "store_partial"]


@triton.jit
def online_update(s, m_i, l_i):
    """One tile of scores ``s`` (BLOCK_M, BLOCK_N) fp32, ``-inf`` where hidden, into the running
    max ``m_i`` and sum ``l_i`` (BLOCK_M,): returns ``(m_new, l_new, p, alpha)``; the caller
    then scales its accumulator by ``alpha`` and adds ``p @ v`` (loading ``v`` after the scores,
    as before the helper existed). A row with no key yet keeps max ``-inf`` and weight 0."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, axis=1), p, alpha


@triton.jit
def store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH: tl.constexpr, D: tl.constexpr):
    """Segment ``seg``'s partial for KV head ``kv`` and folded query ``rows`` (BLOCK_M,) (valid
    where ``rm``): o (S*NG, KVH, D) normalized, lse (S, KVH, NG) natural log, ``-inf`` (and o 0)
    for a row that saw no key."""
    d = tl.arange(0, D)
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(
        o_ptr + ((seg * NG + rows[:, None]) * KVH + kv) * D + d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=rm[:, None],
    )
    tl.store(lse_ptr + (seg * KVH + kv) * NG + rows, lse, mask=rm)
