"""The context passes' online softmax with fewer instructions a score: the scale folded into the
exponent's multiply-add (the row maximum taken over the raw products), and the accumulator
rescaled only when a row's maximum grows past the running one by more than ``TAU`` (base 2):
until then the scores are exponentiated against the stale maximum, so p <= 2**TAU, and the sum
and the accumulator stay consistent with each other (exact up to rounding; FlashAttention-4's
"conditional rescaling"). A program-wide test, so the branch is uniform.

Contenders against the library's contiguous and paged kernels, one layer, 32 question tokens,
the pool as a fresh one fills it (``../ttft_paged_tiles_h200/paged_tiles.py``'s ``case``):

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_lazy_rescale_h200/lazy_ab.py              # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                     # CPU

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _clamped
from ragcompress.kv.fast._online import folded_rows, partials, store_partial
from ragcompress.kv.fast._paged import _entries, _row, question_rows
from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED, Tiling

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ttft_paged_tiles_h200"))
from paged_tiles import SHAPES, case, contiguous, library, merged  # noqa: E402

NEG = float("-inf")


@triton.jit
def _tile_v(q, kb, vb, keys, km, sk_t, sv_t, qk_scale, m_i, l_i, acc,
            MASKED: tl.constexpr, D: tl.constexpr, FOLD: tl.constexpr, LAZY: tl.constexpr,
            TAU: tl.constexpr):  # fmt: skip
    d = tl.arange(0, D)
    k = tl.load(kb + keys[:, None] * sk_t + d[None, :])
    s = tl.dot(q, tl.trans(k))
    if not FOLD:
        s = s * qk_scale
    if MASKED:
        s = tl.where(km[None, :], s, float("-inf"))
    m_t = tl.max(s, axis=1)
    if FOLD:
        m_t = m_t * qk_scale  # the scale is positive: the max of the scaled products, bit for bit
    if LAZY:
        gain = tl.where(m_t > m_i, m_t - m_i, 0.0)
        if tl.max(gain, axis=0) > TAU:
            m_new = tl.maximum(m_i, m_t)
            alpha = tl.exp2(m_i - tl.where(m_new == float("-inf"), 0.0, m_new))
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        m_ref = tl.where(m_i == float("-inf"), 0.0, m_i)
        if FOLD:
            p = tl.exp2(s * qk_scale - m_ref[:, None])
        else:
            p = tl.exp2(s - m_ref[:, None])
        v = tl.load(vb + keys[:, None] * sv_t + d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc)
        return m_i, l_i + tl.sum(p, axis=1), acc
    else:
        m_new = tl.maximum(m_i, m_t)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        if FOLD:
            p = tl.exp2(s * qk_scale - m_safe[:, None])
        else:
            p = tl.exp2(s - m_safe[:, None])
        v = tl.load(vb + keys[:, None] * sv_t + d[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _ctx_v(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FOLD: tl.constexpr, LAZY: tl.constexpr, TAU: tl.constexpr,
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
        m_i, l_i, acc = _tile_v(q, kb, vb, keys, keys >= 0, sk_t, sv_t, qk_scale, m_i, l_i, acc,
                                False, D, FOLD, LAZY, TAU)  # fmt: skip
    if full < used:
        n = full + tl.arange(0, BLOCK_N)
        keys = _clamped(start, n, used)
        m_i, l_i, acc = _tile_v(q, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc,
                                True, D, FOLD, LAZY, TAU)  # fmt: skip
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _paged_v(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, QG, TAB_Q, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, FOLD: tl.constexpr, LAZY: tl.constexpr, TAU: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, QG, TAB_Q, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
            last = delta
        keys = _clamped(blk * BS, n, used)
        m_i, l_i, acc = _tile_v(a, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc,
                                True, D, FOLD, LAZY, TAU)  # fmt: skip
        blk, used, delta = nblk, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def ctx_variant(c: dict[str, Any], fold: bool, lazy: bool, tau: float, tiling: Tiling = CONTIGUOUS) -> Any:
    q, kc, vc = c["q"], c["kc"], c["vc"]
    kvh, d = kc.shape[1], q.shape[2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    sp = tiling.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    _, _, o, lse = partials("ctx_v", q, kc, vc, sp)
    bm = tiling.block_m(ng)
    bn = 32 if d > 128 else 128 if bm == 128 else 64
    _ctx_v[(sp, kvh, triton.cdiv(ng, bm))](
        q, kc, vc, start, used, o, lse, q.stride(0), q.stride(1), kc.stride(0), vc.stride(0), ng,
        d**-0.5 * _LOG2E, G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=bn, FOLD=fold, LAZY=lazy, TAU=tau,
        num_warps=tiling.warps(bm), num_stages=tiling.stages,
    )  # fmt: skip
    return o, lse, sp


def paged_variant(c: dict[str, Any], fold: bool, lazy: bool, tau: float, tiling: Tiling = PAGED) -> Any:
    q, pk, pv, tab = c["q"], c["pk"], c["pv"], c["blocks"]
    kvh, d = pk.shape[1], q.shape[2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    sp = tiling.splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    _, _, o, lse = partials("paged_v", q, pk, pv, sp)
    bm = tiling.block_m(ng)
    _paged_v[(sp, kvh, triton.cdiv(ng, bm))](
        q, pk, pv, tab, c["inv"], o, lse, pk.stride(0), pv.stride(0), ng, ng, 0, d**-0.5 * _LOG2E,
        S=sp, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=bm, FOLD=fold, LAZY=lazy, TAU=tau,
        num_warps=tiling.warps(bm), num_stages=tiling.stages,
    )  # fmt: skip
    return o, lse, sp


VARIANTS = (("fold", True, False, 0.0), ("lazy, tau 0", False, True, 0.0), ("fold + lazy, tau 0", True, True, 0.0),
            ("fold + lazy, tau 8", True, True, 8.0))  # fmt: skip


def contenders() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("contiguous: library", contiguous)]
    out += [(f"contiguous: {n}", lambda c, f=f, lz=lz, t=t: ctx_variant(c, f, lz, t)) for n, f, lz, t in VARIANTS]
    out += [("paged: library", library)]
    out += [(f"paged: {n}", lambda c, f=f, lz=lz, t=t: paged_variant(c, f, lz, t)) for n, f, lz, t in VARIANTS]
    return out


def check_cpu() -> None:
    h, kvh, d = 4, 2, 16
    c = case(64 + 512 * 3 + 100, 3, h, kvh, d, "cpu", torch.float32, chunk=512)
    c["q"] = c["q"] * 4  # wide scores: the maximum grows past tau within a split
    want = merged(*library(c), 3, h, kvh, d)
    for name, fn in contenders():
        o, lse, sp = fn(c)
        torch.testing.assert_close(merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
        print("ok", name)
    print("cpu check: every contender's partials merge to the library paged pass's")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (10240, 32768, 131072):
        for shape, (h, kvh, d) in SHAPES.items():
            c = case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            ref = merged(*library(c)[:2], library(c)[2], 32, h, kvh, d)
            print(f"\n## {shape}, {ctx} keys\n")
            print("| contender | splits | µs | rel err vs library paged |\n|---|---|---|---|")
            for name, fn in contenders():
                try:
                    o, lse, sp = fn(c)
                    err = float((merged(o, lse, sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                    us = do_bench_cudagraph(lambda fn=fn, c=c: fn(c)) * 1e3
                    print(f"| {name} | {sp} | {us:.1f} | {err:.1e} |", flush=True)
                except Exception as exc:  # out of resources at a configuration
                    print(f"| {name} | | failed: {type(exc).__name__} {str(exc)[:80]} | |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
