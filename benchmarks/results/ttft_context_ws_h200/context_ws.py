"""The context kernel alone, one layer at 32K over 16 segments: the library's loop against the
same loop as a ``tl.range`` with Triton's warp specialization, key tiles of 64 and 128, stages.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_ws_h200/context_ws.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

from ragcompress.kv.fast._context import _LOG2E, _tile, context_pass
from ragcompress.kv.fast._online import folded_rows, store_partial

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128), "gemma3-12b": (16, 8, 256)}


@triton.jit
def _ws_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WS: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * q_n + head[:, None] * q_h + d[None, :], mask=rm[:, None], other=0.0)
    start = tl.load(start_ptr + seg).to(tl.int64)
    used = tl.load(used_ptr + seg)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    full = used // BLOCK_N * BLOCK_N
    for off in tl.range(0, full, BLOCK_N, num_stages=STAGES, warp_specialize=WS):
        keys = start + off + tl.arange(0, BLOCK_N).to(tl.int64)
        m_i, l_i, acc = _tile(q, kb, vb, keys, keys >= 0, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, D)
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _tile(q, kb, vb, start + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def variant(q: Any, ck: Any, cv: Any, start: Any, used: Any, scale: float, bn: int, ws: bool, st: int) -> Any:
    n, h, d = q.shape
    kvh = ck.shape[1]
    g, ng = h // kvh, n * (h // kvh)
    segs = start.numel()
    bm = 64 if ng <= 64 else 128
    o = torch.empty(segs * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(segs, kvh, ng, device=q.device, dtype=torch.float32)
    _ws_kernel[(segs, kvh, triton.cdiv(ng, bm))](
        q, ck, cv, start, used, o, lse, q.stride(0), q.stride(1), ck.stride(0), cv.stride(0), ng,
        scale * _LOG2E,
        G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=bn, WS=ws, STAGES=st, num_warps=8 if bm == 128 else 4,
    )  # fmt: skip
    return o, lse


def bench_shape(name: str, h: int, kvh: int, d: int) -> None:
    ctx, n, segs = 32768, 32, 16
    torch.manual_seed(0)
    q = torch.randn(n, h, d, device="cuda", dtype=torch.bfloat16)
    ck = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
    seg = ctx // segs
    start = torch.arange(segs, device="cuda", dtype=torch.int32) * seg
    used = torch.full((segs,), seg - 7, device="cuda", dtype=torch.int32)  # a masked tail
    scale = d**-0.5
    ref = context_pass(q, ck, cv, start, used, scale)[0].float()
    t_lib = do_bench_cudagraph(partial(context_pass, q, ck, cv, start, used, scale))
    flops = 4 * n * h * d * segs * (seg - 7)
    print(f"\n## {name}: library kernel {t_lib * 1e3:.1f} us ({flops / t_lib / 1e9:.0f} TFLOP/s)")
    print("| BLOCK_N | warp specialized | stages | us | TFLOP/s | max abs err vs library |")
    print("|---|---|---|---|---|---|")
    for bn in (64, 128) if d <= 128 else (32, 64):
        for ws in (False, True):
            for st in (2, 3):
                run = partial(variant, q, ck, cv, start, used, scale, bn, ws, st)
                try:
                    err = float((run()[0].float() - ref).abs().max())
                    t = do_bench_cudagraph(run)
                except Exception as e:  # a variant this Triton cannot build
                    print(f"| {bn} | {ws} | {st} | {type(e).__name__}: {str(e)[:80]} | | |")
                    continue
                print(f"| {bn} | {ws} | {st} | {t * 1e3:.1f} | {flops / t / 1e9:.0f} | {err:.1e} |")


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for name, (h, kvh, d) in SHAPES.items():
        bench_shape(name, h, kvh, d)


if __name__ == "__main__":
    main()
