"""The context kernel alone, one layer over 16 segments: the library's key tile against the
same tile written as Triton's fused-attention tutorial writes it (the scale folded into the
exponent's subtraction, one FMA an element; no ``-inf`` guard, which no executed tile needs;
``p @ v`` accumulated into the rescaled accumulator by the product itself), and that tile with
its exponentials as ``ex2.approx.f16x2`` (two an instruction).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_fma_h200/context_fma.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_fma_h200/context_fma.py --check-cpu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, context_pass
from ragcompress.kv.fast._online import folded_rows, store_partial

SHAPES = {"qwen2.5-7b": (28, 4, 128), "llama3-8b": (32, 8, 128), "gemma3-12b": (16, 8, 256)}
VARIANTS = {  # name: (FMA tile (else the hand-pipelined one), f16x2 exponentials, key tile or 0 for the library's, stages)
    "fma": (True, False, 0, 3),
    "fma, 64-key tiles": (True, False, 64, 3),
    "fma, 4 stages": (True, False, 0, 4),
    "fma + ex2.f16x2": (True, True, 0, 3),
    "fma, next tile's q·k before this tile's softmax": (False, False, 0, 3),
    "fma, next tile's q·k first, 64-key tiles": (False, False, 64, 3),
}


@triton.jit
def _exp2_h2(x):
    """2**x for fp32 ``x`` through ``ex2.approx.f16x2``: fp16 in, fp16 out, two an instruction."""
    return tl.inline_asm_elementwise(
        "ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)], dtype=tl.float16, is_pure=True, pack=2
    )


@triton.jit
def _tile_fma(q, kb, vb, keys, km, sk_t, sv_t, qk_scale, m_i, l_i, acc, MASKED: tl.constexpr,
              H2: tl.constexpr, D: tl.constexpr):  # fmt: skip
    d = tl.arange(0, D)
    if MASKED:
        k = tl.load(kb + keys[:, None] * sk_t + d[None, :], mask=km[:, None], other=0.0)
    else:
        k = tl.load(kb + keys[:, None] * sk_t + d[None, :])
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
        qk = tl.where(km[None, :], qk, float("-inf"))
    # every executed tile has a key: m_new is finite, so no guard
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    if MASKED:
        v = tl.load(vb + keys[:, None] * sv_t + d[None, :], mask=km[:, None], other=0.0)
    else:
        v = tl.load(vb + keys[:, None] * sv_t + d[None, :])
    if H2:
        p16 = _exp2_h2(qk * qk_scale - m_new[:, None])
        l_new = l_i * alpha + tl.sum(p16.to(tl.float32), axis=1)
        acc = tl.dot(p16.to(v.dtype), v, acc * alpha[:, None])
    else:
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        l_new = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_new, acc


@triton.jit
def _fma_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    H2: tl.constexpr,
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
    for off in range(0, full, BLOCK_N):
        keys = start + off + tl.arange(0, BLOCK_N).to(tl.int64)
        m_i, l_i, acc = _tile_fma(q, kb, vb, keys, keys >= 0, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, H2, D)
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _tile_fma(q, kb, vb, start + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, H2, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _soft(qk, v, qk_scale, m_i, l_i, acc):
    """The FMA tile's softmax and ``p @ v`` for scores ``qk`` already computed."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _pipe_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The FMA tile, software-pipelined by hand: tile j+1's q·k is issued before tile j's
    softmax, so the tensor cores may work under it (as FlashAttention 3 does within a
    warpgroup)."""
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
    if full > 0:
        keys = start + tl.arange(0, BLOCK_N).to(tl.int64)
        qk = tl.dot(q, tl.trans(tl.load(kb + keys[:, None] * sk_t + d[None, :])))
        for off in range(BLOCK_N, full, BLOCK_N):
            nxt = start + off + tl.arange(0, BLOCK_N).to(tl.int64)
            qk_next = tl.dot(q, tl.trans(tl.load(kb + nxt[:, None] * sk_t + d[None, :])))
            v = tl.load(vb + (nxt - BLOCK_N)[:, None] * sv_t + d[None, :])
            m_i, l_i, acc = _soft(qk, v, qk_scale, m_i, l_i, acc)
            qk = qk_next
        last = start + full - BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        m_i, l_i, acc = _soft(qk, tl.load(vb + last[:, None] * sv_t + d[None, :]), qk_scale, m_i, l_i, acc)
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _tile_fma(q, kb, vb, start + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, False, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def variant(
    q: Any, ck: Any, cv: Any, start: Any, used: Any, scale: float, fma: bool, h2: bool, bn: int, st: int
) -> Any:
    n, h, d = q.shape
    kvh = ck.shape[1]
    g, ng = h // kvh, n * (h // kvh)
    segs = start.numel()
    bm = 64 if ng <= 64 else 128
    if bn == 0:  # the library's choice
        bn = 32 if d > 128 else 128 if bm == 128 else 64
    o = torch.empty(segs * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(segs, kvh, ng, device=q.device, dtype=torch.float32)
    grid = (segs, kvh, triton.cdiv(ng, bm))
    args = (q, ck, cv, start, used, o, lse, q.stride(0), q.stride(1), ck.stride(0), cv.stride(0), ng, scale * _LOG2E)
    opts = {"G": g, "KVH": kvh, "D": d, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 8 if bm == 128 else 4, "num_stages": st}
    if fma:
        _fma_kernel[grid](*args, H2=h2, **opts)
    else:
        _pipe_kernel[grid](*args, **opts)
    return o, lse


def merged(o: Any, lse: Any) -> Any:
    """The segments' partials merged by log-sum-exp: (N*G, kv_heads, D) fp32."""
    segs = lse.shape[0]
    o = o.float().view(segs, -1, o.shape[1], o.shape[2])  # (S, NG, KVH, D)
    w = torch.softmax(lse.transpose(1, 2), dim=0).unsqueeze(-1)  # (S, NG, KVH, 1)
    return (o * w).sum(0)


