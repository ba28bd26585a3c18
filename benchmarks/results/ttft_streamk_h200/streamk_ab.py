"""o_proj and down_proj at 32 rows as a stream-K product: every SM one program, each taking an
equal share of the (column block x K tile) iterations and adding its partial tiles into an fp32
output with atomics, against the library's skinny GEMM (one program per 32 columns) and cuBLAS.

Qwen2.5-7B's hidden size gives 112 column blocks of 32: 112 programs on 132 SMs, so the skinny
GEMM reads its weights with 85% of the SMs (`../ttft_warm_profile_h200/`: o_proj + down at 75%
of copy bandwidth). Stream-K spreads the same iterations over all 132. In the step the fp32
output would be the residual add's input, zeroed by that add after it reads it (no memset
launch); here the memset is timed separately.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_streamk_h200/streamk_ab.py                 # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                        # CPU

A diagnostic script; not part of the library.
"""

# ruff: noqa: B023, E501  (a frozen diagnostic: each lambda is timed inside its own iteration)

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._gemm import skinny_linear

# (name, N outputs, K inputs) of the products at 32 rows
PRODUCTS = {
    "qwen2.5-7b": ((3584, 3584), (3584, 18944)),
    "llama3-8b": ((4096, 4096), (4096, 14336)),
    "gemma3-12b": ((3840, 4096), (3840, 15360)),
}


@triton.jit
def _streamk_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, sx, TILES_K, TOTAL, PER,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # program p: iterations [p * PER, (p + 1) * PER) of the (column block, K tile) space in
    # column-major order; a run of iterations inside one column block is summed in registers
    # and added to y (fp32, zeroed before) once.
    rm = tl.arange(0, BM)
    it = tl.program_id(0) * PER
    end = tl.minimum(it + PER, TOTAL)
    while it < end:
        col = it // TILES_K
        stop = tl.minimum(end, (col + 1) * TILES_K)
        rn = col * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(it, stop):
            rk = (i - col * TILES_K) * BK + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=rm[:, None] < M, other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + rk[:, None])
            acc += tl.dot(x, w)
        tl.atomic_add(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=rm[:, None] < M, sem="relaxed")
        it = stop


def streamk_linear(
    x: Any, w: Any, y: Any, programs: int, bn: int = 32, bk: int = 256, stages: int = 4
) -> Any:
    """y (M, N) fp32, zeroed, += x @ w.T; N % bn == 0 and K % bk == 0."""
    m, k = x.shape
    n = w.shape[0]
    tiles_k = k // bk
    total = (n // bn) * tiles_k
    per = triton.cdiv(total, programs)
    bm = max(16, triton.next_power_of_2(m))
    _streamk_kernel[(triton.cdiv(total, per),)](
        x,
        w,
        y,
        m,
        n,
        k,
        x.stride(0),
        tiles_k,
        total,
        per,
        BM=bm,
        BN=bn,
        BK=bk,
        num_warps=4,
        num_stages=stages,
    )
    return y


def check_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    for m, n, k, programs in ((5, 64, 128, 3), (32, 96, 256, 7), (17, 32, 64, 1)):
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        y = streamk_linear(x, w, torch.zeros(m, n), programs, bn=32, bk=32, stages=1)
        torch.testing.assert_close(y, x @ w.T, atol=1e-3, rtol=1e-4)
    print("cpu check: stream-K sums equal x @ w.T")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(
        "| shape | product N x K | cuBLAS µs | skinny (library) µs | stream-K µs | stream-K + memset µs | weights at 4.2 TB/s µs | rel err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, prods in PRODUCTS.items():
        for n, k in prods:
            x = torch.randn(32, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
            y = torch.zeros(32, n, device="cuda", dtype=torch.float32)
            want = x.float() @ w.float().T
            got = streamk_linear(x, w, y.zero_(), sms)
            err = float((got - want).norm() / want.norm())
            t_cu = do_bench_cudagraph(lambda: torch.nn.functional.linear(x, w)) * 1e3
            t_sk = do_bench_cudagraph(lambda: skinny_linear(x, w)) * 1e3
            t_st = do_bench_cudagraph(lambda: streamk_linear(x, w, y, sms)) * 1e3
            t_sz = do_bench_cudagraph(lambda: streamk_linear(x, w, y.zero_(), sms)) * 1e3
            floor = n * k * 2 / 4.2e12 * 1e6
            print(
                f"| {name} | {n} x {k} | {t_cu:.1f} | {t_sk:.1f} | {t_st:.1f} | {t_sz:.1f} | {floor:.1f} | {err:.1e} |"
            )
    # programs per SM and stages for Qwen2.5's down_proj
    x = torch.randn(32, 18944, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3584, 18944, device="cuda", dtype=torch.bfloat16)
    y = torch.zeros(32, 3584, device="cuda", dtype=torch.float32)
    print("\n| Qwen2.5 down, programs | stages | BK | µs |\n|---|---|---|---|")
    for programs in (sms, 2 * sms):
        for stages in (3, 4, 5):
            for bk in (128, 256):
                t = (
                    do_bench_cudagraph(
                        lambda p=programs, s=stages, b=bk: streamk_linear(x, w, y, p, 32, b, s)
                    )
                    * 1e3
                )
                print(f"| {programs} | {stages} | {bk} | {t:.1f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
