"""Triton kernel: the queries folded and copied once per context segment for the split-KV
context pass.

:class:`~ragcompress.kv.fast.attention.FlashCascade` runs the context as ``S`` flash sequences,
each with its own copy of the queries, the ``G`` query heads that share a KV head folded into the
rows (row ``t*G + j`` of KV head ``kv`` is query head ``kv*G + j`` of token ``t``) so each KV
head's keys are read once. In torch that is a permuted copy then a repeat: two launches, 10.8 µs
per layer on an H200 (32 tokens, 32 heads, 33 segments). Here one program per (token, head)
reads its row once and writes it ``S`` times: 3.2 µs. Imported only where Triton is (CUDA, or
the interpreter in tests).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["fold_queries"]


@triton.jit
def _fold_kernel(
    q_ptr, out_ptr, N, q_n, q_h, S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr
):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, D)
    x = tl.load(q_ptr + n * q_n + h * q_h + d)
    row = n * G + h % G
    for s in range(S):
        tl.store(out_ptr + ((s * N * G + row) * KVH + h // G) * D + d, x)


def fold_queries(q: torch.Tensor, splits: int, kv_heads: int) -> torch.Tensor:
    """(splits * N * G, kv_heads, D): ``q`` (N, heads, D) folded (row ``t*G + j``, head ``kv``
    is query head ``kv*G + j`` of token ``t``), once per segment."""
    n, heads, d = q.shape
    g = heads // kv_heads
    if q.stride(-1) != 1:
        raise ValueError("queries need a unit last stride")
    out = torch.empty(splits * n * g, kv_heads, d, device=q.device, dtype=q.dtype)
    grid: Any = (n, heads)
    _fold_kernel[grid](q, out, n, q.stride(0), q.stride(1), S=splits, G=g, KVH=kv_heads, D=d, num_warps=1)
    return out
