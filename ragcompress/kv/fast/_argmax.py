"""Triton kernels: each row's argmax of the step's fp32 logits, as ``torch.argmax`` picks it
(the first index of the largest value; a NaN counts as larger than any number).

torch's reduction ran one row of 128K-152K logits as a single 512-thread block: 8 µs a step on
Qwen2.5's vocabulary and 28 µs on Llama 3's on an H200
(``benchmarks/results/ttft_warm_profile_h200/``). Here ``P`` programs a row each reduce a slice
of it and one more launch picks among their ``P`` candidates. Imported only where Triton is
(CUDA, or the interpreter in tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["argmax_rows"]

# programs a row in the first pass: ~2K logits each over a 128K-152K vocabulary
_PROGRAMS = 64
_BLOCK = 1024


@triton.jit
def _pick(n1, v1, i1, n2, v2, i2):
    # the greater candidate: a NaN first, then the larger value, then the lower index
    first = (n1 > n2) | ((n1 == n2) & ((v1 > v2) | ((v1 == v2) & (i1 < i2))))
    return tl.where(first, n1, n2), tl.where(first, v1, v2), tl.where(first, i1, i2)


@triton.jit
def _best(n, v, i):
    # the best of the candidates (n, v, i) (K,), as _pick orders them, through three plain
    # reductions (a custom-combine reduce is slow to interpret)
    top_n = tl.max(n, axis=0)
    top_v = tl.max(tl.where(n == top_n, v, float("-inf")), axis=0)
    at = tl.min(tl.where((n == top_n) & (v == top_v), i, 2147483647), axis=0)
    return top_n, top_v, at


@triton.jit
def _slice_kernel(x_ptr, n_ptr, v_ptr, i_ptr, V, sx, CHUNK, P: tl.constexpr, BLOCK: tl.constexpr):
    # program (row, p): the best of columns [p * CHUNK, (p + 1) * CHUNK) -> candidate (row, p)
    row = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    lo = p * CHUNK
    best_n = tl.zeros([BLOCK], tl.int32)
    best_v = tl.full([BLOCK], float("-inf"), tl.float32)
    best_i = tl.full([BLOCK], 2147483647, tl.int32)
    for off in range(lo, tl.minimum(lo + CHUNK, V), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        ok = cols < tl.minimum(lo + CHUNK, V)
        x = tl.load(x_ptr + row * sx + cols, mask=ok, other=float("-inf"))
        nan = (x != x).to(tl.int32)
        x = tl.where(nan > 0, 0.0, x)
        # masked lanes carry -inf and the largest index: any real column beats them
        best_n, best_v, best_i = _pick(best_n, best_v, best_i, nan, x, tl.where(ok, cols, 2147483647))
    n, v, i = _best(best_n, best_v, best_i)
    at = row * P + p
    tl.store(n_ptr + at, n)
    tl.store(v_ptr + at, v)
    tl.store(i_ptr + at, i)


@triton.jit
def _pick_kernel(n_ptr, v_ptr, i_ptr, out_ptr, P: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = row * P + tl.arange(0, P)
    _, _, i = _best(tl.load(n_ptr + c), tl.load(v_ptr + c), tl.load(i_ptr + c))
    tl.store(out_ptr + row, i.to(tl.int64))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """(B,) int64: ``x.argmax(-1)`` for fp32 x (B, V) with a unit last stride and V < 2**31."""
    if x.dim() != 2 or x.dtype != torch.float32 or x.stride(1) != 1 or x.shape[1] >= 2**31 - 1:
        raise ValueError(f"argmax_rows takes fp32 (B, V) rows, unit stride, got {x.dtype} {tuple(x.shape)}")
    b, v = x.shape
    chunk = triton.cdiv(triton.cdiv(v, _PROGRAMS), _BLOCK) * _BLOCK
    n = torch.empty(b, _PROGRAMS, dtype=torch.int32, device=x.device)
    val = torch.empty(b, _PROGRAMS, dtype=torch.float32, device=x.device)
    idx = torch.empty(b, _PROGRAMS, dtype=torch.int32, device=x.device)
    grid = (b, _PROGRAMS)
    _slice_kernel[grid](x, n, val, idx, v, x.stride(0), chunk, P=_PROGRAMS, BLOCK=_BLOCK, num_warps=4)
    out = torch.empty(b, dtype=torch.int64, device=x.device)
    _pick_kernel[(b,)](n, val, idx, out, P=_PROGRAMS, num_warps=1)
    return out
