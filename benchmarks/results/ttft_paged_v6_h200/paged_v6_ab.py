"""The paged context kernel with its table rows (and key tiles) fetched ahead, against
the library's v5 (``_paged.py``), one layer at 32K on the Llama-3-8B and Qwen2.5-7B heads.

v5 runs at ~1.8x the contiguous pass over the same keys (81 against 45 µs): each block's key
loads wait on its table row, a load whose latency nothing hides (pipelining stages changed
nothing, ``../ttft_paged_v4_h200/``). Two variants hide it by hand:

- ``rowpf``: the next block's row is loaded while this block computes (a loop-carried scalar
  triple), so a block's key address is known when its iteration starts;
- ``kpf``: rows two blocks ahead, and the next block's key tile loaded before this block's
  product (a loop-carried register tile), so the key load overlaps a whole block's compute.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_v6_h200/paged_v6_ab.py               # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                        # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _tile
from ragcompress.kv.fast._online import folded_rows, partials, store_partial
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference
from ragcompress.kv.fast.waves import CONTIGUOUS

_V2 = Path(__file__).resolve().parents[1] / "ttft_paged_v2_h200" / "paged_v2_ab.py"
_spec = importlib.util.spec_from_file_location("paged_v2_ab", _V2)
assert _spec is not None and _spec.loader is not None
v2ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v2ab)

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


@triton.jit
def _row(tab_ptr, e, e1):
    """Row ``1 + e`` of the table, or an empty block past the split's end."""
    row = tab_ptr + 3 * (1 + tl.minimum(e, e1 - 1))
    live = e < e1
    blk = tl.load(row).to(tl.int64)
    used = tl.where(live, tl.load(row + 1), 0)
    return blk, used, tl.load(row + 2)


@triton.jit
def _rotated(qrow, d, rm, sign, freq, delta, HALF: tl.constexpr, D: tl.constexpr, dt: tl.constexpr):
    qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    ang = delta.to(tl.float32) * freq
    return (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(dt)


@triton.jit
def _rowpf_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
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
            a = _rotated(qrow, d, rm, sign, freq, delta, HALF, D, k_ptr.dtype.element_ty)
            last = delta
        m_i, l_i, acc = _tile(a, kb, vb, blk * BS + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        blk, used, delta = nblk, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _rowpf2_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    blk, used, delta = _row(tab_ptr, e0, e1)
    nblk, nused, ndelta = _row(tab_ptr, e0 + 1, e1)
    for e in range(e0, e1):
        fblk, fused, fdelta = _row(tab_ptr, e + 2, e1)  # rows two blocks ahead
        if (delta != last) | (e == e0):
            a = _rotated(qrow, d, rm, sign, freq, delta, HALF, D, k_ptr.dtype.element_ty)
            last = delta
        m_i, l_i, acc = _tile(a, kb, vb, blk * BS + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        blk, used, delta = nblk, nused, ndelta
        nblk, nused, ndelta = fblk, fused, fdelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _kpf_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    blk, used, delta = _row(tab_ptr, e0, e1)
    nblk, nused, ndelta = _row(tab_ptr, e0 + 1, e1)
    km = n < used
    k = tl.load(kb + (blk * BS + n)[:, None] * sk_t + d[None, :], mask=km[:, None], other=0.0)
    for e in range(e0, e1):
        # the row two blocks ahead and the next block's keys go out before this block's products
        fblk, fused, fdelta = _row(tab_ptr, e + 2, e1)
        nkm = n < nused
        nk = tl.load(kb + (nblk * BS + n)[:, None] * sk_t + d[None, :], mask=nkm[:, None], other=0.0)
        if (delta != last) | (e == e0):
            a = _rotated(qrow, d, rm, sign, freq, delta, HALF, D, k_ptr.dtype.element_ty)
            last = delta
        s = tl.dot(a, tl.trans(k)) * qk_scale
        s = tl.where(km[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        v = tl.load(vb + (blk * BS + n)[:, None] * sv_t + d[None, :], mask=km[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        blk, used, delta, km, k = nblk, nused, ndelta, nkm, nk
        nblk, nused, ndelta = fblk, fused, fdelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def run_kernel(
    kern: Any, q: Any, pk: Any, pv: Any, table: Any, inv: Any, bs: int, splits: int, scale: float,
    stages: int = 3,
) -> Any:  # fmt: skip
    d, kvh = q.shape[2], pk.shape[1]
    g, ng, o, lse = partials("paged_v6", q, pk, pv, splits)
    block_m = CONTIGUOUS.block_m(ng)
    kern[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, table, inv, o, lse, pk.stride(0), pv.stride(0), ng, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=bs, BLOCK_M=block_m,
        num_warps=8 if block_m == 128 else 4, num_stages=stages,
    )  # fmt: skip
    return o, lse


KERNELS = {"rowpf": _rowpf_kernel, "rowpf2": _rowpf2_kernel, "kpf": _kpf_kernel}


def check_cpu() -> None:
    for n, h, kvh, d, splits in ((3, 4, 2, 16, 3), (33, 4, 2, 16, 2), (5, 4, 2, 16, 7)):
        q, pk, pv, table, inv = v2ab.case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        want_o, _ = paged_context_reference(q, pk, pv, table, inv, 16, 0.3)
        for kern in KERNELS.values():
            o, lse = run_kernel(kern, q, pk, pv, table, inv, 16, splits, 0.3)
            got = v2ab.merged(o, lse, splits, n, h, kvh, d)
            torch.testing.assert_close(got, want_o, atol=1e-4, rtol=1e-4)
    print("cpu check: the rowpf and kpf partials merge to the reference")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (h, kvh, d) in SHAPES.items():
        for bs in (64, 128):
            q, pk, pv, table, inv = v2ab.case(32768, 32, h, kvh, d, bs, "cuda", torch.bfloat16)
            sp = CONTIGUOUS.splits(sms, 32 * (h // kvh), kvh, 32768 // bs)
            lib = partial(paged_context, q, pk, pv, table, inv, bs, sp, d**-0.5)
            ref = v2ab.merged(*lib(), sp, 32, h, kvh, d)
            print(f"\n## {name}, 32K keys, pool blocks of {bs}, {sp} splits")
            print("| kernel | stages | us | rel err vs the library |")
            print("|---|---|---|---|")
            print(f"| library v5 | 3 | {do_bench_cudagraph(lib) * 1e3:.1f} | 0 |")
            for kname, kern in KERNELS.items():
                for st in (2, 3, 4) if bs == 64 else (3,):
                    if kname == "kpf" and st != 3:
                        continue
                    run = partial(run_kernel, kern, q, pk, pv, table, inv, bs, sp, d**-0.5, st)
                    try:
                        err = float((v2ab.merged(*run(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                        print(f"| {kname} | {st} | {do_bench_cudagraph(run) * 1e3:.1f} | {err:.1e} |")
                    except Exception as exc:
                        print(f"| {kname} | {st} | failed: {type(exc).__name__} | |")

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
