"""Programmatic dependent launch, placed as CUTLASS places it: does a skinny GEMM chain gain
when each kernel lets the next start during its tail? (``../ttft_pdl_h200/`` released the next
kernel at the *start* of each one: every kernel of the chain could then sit resident, spinning
in ``gdc_wait``, beside the one that worked; it ran 27% slower.)

Contenders, each a CUDA graph over a chain of skinny products at 32 rows (the library's swapped
tile: 64 weight rows by 128-deep K tiles, ``w @ x.T``), each product reading the previous one's
output:
- ``none``: plain launches (the library today);
- ``start``: ``gdc_launch_dependents`` + ``gdc_wait`` at the start (the earlier record);
- ``tail``: the first weight tile loaded before ``gdc_wait`` (weights do not depend on the
  previous kernel), ``gdc_launch_dependents`` after the main loop: the next kernel's programs
  launch while this one stores, load their first tile and wait;
- ``tail, no prefetch``: ``gdc_wait`` first, ``gdc_launch_dependents`` after the main loop.

Chains: 64 x o_proj (4096 x 4096), and 16 Llama-3-8B layers' products in order (q/k/v 6144 x
4096, o_proj 4096 x 4096, gate/up 28672 x 4096, down 4096 x 14336; each layer its own weights,
so nothing is in L2). Outputs are checked equal to ``none``'s. µs per chain, medians of 20
replays, rounds alternating.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_pdl_tail_h200/pdl_tail.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <this script> --check-cpu   # none only

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

BN, BK = 64, 128
MODES = {"none": 0, "start": 1, "tail": 2, "tail, no prefetch": 3}


@triton.jit
def _gemm(x_ptr, w_ptr, y_ptr, M, N, K, sx, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr):
    # y (M, N) = x (M, K) @ w (N, K)^T as (w @ x.T).T; N a multiple of BN, K of BK
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    w_row = w_ptr + rn[:, None].to(tl.int64) * K
    if MODE == 1:
        gdc_launch_dependents()
        gdc_wait()
    if MODE == 3:
        gdc_wait()
    w0 = tl.load(w_row + rk[None, :])  # (BN, BK): no dependence on the previous kernel
    if MODE == 2:
        gdc_wait()  # x is the previous kernel's output
    x0 = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=rm[:, None] < M, other=0.0)
    acc = tl.dot(w0, tl.trans(x0))
    for k0 in tl.range(BK, K, BK):
        kk = k0 + rk
        w = tl.load(w_row + kk[None, :])
        x = tl.load(x_ptr + rm[:, None] * sx + kk[None, :], mask=rm[:, None] < M, other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
    if MODE >= 2:
        gdc_launch_dependents()  # the next kernel may launch: this one only stores now
    tl.store(y_ptr + rm[None, :] * N + rn[:, None], acc.to(y_ptr.dtype.element_ty), mask=rm[None, :] < M)


def product(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, mode: int) -> None:
    """y = x @ w.T; x (M, K) with unit column stride (any row stride), w (N, K), y (M, N)."""
    m, k = x.shape
    n = w.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    stages = max(1, min(6, 200 * 1024 // ((bm + BN) * BK * x.element_size())))
    kw: dict[str, Any] = {"launch_pdl": True} if mode else {}
    _gemm[(n // BN,)](
        x, w, y, m, n, k, x.stride(0), BM=bm, BN=BN, BK=BK, MODE=mode, num_warps=4, num_stages=stages, **kw
    )


def chain(x0: torch.Tensor, ws: list[torch.Tensor], ys: list[torch.Tensor], mode: int) -> None:
    """Each product reads the previous output's first K columns."""
    x = x0
    for w, y in zip(ws, ys, strict=True):
        product(x[:, : w.shape[1]], w, y, mode)
        x = y


def build(shapes: list[tuple[int, int]], m: int, dev: str, dt: Any) -> tuple[Any, list[Any], list[Any]]:
    g = torch.Generator(device="cpu").manual_seed(0)
    ws = [(torch.randn(n, k, generator=g) / k**0.5).to(dev, dt) for n, k in shapes]
    ys = [torch.empty(m, n, device=dev, dtype=dt) for n, _ in shapes]
    return torch.randn(m, max(k for _, k in shapes), generator=g).to(dev, dt), ws, ys


LAYER = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def check_cpu() -> None:
    x, ws, ys = build([(128, 256), (256, 128), (512, 256), (128, 256)], 32, "cpu", torch.float32)
    chain(x, ws, ys, 0)
    want = x[:, :256]
    for w in ws:
        want = want[:, : w.shape[1]] @ w.T
    torch.testing.assert_close(ys[-1], want, rtol=1e-3, atol=1e-3)
    print("check-cpu: none matches torch")


def gpu() -> None:
    from ragcompress_bench.ttft_timing import Clock, copy_bandwidth, graph_ms

    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    bw = copy_bandwidth(dev, Clock(dev, 3, 10))
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + written)")
    chains = {"64 x o_proj 4096 x 4096": [(4096, 4096)] * 64, "16 Llama-3-8B layers (4 products each)": LAYER * 16}
    for name, shapes in chains.items():
        x, ws, ys = build(shapes, 32, "cuda", torch.bfloat16)
        floor = sum(w.numel() * 2 for w in ws) / bw * 1e6
        outs, times = {}, {k: [] for k in MODES}
        for _ in range(3):  # rounds alternate the contenders
            for label, mode in MODES.items():
                for y in ys:
                    y.zero_()
                try:
                    times[label].append(graph_ms(lambda mode=mode: chain(x, ws, ys, mode)) * 1e3)
                except Exception as e:  # a driver or Triton that cannot capture it: say so
                    times[label].append(float("nan"))
                    print(f"{label}: {type(e).__name__}: {str(e)[:160]}")
                outs[label] = ys[-1].clone()
        print(f"\n## {name}: {len(shapes)} kernels, weights at copy bandwidth {floor:.1f} µs\n")
        print("| contender | µs a chain (best round) | µs a kernel | vs none | output equal to none's |")
        print("|---|---|---|---|---|")
        base = min(times["none"])
        for label in MODES:
            t = min(times[label])
            same = torch.equal(outs[label], outs["none"])
            print(f"| {label} | {t:.1f} | {t / len(shapes):.2f} | {t / base:.3f} | {same} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-cpu", action="store_true", help="run 'none' in Triton's interpreter against torch")
    if ap.parse_args().check_cpu:
        check_cpu()
    else:
        gpu()


if __name__ == "__main__":
    main()
