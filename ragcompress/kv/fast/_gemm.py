"""A Triton GEMM for the question step's few rows: ``x @ w.T (+ bias)`` with x (M <= 64, K),
w (N, K).

Every weight product of a question step (q/k/v, o_proj, gate/up, down_proj) reads its weights
once for a handful of rows, so its time is the weights' bytes over the bandwidth the kernel
draws. The product is computed swapped, ``y.T = w @ x.T``: a program's 64 weight rows are the
product's M side, so Hopper's warpgroup product reads both operands from shared memory, one
instruction per 64 x rows x 16 block. With x's rows as M (fewer than the warpgroup product's
64), Triton emits the older ``mma.sync``, its operands loaded into registers first: that kernel
ran at 80-85% of the copy bandwidth whatever its load path or split
(``benchmarks/results/ttft_skinny_tma_h200/``, ``ttft_streamk_h200/``), as did cuBLAS, whose
o_proj and down_proj at 32 rows are a split-K product plus a reduction (two launches). Alone, at
32 rows on an H200 (``benchmarks/results/ttft_skinny_swap_h200/``), Qwen2.5-7B: o_proj 9.4 µs
(K in two parts) against 11.6 for the unswapped kernel and 11.7 for cuBLAS, down_proj 35.7
against 37.8 / 40.0, gate/up 69.4 against cuBLAS's 74.0, q/k/v 11.6 against 12.5.

One program per 64 output columns and ``1/S`` of K: :func:`skinny_linear` (S = 1) adds the bias
and rounds to x's dtype; :func:`skinny_partials` (S > 1) leaves S fp32 partial sums that the
residual add after the product sums and rounds once
(:func:`~ragcompress.kv.fast._triton.add_rmsnorm`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs

__all__ = ["MAX_ROWS", "skinny_fits", "skinny_linear", "skinny_partials"]

# rows past which cuBLAS's tiles beat one program per column block
MAX_ROWS = 64
# 64 weight rows (one warpgroup product's M) by 128-deep K tiles: the fastest tile on every
# product swept (results/ttft_skinny_swap_h200/)
_BN, _BK, _MAX_STAGES = 64, 128, 6
# shared memory the pipeline's stages may fill (an H100/H200 SM has 227 KB): a 32-row step's
# tiles take 24 KB a stage (6 stages), a 64-row one's 32 KB (6)
_SMEM = 200 * 1024


@triton.jit
def _skinny_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sx, KS,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN: tl.constexpr, BIAS: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    # program (n, s): rows 0..M of y[s, :, n*BN:(n+1)*BN] over K range [s*KS, (s+1)*KS), as
    # (w @ x.T).T accumulated in fp32 and rounded once to y's dtype (as cuBLAS rounds a bf16
    # GEMM's output; fp32 partial planes keep their sums). EVEN: BN divides N and BK divides KS
    # (every supported family's products), so the weight loads go unmasked. BIAS: added to the
    # fp32 sum before the rounding (one launch for Qwen2's q/k/v).
    s = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k_end = tl.minimum((s + 1) * KS, K)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    wait_inputs(PDL)  # x is the previous kernel's output
    for k0 in tl.range(s * KS, k_end, BK):
        rk = k0 + tl.arange(0, BK)
        w_at = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]  # (BN, BK): w's rows, K contiguous
        x_at = x_ptr + rm[:, None] * sx + rk[None, :]  # (BM, BK)
        if EVEN:
            w = tl.load(w_at)
            x = tl.load(x_at, mask=rm[:, None] < M, other=0.0)
        else:
            w = tl.load(w_at, mask=(rn[:, None] < N) & (rk[None, :] < k_end), other=0.0)
            x = tl.load(x_at, mask=(rm[:, None] < M) & (rk[None, :] < k_end), other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
    release_next(PDL)  # only the store is left: the next kernel may launch into this tail
    if BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
    mask = (rm[None, :] < M) & (rn[:, None] < N)
    tl.store(y_ptr + (s * M + rm[None, :]) * N + rn[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)


def skinny_fits(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :func:`skinny_linear` takes this product: 1..MAX_ROWS rows of x with a unit column
    stride, and a contiguous half-precision weight (an fp32 model keeps cuBLAS's fp32 products:
    Triton's would run in tf32)."""
    return (
        0 < x.shape[0] <= MAX_ROWS
        and x.stride(-1) == 1
        and w.dtype in (torch.bfloat16, torch.float16)
        and w.is_contiguous()
    )


def _launch(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, splits: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS or m == 0:
        raise ValueError(f"the skinny GEMM takes 1..{MAX_ROWS} rows, got {m}")
    if w.shape[1] != k or not w.is_contiguous() or x.stride(1) != 1:
        raise ValueError(
            f"the skinny GEMM needs x (M, K) rows and a contiguous w (N, K): {x.shape}, {w.shape}"
        )
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"the skinny GEMM's bias must be a contiguous ({n},), got {tuple(bias.shape)}")
    bm = max(16, triton.next_power_of_2(m))
    ks = triton.cdiv(triton.cdiv(k, splits), _BK) * _BK
    stages = max(1, min(_MAX_STAGES, _SMEM // ((bm + _BN) * _BK * x.element_size())))
    _skinny_kernel[(triton.cdiv(n, _BN), splits)](
        x, w, w if bias is None else bias, y, m, n, k, x.stride(0), ks,
        BM=bm, BN=_BN, BK=_BK, EVEN=n % _BN == 0 and k == ks * splits, BIAS=bias is not None,
        num_warps=4, num_stages=stages, **pdl_launch(x),
    )  # fmt: skip
    return y


def skinny_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` (M, N) in x's dtype for x (M, K) with unit column stride, M <= MAX_ROWS,
    w (N, K) contiguous (a Linear's weight, or several stacked) and bias (N,) or None."""
    y = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
    return _launch(x, w, y, 1, bias)


def skinny_partials(x: torch.Tensor, w: torch.Tensor, splits: int) -> torch.Tensor:
    """``x @ w.T`` as ``splits`` (2 or 4) fp32 partial sums (splits, M, N) over consecutive parts
    of K, for a consumer that adds them (and rounds) itself; x and w as :func:`skinny_linear`."""
    if splits not in (2, 4):
        raise ValueError(f"skinny_partials splits K in 2 or 4 parts, got {splits}")
    y = torch.empty(splits, x.shape[0], w.shape[0], device=x.device, dtype=torch.float32)
    return _launch(x, w, y, splits)
