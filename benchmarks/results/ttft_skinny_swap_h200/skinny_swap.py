"""The skinny GEMM with its operands swapped: ``y.T = w @ x.T``, so the weight tile is the
product's M side (64 or 128 rows: Hopper's warpgroup product, fed from shared memory by one
instruction per 64 x 32 x 16 block) and the step's 32 rows are its N side.

The library's skinny kernel (``ragcompress/kv/fast/_gemm.py``) computes ``x @ w.T`` with x's 32
rows as M: below the warpgroup product's 64 rows, so Triton emits the pre-Hopper ``mma.sync``
(operands loaded into registers first, many more instructions a tile). Earlier sweeps found that
kernel bound by its own instruction stream at 80-85% of copy bandwidth whatever its load path
(`../ttft_skinny_tma_h200/`, `../ttft_streamk_h200/`, `../ttft_gemm_sweep_h200/`). Each row:
a CUDA graph over 8 copies of the weights (not in L2 when their turn comes), µs a product.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_skinny_swap_h200/skinny_swap.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <the same script> --check-cpu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._gemm import _SMEM, skinny_linear, skinny_partials

ROWS, COPIES = 32, 8
SHAPES = {  # (N, K)
    "qwen2.5-7b": {"o": (3584, 3584), "down": (3584, 18944), "gate_up": (37888, 3584), "qkv": (4608, 3584)},
    "llama3-8b": {"o": (4096, 4096), "down": (4096, 14336), "gate_up": (28672, 4096)},
}


@triton.jit
def _swap_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, sx, KS,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    # program (n, s): y[s, :M, n*BN:(n+1)*BN] over K range [s*KS, (s+1)*KS) as (w @ x.T).T;
    # BN divides N and BK divides KS here (every product swept), so weight loads go unmasked
    s = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in tl.range(s * KS, (s + 1) * KS, BK):
        rk = k0 + tl.arange(0, BK)
        w = tl.load(w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :])  # (BN, BK), K contiguous
        x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=rm[:, None] < M, other=0.0)  # (BM, BK)
        acc = tl.dot(w, tl.trans(x), acc)
    mask = (rm[None, :] < M) & (rn[:, None] < N)
    tl.store(y_ptr + (s * M + rm[None, :]) * N + rn[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)


def swap(x: Any, w: Any, bn: int, bk: int, splits: int, warps: int, stages: int = 0) -> Any:
    m, k = x.shape
    n = w.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    ks = k // splits
    if n % bn or ks % bk or k % splits:
        raise ValueError("the swept products divide evenly")
    if stages == 0:
        stages = max(1, min(6, _SMEM // ((bm + bn) * bk * x.element_size())))
    y = torch.empty(splits, m, n, device=x.device, dtype=torch.float32 if splits > 1 else x.dtype)
    _swap_kernel[(n // bn, splits)](
        x, w, y, m, n, k, x.stride(0), ks, BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages
    )
    return y


def check_cpu() -> None:
    torch.manual_seed(0)
    for m, n, k, bn, bk, splits in (
        (5, 64, 96, 64, 16, 2),
        (32, 128, 64, 64, 32, 1),
        (17, 128, 128, 128, 32, 4),
    ):
        x, w = torch.randn(m, k), torch.randn(n, k)
        got = swap(x, w, bn, bk, splits, 4, 1).float().sum(0)
        torch.testing.assert_close(got, x @ w.T, atol=1e-4, rtol=1e-4)
    print("cpu check: the swapped kernel equals x @ w.T (partial rows, splits 1/2/4)")


def per_product(make: Callable[[Any, Any], Any], x: Any, ws: list[Any]) -> float:
    from ragcompress_bench.ttft_timing import graph_ms

    return graph_ms(lambda: [make(x, w) for w in ws], reps=20) / len(ws) * 1e3


def gpu() -> None:
    from ragcompress_bench.ttft_timing import Clock, copy_bandwidth

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    bw = copy_bandwidth(torch.device("cuda"), Clock(torch.device("cuda"), 3, 10))
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    torch.manual_seed(0)
    for family, prods in SHAPES.items():
        for name, (n, k) in prods.items():
            x = torch.randn(ROWS, k, device="cuda", dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
            ref = torch.nn.functional.linear(x, ws[0]).float()
            floor = n * k * 2 / bw * 1e6
            rows = [("cuBLAS F.linear", per_product(torch.nn.functional.linear, x, ws), 0.0)]
            lib: Callable[[Any, Any], Any] = (
                (lambda x, w: skinny_partials(x, w, 2)) if name == "down" else skinny_linear
            )
            rows.append(
                (
                    "library skinny",
                    per_product(lib, x, ws),
                    float((lib(x, ws[0]).float().reshape(-1, ROWS, n).sum(0) - ref).abs().max()),
                )
            )
            for bn, bk, splits in itertools.product((64, 128), (64, 128, 256), (1, 2, 4, 8)):
                warps = 4
                try:
                    out = swap(x, ws[0], bn, bk, splits, warps).float().sum(0)
                    t = per_product(lambda x, w, a=(bn, bk, splits, warps): swap(x, w, *a), x, ws)
                except Exception as e:  # shapes that do not divide, or do not fit
                    if not isinstance(e, ValueError):
                        print(f"skip {family} {name} {bn}/{bk}/{splits}: {type(e).__name__}: {str(e)[:100]}")
                    continue
                rows.append((f"swapped BN {bn} BK {bk} splits {splits} ({n // bn * splits} programs)", t,
                             float((out - ref).abs().max())))  # fmt: skip
            print(
                f"\n## {family} {name}: ({ROWS} x {k}) @ ({k} x {n}), floor {floor:.1f} µs at the copy bandwidth"
            )
            print("| kernel | µs | x floor | max abs diff from F.linear |\n|---|---|---|---|")
            for label, t, err in sorted(rows, key=lambda r: r[1])[:10]:
                print(f"| {label} | {t:.1f} | {t / floor:.2f} | {err:.1e} |")
            for label, t, err in rows[:2]:
                print(f"({label}: {t:.1f} µs)")
            del ws


if __name__ == "__main__":
    check_cpu() if "--check-cpu" in sys.argv else gpu()
