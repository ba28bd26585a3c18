"""Triton kernel: flash attention for recomputed tokens scattered through a cache, each masked by
its own logical position.

``blend``'s partial forward runs ``k`` chosen context tokens (sorted by slot) over the whole
assembled cache: token ``t`` sees the slots whose logical position is ≤ its own. The query heads
that share a KV head are folded into the rows, token-major (row ``t * G + j`` is query head
``kv * G + j`` of token ``t``), so one program's ``BLOCK_M`` rows are a few neighbouring tokens and
each KV head's keys are read once per program. Per program, ``bounds`` gives two slot counts:

* ``lo`` (a multiple of ``BLOCK_N``): every slot below it is visible to every row of the program,
  so those tiles run without a mask;
* ``hi``: no row sees a slot at or past it, so the loop stops there. Between the two, each row is
  masked by its own position.

Where positions grow with the slot (``concat``) that skips the masked half of the work and the
masks of all but the last tiles; elsewhere ``lo = 0, hi = slots`` and every tile is masked, which
is still exact. Programs run the heaviest (last) row blocks first, so the short ones fill the tail.
Imported only where Triton is (CUDA, or the interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragcompress.kv.assembly.flash_blocks import BLOCK_M, BLOCK_N

__all__ = ["position_flash"]

_LOG2E = 1.4426950408889634


@triton.jit
def _tile(q, k_ptrs, v_ptrs, m_i, l_i, acc, qk_scale, vis, MASKED: tl.constexpr):
    """One ``BLOCK_N``-key tile into the running max ``m_i``, sum ``l_i`` (base 2) and ``acc``."""
    k = tl.load(k_ptrs)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    v = tl.load(v_ptrs)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _position_flash_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, qpos_ptr, kpos_ptr, bounds_ptr,
    sq_h, sq_t, sk_h, sk_t, sv_h, sv_t, NG, slots, qk_scale,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    blk = (tl.num_programs(0) - 1 - tl.program_id(0)).to(tl.int64)  # the longest rows first
    kv = tl.program_id(1).to(tl.int64)
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rm = rows < NG
    tok = tl.where(rm, rows // G, 0)
    head = kv * G + rows % G
    d = tl.arange(0, D)
    q = tl.load(q_ptr + head[:, None] * sq_h + tok[:, None] * sq_t + d[None, :], mask=rm[:, None], other=0.0)
    # padding rows see every key (no row of -inf); they are not stored
    qp = tl.load(qpos_ptr + tok, mask=rm, other=2**62)
    lo = tl.load(bounds_ptr + 2 * blk).to(tl.int64)
    hi = tl.load(bounds_ptr + 2 * blk + 1).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    k_base = k_ptr + kv * sk_h + d[None, :]
    v_base = v_ptr + kv * sv_h + d[None, :]
    for off in range(0, lo, BLOCK_N):  # every row sees these: no mask
        at = off + n
        k_at, v_at = k_base + at[:, None] * sk_t, v_base + at[:, None] * sv_t
        m_i, l_i, acc = _tile(q, k_at, v_at, m_i, l_i, acc, qk_scale, rm[:, None], False)
    for off in range(lo, hi, BLOCK_N):  # the band: each row by its own position
        at = tl.minimum(off + n, slots - 1)  # past ``hi`` loads a real slot, masked below
        kp = tl.load(kpos_ptr + at)
        vis = ((off + n) < hi)[None, :] & (kp[None, :] <= qp[:, None])
        k_at, v_at = k_base + at[:, None] * sk_t, v_base + at[:, None] * sv_t
        m_i, l_i, acc = _tile(q, k_at, v_at, m_i, l_i, acc, qk_scale, vis, True)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + (tok[:, None] * (tl.num_programs(1) * G) + head[:, None]) * D + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=rm[:, None])  # fmt: skip


def position_flash(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    bounds: torch.Tensor,
    scale: float,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """``query`` (heads, n, D) after RoPE, ``key``/``value`` (kv_heads, slots, D) the whole cache
    (any strides with unit stride over channels), ``q_pos`` (n,) / ``k_pos`` (slots,) int64
    logical positions, ``bounds`` (ceil(n * G / BLOCK_M), 2) int32 per row block (module
    docstring) → (n, heads, D) in ``query``'s dtype. ``num_warps``/``num_stages``: the launch's
    (the defaults measured best on an H200, ``benchmarks/results/ttft_flash_recompute_h200/``)."""
    heads, n, d = query.shape
    kvh, slots = key.shape[0], key.shape[1]
    g = heads // kvh
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.stride(-1) != 1:
            raise ValueError(f"position_flash needs {name} with unit stride over channels, got {t.stride()}")
    out = torch.empty(n, heads, d, device=query.device, dtype=query.dtype)
    grid = (triton.cdiv(n * g, BLOCK_M), kvh)
    _position_flash_kernel[grid](
        query, key, value, out, q_pos, k_pos, bounds,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        n * g, slots, scale * _LOG2E,
        G=g, D=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
