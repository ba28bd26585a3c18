"""The context kernel alone, one layer: the library's split (128 folded rows a program, 8 warps:
two warpgroups of 64 rows) against programs of four warpgroups (16 warps).

At 32K the kernel runs at ~350 TFLOP/s (`../ttft_context_fma_h200/`): each program's two
warpgroups wait for the same key tile, run their products, then their softmax, together, so the
tensor cores idle during the softmax. With four warpgroups an SM, the warp schedulers have two
more to run while the others do their softmax. Qwen2.5's 224 folded rows fit one 256-row program
(each key tile then read once a KV head, not twice), over twice the segments to keep 128
programs; Llama's 128 rows become four warpgroups over 32 rows each, which Triton lays out two
along the rows and two along the columns.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_warps_h200/context_warps.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import triton

from ragcompress.kv.fast._context import _LOG2E, _context_kernel, context_pass

SHAPES = {"qwen2.5-7b": (28, 4, 128), "llama3-8b": (32, 8, 128)}
# (rows a program, warps, key tile, stages, segments)
VARIANTS = {
    "qwen2.5-7b": [(256, 16, 64, 3, 32), (256, 16, 64, 2, 32), (256, 16, 128, 2, 32), (256, 16, 64, 3, 16),
                   (256, 8, 64, 2, 32), (128, 16, 128, 3, 16), (128, 16, 64, 3, 16)],
    "llama3-8b": [(128, 16, 128, 3, 16), (128, 16, 64, 3, 16), (128, 16, 128, 2, 16), (128, 12, 128, 3, 16)],
}  # fmt: skip


def segments(ctx: int, segs: int) -> tuple[Any, Any, int]:
    seg = ctx // segs
    start = torch.arange(segs, device="cuda", dtype=torch.int32) * seg
    used = torch.full((segs,), seg - 7, device="cuda", dtype=torch.int32)  # a masked tail
    return start, used, (seg - 7) * segs


def run(
    q: Any, ck: Any, cv: Any, start: Any, used: Any, scale: float, bm: int, warps: int, bn: int, st: int
) -> Any:
    n, h, d = q.shape
    kvh = ck.shape[1]
    g, ng = h // kvh, n * (h // kvh)
    segs = start.numel()
    o = torch.empty(segs * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(segs, kvh, ng, device=q.device, dtype=torch.float32)
    _context_kernel[(segs, kvh, triton.cdiv(ng, bm))](
        q, ck, cv, start, used, o, lse, q.stride(0), q.stride(1), ck.stride(0), cv.stride(0), ng, scale * _LOG2E,
        G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=st,
    )  # fmt: skip
    return o, lse


def merged(o: Any, lse: Any) -> Any:
    """The segments' partials merged by log-sum-exp: (N*G, kv_heads, D) fp32."""
    segs = lse.shape[0]
    o = o.float().view(segs, -1, o.shape[1], o.shape[2])
    w = torch.softmax(lse.transpose(1, 2), dim=0).unsqueeze(-1)
    return (o * w).sum(0)


def bench(name: str, ctx: int) -> None:
    from triton.testing import do_bench_cudagraph

    h, kvh, d = SHAPES[name]
    n = 32
    torch.manual_seed(0)
    q = torch.randn(n, h, d, device="cuda", dtype=torch.bfloat16)
    ck = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
    scale = d**-0.5
    start, used, keys = segments(ctx, 16)
    ref = merged(*context_pass(q, ck, cv, start, used, scale))
    flops = 4 * n * h * d * keys
    rows = []
    for rnd in range(2):
        t = do_bench_cudagraph(partial(context_pass, q, ck, cv, start, used, scale))
        rows.append(("library: 128 rows, 8 warps, 128-key tiles, 3 stages, 16 segments", rnd, t, 0.0))
        for bm, warps, bn, st, segs in VARIANTS[name]:
            s2, u2, _ = segments(ctx, segs)
            label = f"{bm} rows, {warps} warps, {bn}-key tiles, {st} stages, {segs} segments"
            fn = partial(run, q, ck, cv, s2, u2, scale, bm, warps, bn, st)
            try:
                # the variant's segments cover the same keys less a different masked tail: compare
                # against the library over the variant's segments
                want = merged(*context_pass(q, ck, cv, s2, u2, scale))
                err = float((merged(*fn()) - want).abs().max())
                t = do_bench_cudagraph(fn)
            except Exception as e:  # a variant that does not fit
                print(f"{name} {label}: {type(e).__name__}: {str(e)[:150]}")
                continue
            rows.append((label, rnd, t, err))
    print(f"\n## {name}, {ctx} keys, {n} question tokens (~{flops / 1e9:.1f} GFLOP)")
    print("| program | round | µs | TFLOP/s | max abs diff from the library |\n|---|---|---|---|---|")
    for label, rnd, t, err in rows:
        print(f"| {label} | {rnd} | {t * 1e3:.1f} | {flops / t / 1e9:.0f} | {err:.1e} |")
    del ref


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (32768, 10240):
        for name in SHAPES:
            bench(name, ctx)


if __name__ == "__main__":
    main()
