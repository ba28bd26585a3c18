"""The contiguous context pass, one layer at 32K: the library's kernel (``_context.py``, pointer
loads) against the same kernel loading its full key/value tiles through tensor-memory-accelerator
descriptors (``TensorDescriptor``, Hopper's bulk asynchronous copies), on the buffer's
token-major layout (capacity, layers, kv_heads, D) and on a layer-major one (layers, capacity,
kv_heads, D), where a key tile's rows are 2 KB apart instead of 64 KB.

The warm profile (``../ttft_warm_profile_h200/``) reads the pass at 40-45 µs a layer, ~370
TFLOP/s: compute-bound, but below what Hopper's warpgroup products reach with asynchronous
copies.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_tma_h200/context_tma_ab.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                      # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ragcompress.kv.fast._context import _LOG2E, _tile, context_pass
from ragcompress.kv.fast._online import folded_rows, partials, store_partial

# (heads, kv heads, head dim, layers)
SHAPES = {"llama3-8b": (32, 8, 128, 32), "qwen2.5-7b": (28, 4, 128, 28)}


@triton.jit
def _context_tma_kernel(
    q_ptr, k_desc, v_desc, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * q_n + head[:, None] * q_h + d[None, :], mask=rm[:, None], other=0.0)
    start = tl.load(start_ptr + seg)
    used = tl.load(used_ptr + seg)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    col = (kv * D).to(tl.int32)
    full = used // BLOCK_N * BLOCK_N
    for off in range(0, full, BLOCK_N):
        k = k_desc.load([start + off, col])
        s = tl.dot(q, tl.trans(k)) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = v_desc.load([start + off, col])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        keys = start.to(tl.int64) + n
        m_i, l_i, acc = _tile(
            q, k_ptr + kv * D, v_ptr + kv * D, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D
        )
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def context_tma(q: Any, ctx_k: Any, ctx_v: Any, seg_start: Any, ctx_used: Any, scale: float,
                block_n: int = 128, stages: int = 3) -> Any:  # fmt: skip
    segs, d, kvh = seg_start.numel(), q.shape[2], ctx_k.shape[1]
    g, ng, o, lse = partials("context_tma", q, ctx_k, ctx_v, segs)
    block_m = 64 if ng <= 64 else 128
    cap = ctx_k.shape[0]
    descs = [TensorDescriptor(t, [cap, kvh * d], [t.stride(0), 1], [block_n, d]) for t in (ctx_k, ctx_v)]
    _context_tma_kernel[(segs, kvh, triton.cdiv(ng, block_m))](
        q, *descs, ctx_k, ctx_v, seg_start, ctx_used, o, lse,
        q.stride(0), q.stride(1), ctx_k.stride(0), ctx_v.stride(0), ng, scale * _LOG2E,
        G=g, KVH=kvh, D=d, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8 if block_m == 128 else 4,
        num_stages=stages,
    )  # fmt: skip
    return o, lse


def case(ctx: int, segs: int, n: int, h: int, kvh: int, d: int, layers: int, layer_major: bool,
         dev: str, dt: Any) -> tuple[Any, ...]:  # fmt: skip
    """Queries, a layer's K/V view of a (token- or layer-major) buffer, equal segments over ctx
    (the last one a partial tile short)."""
    torch.manual_seed(0)
    q = torch.randn(n, h, d, device=dev, dtype=dt)
    shape = (layers, ctx, kvh, d) if layer_major else (ctx, layers, kvh, d)
    k, v = (torch.randn(shape, device=dev, dtype=dt) for _ in range(2))
    k, v = (k[1], v[1]) if layer_major else (k[:, 1], v[:, 1])
    per = ctx // segs
    start = torch.arange(segs, device=dev, dtype=torch.int32) * per
    used = torch.full((segs,), per, device=dev, dtype=torch.int32)
    used[-1] = per - 37
    return q, k, v, start, used


def check_cpu() -> None:
    for layer_major in (False, True):
        args = case(4 * 96, 4, 5, 4, 2, 16, 3, layer_major, "cpu", torch.float32)
        want = context_pass(*args, 0.3)
        for bn in (16, 32):
            got = context_tma(*args, 0.3, bn)
            torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
    print("cpu check: the descriptor loads give the library's partials")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for name, (h, kvh, d, layers) in SHAPES.items():
        print(f"\n## {name}, 32768 keys, 16 segments, 32 question tokens")
        print("| layout | kernel | key tile | stages | us | TFLOP/s | max abs diff vs library |")
        print("|---|---|---|---|---|---|---|")
        flops = 4 * 32 * h * 32768 * d
        for layer_major in (False, True):
            lay = "layer-major" if layer_major else "token-major (the buffer's)"
            args = case(32768, 16, 32, h, kvh, d, layers, layer_major, "cuda", torch.bfloat16)
            lib = partial(context_pass, *args, d**-0.5)
            want = lib()[0].float()
            us = do_bench_cudagraph(lib) * 1e3
            print(f"| {lay} | library | 128 | 3 | {us:.1f} | {flops / us / 1e6:.0f} | 0 |")
            for bn, st in ((64, 3), (128, 2), (128, 3), (128, 4)):
                run = partial(context_tma, *args, d**-0.5, bn, st)
                try:
                    diff = float((run()[0].float() - want).abs().max())
                except triton.runtime.errors.OutOfResources as err:  # added after the recorded run
                    print(f"| {lay} | descriptors | {bn} | {st} | — ({err}) | | |")
                    continue
                us = do_bench_cudagraph(run) * 1e3
                print(
                    f"| {lay} | descriptors | {bn} | {st} | {us:.1f} | {flops / us / 1e6:.0f} | {diff:.1e} |"
                )
            del args
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
