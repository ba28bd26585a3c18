"""Triton kernels: the step's greedy token, ``argmax`` over each row of the logits, in two launches.

``torch.argmax`` over a (1, vocab) row reduces it in one thread block: on an H200 27.8 µs a step
for Llama-3's 128,256 logits (``benchmarks/results/ttft_paged_capacity_h200/``), in every prefill
and every decode step. Here ``P`` programs a row each take ``BLOCK`` logits and write their
maximum and its index; one program a row then picks the first block holding the row's maximum.
Ties go to the lowest index, as ``torch.argmax``'s do; a NaN counts as the maximum (its first
one wins), as in ``torch.argmax``. Imported only where Triton is (CUDA, or the interpreter in
tests); :func:`~ragcompress.kv.fast.greedy.greedy` chooses.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["argmax_rows"]


@triton.jit
def _block_max(x_ptr, val_ptr, idx_ptr, V, x_b, P, BLOCK: tl.constexpr):
    """Program ``(b, p)``: the maximum of row ``b``'s logits ``[p * BLOCK, (p + 1) * BLOCK)``
    and its (first) index."""
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    offs = p * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + b * x_b + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # a NaN is the maximum (ties: the first one wins)
    m, i = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(val_ptr + b * P + p, m)
    tl.store(idx_ptr + b * P + p, p * BLOCK + i)


@triton.jit
def _pick(val_ptr, idx_ptr, out_ptr, P, PP: tl.constexpr):
    """Row ``b``'s token: the index held by its first block of the largest maximum."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, PP)
    v = tl.load(val_ptr + b * P + j, mask=j < P, other=float("-inf"))
    _, k = tl.max(v, axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(out_ptr + b, tl.load(idx_ptr + b * P + k).to(tl.int64))


def argmax_rows(logits: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """(B,) int64: the index of each row's maximum of ``logits`` (B, V) (unit last stride);
    ``torch.argmax(logits, -1)``'s answer, ties and NaNs included (NaNs are taken for +inf: a
    row holding both +inf and NaN gives the first of either)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"argmax_rows takes (B, V) logits, unit last stride; got {tuple(logits.shape)}")
    b, v = logits.shape
    p = triton.cdiv(v, block)
    vals = torch.empty(b, p, device=logits.device, dtype=torch.float32)
    idx = torch.empty(b, p, device=logits.device, dtype=torch.int32)
    out = torch.empty(b, device=logits.device, dtype=torch.int64)
    grid: Any = (b, p)
    _block_max[grid](logits, vals, idx, v, logits.stride(0), p, BLOCK=block, num_warps=4)
    _pick[(b,)](vals, idx, out, p, PP=triton.next_power_of_2(p), num_warps=1)
    return out
