"""The question step's four weight products at 32 rows, each alone: cuBLAS (``F.linear``, as
the fused step runs q/k/v and gate/up), cuBLAS over the weights cut into B batches of rows (a
``bmm``: other tiles, other program counts), and the library's skinny Triton GEMM over a grid
of column widths, K tiles and K splits (as the step runs o_proj and down_proj). Each row is a
CUDA graph over 8 copies of the weights in turn (≥ 200 MB, so no copy is still in the 50 MB L2
when its turn comes), µs a product; against the weights' bytes at the copy bandwidth of the same
run and at the read bandwidth of a large reduction.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gemm_sweep_h200/gemm_sweep.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import triton
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth, graph_ms

from ragcompress.kv.fast._gemm import _SMEM, _skinny_kernel

ROWS, COPIES = 32, 8
SHAPES = {  # (N, K) of the weights, per family: q/k/v stacked, o_proj, gate/up stacked, down_proj
    "qwen2.5-7b": {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)},
    "llama3-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
}


def skinny(x: Any, w: Any, bn: int, bk: int, splits: int, warps: int) -> Any:
    m, k = x.shape
    n = w.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    ks = triton.cdiv(triton.cdiv(k, splits), bk) * bk
    stages = max(1, min(4, _SMEM // ((bm + bn) * bk * 2)))
    y = torch.empty(splits, m, n, device=x.device, dtype=torch.float32 if splits > 1 else x.dtype)
    _skinny_kernel[(triton.cdiv(n, bn), splits)](
        x, w, y, m, n, k, x.stride(0), ks,
        BM=bm, BN=bn, BK=bk, EVEN=n % bn == 0 and k == ks * splits, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def bmm(x: Any, w: Any, b: int) -> Any:
    n, k = w.shape
    return torch.bmm(x.unsqueeze(0).expand(b, -1, -1), w.view(b, n // b, k).transpose(1, 2))


def per_product(make: Callable[[Any, Any], Any], x: Any, ws: list[Any]) -> float:
    return graph_ms(lambda: [make(x, w) for w in ws], reps=20) / len(ws) * 1e3


def read_bandwidth(n_bytes: int = 1 << 31) -> float:
    """Bytes/s of a large bf16 sum (reads only), best of three medians."""
    t = torch.randn(n_bytes // 2, device="cuda", dtype=torch.bfloat16)
    out = torch.empty((), device="cuda", dtype=torch.float32)
    ms = min(graph_ms(lambda: torch.sum(t, dim=0, dtype=torch.float32, out=out), reps=10) for _ in range(3))
    return n_bytes / (ms / 1e3)


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    copy_bw = copy_bandwidth(torch.device("cuda"), Clock(torch.device("cuda"), 3, 10))
    read_bw = read_bandwidth()
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s, read bandwidth (sum) {read_bw / 1e9:.0f} GB/s")
    torch.manual_seed(0)
    for family, prods in SHAPES.items():
        for name, (n, k) in prods.items():
            x = torch.randn(ROWS, k, device="cuda", dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
            ref = torch.nn.functional.linear(x, ws[0]).float()
            floor = n * k * 2 / copy_bw * 1e6
            rows: list[tuple[str, float, float]] = []
            rows.append(("cuBLAS F.linear", per_product(torch.nn.functional.linear, x, ws), 0.0))
            for b in (2, 4, 7, 8, 14, 16):
                if n % b:
                    continue
                out = bmm(x, ws[0], b).transpose(0, 1).reshape(ROWS, n).float()
                rows.append((f"cuBLAS bmm, {b} batches", per_product(lambda x, w, b=b: bmm(x, w, b), x, ws),
                             float((out - ref).abs().max())))  # fmt: skip
            for bn, bk, splits, warps in itertools.product((16, 32, 64), (128, 256), (1, 2, 4), (4,)):
                if n % bn or (k // splits) % bk:
                    continue
                try:
                    out = skinny(x, ws[0], bn, bk, splits, warps).float().sum(0)
                    t = per_product(lambda x, w, a=(bn, bk, splits, warps): skinny(x, w, *a), x, ws)
                except Exception as e:  # a configuration that does not fit
                    print(f"skip {family} {name} {bn}/{bk}/{splits}: {type(e).__name__}")
                    continue
                progs = -(-n // bn) * splits
                rows.append((f"skinny BN {bn} BK {bk} splits {splits} ({progs} programs)", t,
                             float((out - ref).abs().max())))  # fmt: skip
            print(f"\n## {family} {name}: ({ROWS} x {k}) @ ({k} x {n}), weights {n * k * 2 / 1e6:.1f} MB, "
                  f"floor {floor:.1f} µs at the copy bandwidth, {n * k * 2 / read_bw * 1e6:.1f} at the read")  # fmt: skip
            print("| kernel | µs | x copy floor | max abs diff from F.linear |")
            print("|---|---|---|---|")
            for label, t, err in sorted(rows, key=lambda r: r[1]):
                print(f"| {label} | {t:.1f} | {t / floor:.2f} | {err:.1e} |")
            del ws


if __name__ == "__main__":
    main()
