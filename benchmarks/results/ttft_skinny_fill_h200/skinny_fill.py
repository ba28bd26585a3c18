"""o_proj and down_proj at 32 rows: the library's skinny GEMM (one program per 32 output
columns) against variants that fill more of the H200's 132 SMs. Qwen2.5's hidden size 3584
gives the library 112 programs (20 SMs idle); the profile reads the skinny launches at 75-80%
of the copy bandwidth. Variants: 16-column programs (224), and split-K over 2 or 4 with fp32
atomic adds into a zeroed buffer (timed with its memset; the cast a consumer would fuse is not
counted). q/k/v (cuBLAS in the library) is swept too.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_skinny_fill_h200/skinny_fill.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._gemm import _skinny_kernel

# (hidden, intermediate, q/k/v output rows) of each family
SHAPES = {
    "qwen2.5-7b": (3584, 18944, 3584 + 2 * 512),
    "llama3-8b": (4096, 14336, 4096 + 2 * 1024),
}


@triton.jit
def _splitk_kernel(x_ptr, w_ptr, y_ptr, N, K, sx, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   SPLIT: tl.constexpr):  # fmt: skip
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    part = K // SPLIT
    k_lo = tl.program_id(1) * part
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in tl.range(k_lo, k_lo + part, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :])
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None])
        acc += tl.dot(x, w)
    tl.atomic_add(y_ptr + rm[:, None] * N + rn[None, :], acc, sem="relaxed")


def skinny(x: Any, w: Any, bn: int, bk: int, stages: int, warps: int) -> Any:
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    _skinny_kernel[(triton.cdiv(n, bn),)](
        x, w, y, m, n, k, x.stride(0), BM=32, BN=bn, BK=bk, EVEN=True, num_warps=warps, num_stages=stages
    )
    return y


def splitk(x: Any, w: Any, y: Any, bn: int, bk: int, split: int, stages: int) -> Any:
    k, n = x.shape[1], w.shape[0]
    y.zero_()
    _splitk_kernel[(n // bn, split)](x, w, y, n, k, x.stride(0), BM=32, BN=bn, BK=bk, SPLIT=split,
                                     num_warps=4, num_stages=stages)  # fmt: skip
    return y


def main() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (do_bench_cudagraph(lambda: dst.copy_(src)) * 1e-3)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    torch.manual_seed(0)
    for name, (hid, inter, qkv) in SHAPES.items():
        print(f"\n## {name}\n| product | N x K | variant | us | at copy bw us | max rel diff |")
        print("|---|---|---|---|---|---|")
        for prod, (n, k) in (("qkv", (qkv, hid)), ("o_proj", (hid, hid)), ("down_proj", (hid, inter))):
            x = torch.randn(32, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            ref = torch.nn.functional.linear(x, w).float()
            floor = n * k * 2 / bw * 1e6
            y32 = torch.empty(32, n, device="cuda", dtype=torch.float32)
            variants: list[tuple[str, Any]] = [("cuBLAS", partial(torch.nn.functional.linear, x, w))]
            for bn, bk, st, wp in (
                (32, 256, 4, 4),
                (16, 256, 4, 4),
                (16, 512, 3, 4),
                (32, 128, 6, 4),
                (32, 256, 4, 8),
            ):
                if n % bn == 0 and k % bk == 0:
                    variants.append(
                        (f"skinny BN{bn} BK{bk} st{st} w{wp}", partial(skinny, x, w, bn, bk, st, wp))
                    )
            for split in (2, 4):
                for bn in (32, 64):
                    if k % (split * 256) == 0 and n % bn == 0:
                        variants.append(
                            (
                                f"split-K {split} BN{bn} + memset",
                                partial(splitk, x, w, y32, bn, 256, split, 4),
                            )
                        )
            for label, fn in variants:
                err = float(((fn().float() - ref).abs().max()) / ref.abs().max())
                us = do_bench_cudagraph(fn) * 1e3
                print(f"| {prod} | {n} x {k} | {label} | {us:.1f} | {floor:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
