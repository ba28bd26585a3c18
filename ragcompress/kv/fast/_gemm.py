"""A Triton GEMM for the question step's few rows: ``x @ w.T`` with x (M <= 64, K), w (N, K).

At 32 rows cuBLAS runs o_proj and down_proj as a split-K product plus a reduction kernel: two
launches, each with its gap inside the CUDA graph. Here one program per ``32 * S`` output
columns and ``1/S`` of K reads its slice of the weights (N / 32 programs fill an H200's 132 SMs
for every supported family's hidden size), so one launch writes the output:
:func:`skinny_linear` (S = 1) rounds it to x's dtype; :func:`skinny_partials` (S > 1) leaves
S fp32 partial sums that the residual add after the product sums and rounds
(:func:`~ragcompress.kv.fast._triton.add_rmsnorm`). Each program re-reads x (M × its share of
K) from L2, as many bytes as its weights at S = 1; wider programs over part of K read x
half as often, which ran Qwen2.5-7B's down_proj with its add 43.0 → 40.0 µs on an H200
(``benchmarks/results/ttft_splitk_planes_h200/``). Used where the weights' read sets the time;
cuBLAS keeps the wide products (q/k/v, gate/up) where it reads faster.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_ROWS", "skinny_linear", "skinny_partials"]

# rows past which cuBLAS's tiles beat one program per column block
MAX_ROWS = 64
_BN, _BK, _STAGES = 32, 256, 4
# shared memory the pipeline's stages may fill (an H100/H200 SM has 227 KB): the x and weight
# tiles of a 64-row, 64-column program take 64 KB a stage, so it runs 3 stages, not 4
_SMEM = 200 * 1024


@triton.jit
def _skinny_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, sx, KS,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    # program (n, s): rows 0..M of y[s, :, n*BN:(n+1)*BN] over K range [s*KS, (s+1)*KS),
    # accumulated in fp32 and rounded once to y's dtype (as cuBLAS rounds a bf16 GEMM's output;
    # fp32 partial planes keep their sums). EVEN: BN divides N and BK divides KS (every
    # supported family's o_proj and down_proj), so weight loads go unmasked.
    s = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k_end = tl.minimum((s + 1) * KS, K)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(s * KS, k_end, BK):
        rk = k0 + tl.arange(0, BK)
        x_at = x_ptr + rm[:, None] * sx + rk[None, :]
        w_at = w_ptr + rn[None, :] * K + rk[:, None]
        if EVEN:
            x = tl.load(x_at, mask=rm[:, None] < M, other=0.0)
            w = tl.load(w_at)
        else:
            x = tl.load(x_at, mask=(rm[:, None] < M) & (rk[None, :] < k_end), other=0.0)
            w = tl.load(w_at, mask=(rn[None, :] < N) & (rk[:, None] < k_end), other=0.0)
        acc += tl.dot(x, w)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y_ptr + (s * M + rm[:, None]) * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, splits: int) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS or m == 0:
        raise ValueError(f"the skinny GEMM takes 1..{MAX_ROWS} rows, got {m}")
    if w.shape[1] != k or not w.is_contiguous() or x.stride(1) != 1:
        raise ValueError(
            f"the skinny GEMM needs x (M, K) rows and a contiguous w (N, K): {x.shape}, {w.shape}"
        )
    bn = _BN * splits  # S programs a column block of 32 * S columns: N / 32 programs at any S
    bm = max(16, triton.next_power_of_2(m))
    ks = triton.cdiv(triton.cdiv(k, splits), _BK) * _BK
    stages = max(1, min(_STAGES, _SMEM // ((bm + bn) * _BK * x.element_size())))
    _skinny_kernel[(triton.cdiv(n, bn), splits)](
        x, w, y, m, n, k, x.stride(0), ks,
        BM=bm, BN=bn, BK=_BK, EVEN=n % bn == 0 and k == ks * splits, num_warps=4, num_stages=stages,
    )  # fmt: skip
    return y


def skinny_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` (M, N) in x's dtype for x (M, K) with unit column stride, M <= MAX_ROWS, and
    w (N, K) contiguous (a Linear's weight)."""
    y = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
    return _launch(x, w, y, 1)


def skinny_partials(x: torch.Tensor, w: torch.Tensor, splits: int) -> torch.Tensor:
    """``x @ w.T`` as ``splits`` (2 or 4: a program's columns are ``32 * splits``) fp32 partial
    sums (splits, M, N) over consecutive parts of K, for a consumer that adds them (and rounds)
    itself; x and w as :func:`skinny_linear`."""
    if splits not in (2, 4):
        raise ValueError(f"skinny_partials splits K in 2 or 4 parts, got {splits}")
    y = torch.empty(splits, x.shape[0], w.shape[0], device=x.device, dtype=torch.float32)
    return _launch(x, w, y, splits)
