"""o_proj / down_proj at 32 rows as split-K into fp32 partial planes that the next residual
add + RMSNorm sums (no atomics, no memset), against the library's skinny GEMM + add_rmsnorm.

Why: the skinny GEMM (one program per 32 output columns) re-reads x (32 x K) once per program,
as many bytes from L2 as the weights themselves; at ~6.7 TB/s of L2-to-SM traffic on Qwen2.5's
down that is the limit (`../ttft_skinny_tma_h200/`). A program of BN columns over 1/S of K reads
x once per BN columns, and S programs per column block keep the SMs as full. The S fp32 partial
planes (S, M, N) go to the add + norm that follows every o_proj and down_proj in the step, which
sums them in fp32, rounds to bf16 (where cuBLAS would round the product) and adds: the product's
rounding stays one rounding, and no launch is added.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_splitk_planes_h200/splitk_planes_ab.py            # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <this script> --check-cpu                              # CPU

A diagnostic script; not part of the library.
"""

# ruff: noqa: E501

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.ttft_timing import graph_ms

from ragcompress.kv.fast._gemm import skinny_linear
from ragcompress.kv.fast._triton import add_rmsnorm

PRODUCTS = [  # (shape, product, N, K, layers)
    ("qwen2.5-7b", "o_proj", 3584, 3584, 28),
    ("qwen2.5-7b", "down", 3584, 18944, 28),
    ("llama3-8b", "o_proj", 4096, 4096, 32),
    ("llama3-8b", "down", 4096, 14336, 32),
]
CONFIGS = [  # (BN, S, BK, stages, warps)
    (32, 1, 256, 4, 4),
    (64, 2, 256, 4, 4),
    (64, 2, 128, 6, 4),
    (64, 4, 256, 4, 4),
    (128, 4, 128, 5, 4),
    (128, 4, 128, 5, 8),
    (128, 2, 128, 5, 8),
    (32, 2, 256, 4, 4),
]


@triton.jit
def _splitk_kernel(x_ptr, w_ptr, p_ptr, M, N, K, sx, KS, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # program (n, s): columns [n*BN, (n+1)*BN) over K range [s*KS, (s+1)*KS) -> fp32 plane s
    s = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(s * KS, (s + 1) * KS, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None])
        acc += tl.dot(x, w)
    tl.store(p_ptr + (s * M + rm[:, None]) * N + rn[None, :], acc, mask=rm[:, None] < M)


@triton.jit
def _planes_add_rmsnorm_kernel(x_ptr, p_ptr, w_ptr, out_ptr, res_ptr, M, n_cols, eps, S: tl.constexpr, BLOCK: tl.constexpr):
    # the library's add_rmsnorm (Llama rounding) with the delta summed from S fp32 planes and
    # rounded once to the model dtype
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    dt = res_ptr.dtype.element_ty
    d = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(S):
        d += tl.load(p_ptr + (s * M + row) * n_cols + cols, mask=m, other=0.0)
    x = tl.load(x_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    xr = (x + d.to(dt).to(tl.float32)).to(dt)
    tl.store(res_ptr + row * n_cols + cols, xr, mask=m)
    x = xr.to(tl.float32)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    out = w * (x * (1.0 / tl.sqrt(var + eps))).to(dt).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, out.to(dt), mask=m)


def splitk(x: Any, w: Any, bn: int, s: int, bk: int, stages: int, warps: int) -> Any:
    m, k = x.shape
    n = w.shape[0]
    planes = torch.empty(s, m, n, device=x.device, dtype=torch.float32)
    ks = k // s
    assert ks % bk == 0 and n % bn == 0
    _splitk_kernel[(n // bn, s)](
        x, w, planes, m, n, k, x.stride(0), ks, BM=max(16, triton.next_power_of_2(m)), BN=bn, BK=bk,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return planes


def planes_add_rmsnorm(x: Any, planes: Any, weight: Any, eps: float) -> tuple[Any, Any]:
    rows, n = x.shape
    out, res = torch.empty_like(x), torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _planes_add_rmsnorm_kernel[(rows,)](
        x, planes, weight, out, res, rows, n, eps, S=planes.shape[0], BLOCK=block, num_warps=min(16, max(4, block // 512))
    )  # fmt: skip
    return res, out


def check_cpu() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 512)
    w = torch.randn(128, 512) * 0.05
    resid = torch.randn(5, 128)
    nw = torch.rand(128) + 0.5
    want = add_rmsnorm(resid, x @ w.T, nw, 1e-6)
    for bn, s, bk in ((32, 1, 128), (64, 2, 128), (32, 4, 64)):
        got = planes_add_rmsnorm(resid, splitk(x, w, bn, s, bk, 2, 4), nw, 1e-6)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    print("cpu check: split-K planes + their add/norm give the library's add_rmsnorm of x @ w.T")


def time_chain(fns: list[Callable[[], Any]], reps: int = 20) -> float:
    """Median µs a call of a CUDA graph of ``fns`` (one per layer, each its own weights)."""
    return graph_ms(lambda: [f() for f in fns], reps) * 1e3 / len(fns)


def main() -> None:
    print(torch.cuda.get_device_name(0), torch.__version__, triton.__version__)
    print("\nµs a layer, CUDA graph over every layer's own weights; 'with add+norm': the product then the residual add + RMSNorm that consumes it\n")
    print("| shape | product | config (BN, S, BK, stages, warps) | product alone | with add+norm | max abs diff of the normed output vs library |")
    print("|---|---|---|---|---|---|")
    for shape, name, n, k, layers in PRODUCTS:
        torch.manual_seed(0)
        x = torch.randn(32, k, device="cuda", dtype=torch.bfloat16)
        resid = torch.randn(32, n, device="cuda", dtype=torch.bfloat16)
        nw = torch.rand(n, device="cuda", dtype=torch.bfloat16) + 0.5
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers)]
        lib_alone = time_chain([lambda w=w: skinny_linear(x, w) for w in ws])
        lib_chain = time_chain([lambda w=w: add_rmsnorm(resid, skinny_linear(x, w), nw, 1e-6) for w in ws])
        ref = add_rmsnorm(resid, skinny_linear(x, ws[0]), nw, 1e-6)[1].float()
        print(f"| {shape} | {name} | library skinny + add_rmsnorm | {lib_alone:.1f} | {lib_chain:.1f} | 0 |")
        for cfg in CONFIGS:
            try:
                got = planes_add_rmsnorm(resid, splitk(x, ws[0], *cfg), nw, 1e-6)[1].float()
                diff = (got - ref).abs().max().item()
                alone = time_chain([lambda w=w: splitk(x, w, *cfg) for w in ws])
                chain = time_chain([lambda w=w: planes_add_rmsnorm(resid, splitk(x, w, *cfg), nw, 1e-6) for w in ws])
                print(f"| {shape} | {name} | {cfg} | {alone:.1f} | {chain:.1f} | {diff:.1e} |")
            except Exception as e:  # a config over shared memory is reported, not fatal
                print(f"| {shape} | {name} | {cfg} | — ({type(e).__name__}: {str(e)[:80]}) | | |")
        del ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    if ap.parse_args().check_cpu:
        check_cpu()
    else:
        main()