def inputs(h: int, kvh: int, d: int, ctx: int, n: int, segs: int, device: str, dtype: Any) -> tuple[Any, ...]:
    torch.manual_seed(0)
    q = torch.randn(n, h, d, device=device, dtype=dtype)
    ck = torch.randn(ctx, kvh, d, device=device, dtype=dtype)
    cv = torch.randn(ctx, kvh, d, device=device, dtype=dtype)
    seg = ctx // segs
    start = torch.arange(segs, device=device, dtype=torch.int32) * seg
    used = torch.full((segs,), seg - 7, device=device, dtype=torch.int32)  # a masked tail
    return q, ck, cv, start, used, seg - 7


def bench_shape(name: str, h: int, kvh: int, d: int, ctx: int) -> None:
    from triton.testing import do_bench_cudagraph

    n, segs = 32, 16
    q, ck, cv, start, used, keys = inputs(h, kvh, d, ctx, n, segs, "cuda", torch.bfloat16)
    scale = d**-0.5
    ref = merged(*context_pass(q, ck, cv, start, used, scale))
    flops = 4 * n * h * d * segs * keys
    rows = []
    for rnd in range(2):  # two rounds, the variants alternating
        t_lib = do_bench_cudagraph(partial(context_pass, q, ck, cv, start, used, scale))
        rows.append(("library", rnd, t_lib, 0.0))
        for label, (fma, h2, bn, st) in VARIANTS.items():
            run = partial(variant, q, ck, cv, start, used, scale, fma, h2, bn, st)
            try:
                err = float((merged(*run()) - ref).abs().max())
                t = do_bench_cudagraph(run)
            except Exception as e:  # a variant this Triton cannot build
                print(f"{label}: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append((label, rnd, t, err))
    print(f"\n## {name}, {ctx} keys, {segs} segments, {n} question tokens")
    print("| kernel | round | µs | TFLOP/s | max abs diff of the merged output from the library's |")
    print("|---|---|---|---|---|")
    for label, rnd, t, err in rows:
        print(f"| {label} | {rnd} | {t * 1e3:.1f} | {flops / t / 1e9:.0f} | {err:.1e} |")


def check_cpu() -> None:
    """Interpreted, fp32: the FMA tile's merged output equals the library's (the f16x2 variant
    needs PTX and is checked on the GPU only)."""
    for h, kvh, d in ((4, 2, 16), (7, 1, 16)):
        q, ck, cv, start, used, _ = inputs(h, kvh, d, 96, 3, 3, "cpu", torch.float32)
        ref = merged(*context_pass(q, ck, cv, start, used, d**-0.5))
        for fma in (True, False):
            got = merged(*variant(q, ck, cv, start, used, d**-0.5, fma, False, 16, 1))
            err = float((got - ref).abs().max())
            print(f"h={h} kvh={kvh} {'fma' if fma else 'pipelined'}: max abs diff {err:.1e}")
            assert err < 1e-4, err


def main() -> None:
    if "--check-cpu" in sys.argv:
        check_cpu()
        return
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (32768, 10240):
        for name, (h, kvh, d) in SHAPES.items():
            if ctx == 10240 and name == "gemma3-12b":
                continue
            bench_shape(name, h, kvh, d, ctx)


if __name__ == "__main__":
    main()
