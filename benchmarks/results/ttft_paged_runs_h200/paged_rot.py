"""Follow-up of ``paged_tma.py``: what the per-chunk query rotation costs, and a cheaper one.
Rotating at every tile made the paged pass ~1.6-2x slower (``paged_tma.txt``): ~1.2-1.9 µs a
rotation, so at once a chunk ~8-12% of the pass. The library (and ``paged_tma.py``) reads the
query rows again at each rotation (L2 hits) to keep fp32 copies out of the registers; here the
rows and their pair-swapped, signed twin are loaded once and *held in bf16* (half the registers
of the fp32 copies tried in ``../ttft_paged_v4_h200/``), and each rotation is register
arithmetic. Pointer loads (the library's tile) and descriptor loads, rotation once a chunk or
at every tile.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_runs_h200/paged_rot.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                  # CPU

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl
from paged_runs import tiles
from paged_tma import token_major
from triton.tools.tensor_descriptor import TensorDescriptor

from ragcompress.kv.fast._context import _LOG2E, _clamped, _tile
from ragcompress.kv.fast._online import partials, store_partial
from ragcompress.kv.fast._paged import _entries, _row, question_rows
from ragcompress.kv.fast.waves import Tiling


@triton.jit
def _held_kernel(
    q_ptr, k_ptr, v_ptr, k_desc, v_desc, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, ALWAYS: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, NG, 0, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    # held in bf16 across the loop: q and its pair-swapped, signed twin (q2, -q1)
    qh = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0)
    qsh = (tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0) * sign[None, :]).to(
        q_ptr.dtype.element_ty
    )
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], q_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    col = (kv * D).to(tl.int32)
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
        if ALWAYS:
            ang = delta.to(tl.float32) * freq
            a = (qh.to(tl.float32) * tl.cos(ang)[None, :] + qsh.to(tl.float32) * tl.sin(ang)[None, :]).to(
                q_ptr.dtype.element_ty
            )
        else:
            if (delta != last) | (e == e0):
                ang = delta.to(tl.float32) * freq
                a = (qh.to(tl.float32) * tl.cos(ang)[None, :] + qsh.to(tl.float32) * tl.sin(ang)[None, :]).to(
                    q_ptr.dtype.element_ty
                )
                last = delta
        if TMA:
            slot = (blk * BS).to(tl.int32)
            k = k_desc.load([slot, col])
            s = tl.dot(a, tl.trans(k)) * qk_scale
            s = tl.where((n < used)[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            v = v_desc.load([slot, col])
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        else:
            keys = _clamped(blk * BS, n, used)
            m_i, l_i, acc = _tile(a, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        blk, used, delta = nblk, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def held_pass(c: dict[str, Any], always: bool, tma: bool, cfg: tuple[int, int, int, int]) -> Any:
    """(o, lse, splits) over the library's block table; ``cfg`` = (rows a program, warps,
    stages, programs an SM)."""
    q, pk, pv, table = c["q"], c["pk"], c["pv"], c["blocks"]
    block_m, warps, stages, per_sm = cfg
    d, kvh = q.shape[2], pk.shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    splits = Tiling(rows=block_m, per_sm=per_sm, stages=stages).splits(sms, ng, kvh, int(table.shape[0]) - 1)
    g, ng, o, lse = partials("held_pass", q, pk, pv, splits)
    descs = [TensorDescriptor(t, [t.shape[0], kvh * d], [t.stride(0), 1], [64, d]) for t in (pk, pv)]
    _held_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, *descs, table, c["inv"], o, lse, pk.stride(0), pv.stride(0), ng,
        d**-0.5 * _LOG2E, S=splits, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=block_m, ALWAYS=always,
        TMA=tma, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse, splits


CONFIGS = ((64, 4, 3, 2), (128, 8, 3, 1))


def contenders() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("library paged (blocks of 64)", tiles.library),
        ("contiguous, keys in context order", tiles.contiguous),
    ]
    for tma in (False, True):
        for always in (False, True):
            for cfg in CONFIGS:
                name = (
                    f"q held in bf16, {'descriptor' if tma else 'pointer'} loads, rotate "
                    f"{'every tile' if always else 'once a chunk'}, {'/'.join(map(str, cfg))}"
                )
                out.append((name, lambda c, al=always, tma=tma, cfg=cfg: held_pass(c, al, tma, cfg)))
    return out


def check_cpu() -> None:
    h, kvh, d = 4, 2, 16
    c = token_major(tiles.case(64 + 512 * 2 + 100, 3, h, kvh, d, "cpu", torch.float32), 3)
    want = tiles.merged(*tiles.library(c), 3, h, kvh, d)
    for name, fn in contenders()[1:]:
        if "128/" in name:
            continue  # the interpreter runs 64-row programs quickly enough
        o, lse, sp = fn(c)
        torch.testing.assert_close(tiles.merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contender's partials merge to the library's")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (32768, 131072, 10240):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            layers = 32 if shape.startswith("llama") else 28
            c = token_major(tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16), layers)
            o, lse, sp = tiles.library(c)
            ref = tiles.merged(o, lse, sp, 32, h, kvh, d)
            print(
                f"\n## {shape}, {ctx} keys, token-major pool of {layers} layers"
                " (rows/warps/stages/programs an SM)\n"
            )
            print("| contender | splits | µs | rel err vs library |\n|---|---|---|---|")
            for name, fn in contenders():
                try:
                    o, lse, sp = fn(c)
                    err = float((tiles.merged(o, lse, sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                    us = do_bench_cudagraph(lambda fn=fn, c=c: fn(c)) * 1e3
                    print(f"| {name} | {sp} | {us:.1f} | {err:.1e} |", flush=True)
                except Exception as exc:  # out of resources at a configuration
                    print(f"| {name} | | failed: {type(exc).__name__} {str(exc)[:80]} | |", flush=True)
            del c
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
