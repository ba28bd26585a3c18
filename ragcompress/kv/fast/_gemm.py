"""A Triton GEMM for the question step's few rows: ``x @ w.T`` with x (M <= 64, K), w (N, K).

At 32 rows cuBLAS runs o_proj and down_proj as a split-K product plus a reduction kernel: two
launches, each with its gap inside the CUDA graph. Here one program per 32 output columns reads
its whole slice of the weights (N / 32 programs fill an H200's 132 SMs for every supported
family's hidden size), so one launch writes the rounded output. Used where the weights' read
sets the time; cuBLAS keeps the wide products (q/k/v, gate/up) where it reads faster.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_ROWS", "skinny_linear"]

# rows past which cuBLAS's tiles beat one program per column block
MAX_ROWS = 64
_BN, _BK, _STAGES = 32, 256, 4


@triton.jit
def _skinny_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, sx, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN: tl.constexpr
):
    # program n: rows 0..M of y[:, n*BN:(n+1)*BN], accumulated in fp32 over all of K and
    # rounded once to y's dtype (as cuBLAS rounds a bf16 GEMM's output). EVEN: BN divides N and
    # BK divides K (every supported family's o_proj and down_proj), so weight loads go unmasked.
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        x_at = x_ptr + rm[:, None] * sx + rk[None, :]
        w_at = w_ptr + rn[None, :] * K + rk[:, None]
        if EVEN:
            x = tl.load(x_at, mask=rm[:, None] < M, other=0.0)
            w = tl.load(w_at)
        else:
            x = tl.load(x_at, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            w = tl.load(w_at, mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        acc += tl.dot(x, w)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def skinny_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` (M, N) in x's dtype for x (M, K) with unit column stride, M <= MAX_ROWS, and
    w (N, K) contiguous (a Linear's weight)."""
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS or m == 0:
        raise ValueError(f"skinny_linear takes 1..{MAX_ROWS} rows, got {m}")
    if w.shape[1] != k or not w.is_contiguous() or x.stride(1) != 1:
        raise ValueError(f"skinny_linear needs x (M, K) rows and a contiguous w (N, K): {x.shape}, {w.shape}")
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    bm = max(16, triton.next_power_of_2(m))
    _skinny_kernel[(triton.cdiv(n, _BN),)](
        x,
        w,
        y,
        m,
        n,
        k,
        x.stride(0),
        BM=bm,
        BN=_BN,
        BK=_BK,
        EVEN=n % _BN == 0 and k % _BK == 0,
        num_warps=4,
        num_stages=_STAGES,
    )
    return y
