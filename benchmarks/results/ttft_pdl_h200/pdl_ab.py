"""Programmatic dependent launch inside a captured CUDA graph: does letting a kernel start while
the previous one drains save the step's per-launch ramp? (No: README.md.)

Inside the fast engine's graph, kernels run ~0.4 µs apart, but each small kernel also ramps up
(programs scheduled, first loads in flight) while the GPU's bandwidth is idle. With PDL a kernel
launched with ``launch_pdl=True`` may start once every program of the one before has called
``gdc_launch_dependents``; it loads what does not depend on that kernel (its first weight
tile) and waits (``gdc_wait``) before it reads the previous output. This script times a chain
of 64 skinny GEMMs of o_proj's shape (32 rows, 4096 x 4096, each reading the previous one's
output), captured in one graph, with and without PDL, and checks the outputs are equal.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pdl_h200/pdl_ab.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _chain_gemm(
    x_ptr, w_ptr, y_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr
):
    # y (M, N) = x (M, K) @ w (N, K)^T, one program per BN columns, K a multiple of BK, N of BN
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    w0 = tl.load(w_ptr + rn[None, :] * K + rk[:, None])  # the weights do not wait for anyone
    if PDL:
        gdc_launch_dependents()  # the next kernel may start its own weight loads now
        gdc_wait()  # x is the previous kernel's output
    x0 = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=rm[:, None] < M, other=0.0)
    acc = tl.dot(x0, w0)
    for k0 in tl.range(BK, K, BK, num_stages=4):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + kk[:, None])
        acc += tl.dot(x, w)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=rm[:, None] < M)


def chain(xs: list[torch.Tensor], ws: list[torch.Tensor], pdl: bool) -> None:
    for i, w in enumerate(ws):
        n, k = w.shape
        _chain_gemm[(n // 32,)](
            xs[i],
            w,
            xs[i + 1],
            xs[i].shape[0],
            n,
            k,
            BM=32,
            BN=32,
            BK=256,
            PDL=pdl,
            num_warps=4,
            launch_pdl=pdl,
        )


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    torch.manual_seed(0)
    m, d, layers = 32, 4096, 64
    ws = [torch.randn(d, d, device="cuda", dtype=torch.bfloat16) / d**0.5 for _ in range(layers)]
    outs = {}
    print("| 64 GEMMs 32 x 4096 x 4096 | graph replay us | us a kernel | weights at copy bandwidth us |")
    print("|---|---|---|---|")
    for pdl in (False, True, False, True):
        xs = [torch.randn(m, d, device="cuda", dtype=torch.bfloat16)] + [
            torch.empty(m, d, device="cuda", dtype=torch.bfloat16) for _ in ws
        ]
        xs[0].copy_(torch.randn(m, d, generator=torch.Generator().manual_seed(1)).to(xs[0]))
        chain(xs, ws, pdl)  # compile
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                chain(xs, ws, pdl)
        except Exception as e:  # a driver or Triton that cannot capture PDL launches
            print(f"| PDL {pdl} | capture failed: {type(e).__name__}: {str(e)[:80]} | | |")
            return
        for _ in range(5):
            g.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(20):
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        times.sort()
        us = times[len(times) // 2]
        outs[pdl] = xs[-1].clone()
        floor = layers * d * d * 2 / 4.1e12 * 1e6
        print(f"| PDL {pdl} | {us:.1f} | {us / layers:.2f} | {floor:.1f} |")
    print("outputs equal with and without PDL:", torch.equal(outs[False], outs[True]))


if __name__ == "__main__":
    main()
