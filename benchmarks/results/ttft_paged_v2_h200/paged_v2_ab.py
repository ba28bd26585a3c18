"""A second paged context kernel: the first library version of ``_paged.py`` against a version
built like ``_context.py`` (v2, now the library's) and v2 without control flow in its loop (v3),
one layer at 32K. Run on the tree before v2 entered the library (``paged_context`` was then the
first version).

The library kernel (``_paged.py``) rotates the queries by each pool block's ``-delta`` for every
block, scores in two half-width products (64 channels each), exponentiates in base e, masks
every block and runs 64-row programs in two waves. The version here keeps the rotated queries
while the delta does not change (a 512-token chunk spans 8 blocks of 64), scores in one
full-width product (the swapped half loaded once, signed), keeps the scores in base 2, masks
only a partly filled block, and runs 128-row programs of 8 warps in one wave, reusing
``_context._tile``. Both write the same partials; the script checks they agree.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_v2_h200/paged_v2_ab.py          # GPU

and on the CPU, interpreted (the correctness check only): the same command with
``TRITON_INTERPRET=1`` before it and ``--check-cpu`` after it.

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _tile
from ragcompress.kv.fast._online import folded_rows, partials, store_partial
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


@triton.jit
def _paged_v2_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    # R(-delta) q in rotate_half's pairing, full width: (q1 c + q2 s, q2 c - q1 s) = q c + qs s
    # with qs = (q2, -q1)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    sign = tl.where(d < HALF, 1.0, -1.0)
    qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32) * sign[None, :]
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
    last = tl.load(tab_ptr + 3 * (1 + e0) + 2)  # any value: the first entry always rotates
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        delta = tl.load(row + 2)
        if (delta != last) | (e == e0):  # a chunk's blocks share its delta: rotate once a chunk
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * tl.sin(ang)[None, :]).to(k_ptr.dtype.element_ty)
            last = delta
        slots = blk * BS + n
        if used < BS:
            m_i, l_i, acc = _tile(a, kb, vb, slots, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        else:
            m_i, l_i, acc = _tile(a, kb, vb, slots, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _paged_v3_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """v2 without control flow in the loop: Triton's pipeliner leaves the loads inside an
    ``if`` unpipelined, so every block rotates (BLOCK_M x D multiply-adds, ~3% of its
    products) and every tile is masked by its filled slots."""
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
    sign = tl.where(d < HALF, 1.0, -1.0)
    qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32) * sign[None, :]
    freq = tl.load(freq_ptr + d % HALF)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        ang = tl.load(row + 2).to(tl.float32) * freq
        a = (qf * tl.cos(ang)[None, :] + qs * tl.sin(ang)[None, :]).to(k_ptr.dtype.element_ty)
        m_i, l_i, acc = _tile(a, kb, vb, blk * BS + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def paged_v2(
    q: Any, pool_k: Any, pool_v: Any, table: Any, inv_freq: Any, bs: int, splits: int, scale: float,
    kernel: Any = _paged_v2_kernel, stages: int = 3,
) -> Any:
    d, kvh = q.shape[2], pool_k.shape[1]
    g, ng, o, lse = partials("paged_v2", q, pool_k, pool_v, splits)
    block_m = 64 if ng <= 64 else 128
    kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pool_k, pool_v, table, inv_freq, o, lse,
        pool_k.stride(0), pool_v.stride(0), ng, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=bs, BLOCK_M=block_m,
        num_warps=8 if block_m == 128 else 4, num_stages=stages,
    )  # fmt: skip
    return o, lse


def case(ctx: int, n: int, h: int, kvh: int, d: int, bs: int, dev: str, dt: Any) -> tuple[Any, ...]:
    """Queries, a pool of ``ctx // bs`` blocks in random order, a delta per 8-block chunk, the
    last block partly filled, and the block table (1 + blocks, 3) int32."""
    torch.manual_seed(0)
    blocks = ctx // bs
    q = torch.randn(n, h, d, device=dev, dtype=dt)
    pool_k = torch.randn(blocks * bs, kvh, d, device=dev, dtype=dt)
    pool_v = torch.randn(blocks * bs, kvh, d, device=dev, dtype=dt)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    order = torch.randperm(blocks).tolist()
    rows = [(b, bs if i < blocks - 1 else bs - 5, 1000 * (i // 8) - 700) for i, b in enumerate(order)]
    table = torch.tensor([(blocks, 0, 0), *rows], dtype=torch.int32, device=dev)
    return q, pool_k, pool_v, table, inv


def check_cpu() -> None:
    """fp32, interpreted: every split's partials merged equal the torch reference's softmax."""
    for n, h, kvh, d, splits in ((3, 4, 2, 16, 3), (33, 4, 2, 16, 2)):
        q, pk, pv, table, inv = case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        want_o, want_lse = paged_context_reference(q, pk, pv, table, inv, 16, 0.3)
        for kern in (_paged_v2_kernel, _paged_v3_kernel):
            o, lse = paged_v2(q, pk, pv, table, inv, 16, splits, 0.3, kern)
            torch.testing.assert_close(merged(o, lse, splits, n, h, kvh, d), want_o, atol=1e-4, rtol=1e-4)
            g = h // kvh
            lse = lse.view(splits, kvh, n, g).permute(0, 2, 1, 3).reshape(splits, n, h)
            torch.testing.assert_close(torch.logsumexp(lse, 0), want_lse, atol=1e-4, rtol=1e-4)
    print("cpu check: the v2 and v3 partials merge to the reference")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (h, kvh, d) in SHAPES.items():
        q, pk, pv, table, inv = case(32768, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
        ng = 32 * (h // kvh)
        lib_splits = max(1, min(-(-2 * sms // (kvh * -(-ng // 64))), 32768 // 64))
        one_wave = max(1, sms // (kvh * -(-ng // 128)))
        lib = partial(paged_context, q, pk, pv, table, inv, 64, lib_splits, d**-0.5)
        ref = merged(*lib(), lib_splits, 32, h, kvh, d)
        t_lib = do_bench_cudagraph(lib) * 1e3
        print(f"\n## {name}: library kernel, {lib_splits} splits: {t_lib:.1f} us")
        print("| kernel | splits | stages | us | rel err of the merged output vs the library |")
        print("|---|---|---|---|---|")
        for kname, kern in (("v2", _paged_v2_kernel), ("v3", _paged_v3_kernel)):
            for sp in sorted({one_wave, 2 * one_wave}):
                for st in (2, 3, 4):
                    run = partial(paged_v2, q, pk, pv, table, inv, 64, sp, d**-0.5, kern, st)
                    err = float((merged(*run(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                    print(f"| {kname} | {sp} | {st} | {do_bench_cudagraph(run) * 1e3:.1f} | {err:.1e} |")


def merged(o: Any, lse: Any, splits: int, n: int, h: int, kvh: int, d: int) -> Any:
    g = h // kvh
    o = o.float().view(splits, n, g, kvh, d).permute(0, 1, 3, 2, 4).reshape(splits, n, h, d)
    lse = lse.view(splits, kvh, n, g).permute(0, 2, 1, 3).reshape(splits, n, h)
    return (torch.softmax(lse, 0)[..., None] * o).sum(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
