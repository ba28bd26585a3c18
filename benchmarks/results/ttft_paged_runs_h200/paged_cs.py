"""Follow-up of ``paged_rot.py``: is the rotation's cost its cos/sin? The paged pass computes
``cos``/``sin`` of ``delta * inv_freq`` in every program at every chunk; at 128K the angles
reach ~1.3e5 rad, past the range where the fp32 cosine's fast argument reduction holds. Here:
the library kernel over the same table with the deltas cut to ``delta % 4096`` (same work,
small angles), and a kernel that reads each row's cos/sin from a table a prep launch writes
once a step (``(rows, D)`` fp32: cos then sin of the row's delta), rotating once a chunk or at
every tile. µs a layer, and the prep launch's µs (once a step, not a layer).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_runs_h200/paged_cs.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                 # CPU

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

from ragcompress.kv.fast._context import _LOG2E, _clamped, _tile
from ragcompress.kv.fast._online import partials, store_partial
from ragcompress.kv.fast._paged import _entries, _row, paged_context, question_rows
from ragcompress.kv.fast.waves import PAGED


@triton.jit
def _prep_kernel(tab_ptr, freq_ptr, cs_ptr, HALF: tl.constexpr, ROWS: tl.constexpr):
    """cs[e] = (cos(delta_e * f), sin(delta_e * f)) over D channels (rotate_half pairing) for
    ``ROWS`` table rows a program."""
    D: tl.constexpr = 2 * HALF
    e = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    count = tl.load(tab_ptr)
    d = tl.arange(0, D)
    delta = tl.load(tab_ptr + 3 * (1 + e) + 2, mask=e < count, other=0).to(tl.float32)
    ang = delta[:, None] * tl.load(freq_ptr + d % HALF)[None, :]
    base = cs_ptr + e[:, None] * (2 * D) + d[None, :]
    tl.store(base, tl.cos(ang), mask=(e < count)[:, None])
    tl.store(base + D, tl.sin(ang), mask=(e < count)[:, None])


@triton.jit
def _cs_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, cs_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, ALWAYS: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, NG, 0, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
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
        if ALWAYS:
            cs = cs_ptr + e * (2 * D) + d
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            a = (qf * tl.load(cs)[None, :] + qs * (sign * tl.load(cs + D))[None, :]).to(
                k_ptr.dtype.element_ty
            )
        else:
            if (delta != last) | (e == e0):
                cs = cs_ptr + e * (2 * D) + d
                qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                a = (qf * tl.load(cs)[None, :] + qs * (sign * tl.load(cs + D))[None, :]).to(
                    k_ptr.dtype.element_ty
                )
                last = delta
        keys = _clamped(blk * BS, n, used)
        m_i, l_i, acc = _tile(a, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        blk, used, delta = nblk, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def prep(c: dict[str, Any]) -> Any:
    tab, d = c["blocks"], c["q"].shape[2]
    rows = int(tab.shape[0]) - 1
    cs = torch.empty(rows, 2 * d, device=tab.device, dtype=torch.float32)
    _prep_kernel[(triton.cdiv(rows, 16),)](tab, c["inv"], cs, HALF=d // 2, ROWS=16, num_warps=4)
    return cs


def cs_pass(c: dict[str, Any], always: bool, cs: Any = None) -> Any:
    q, pk, pv, table = c["q"], c["pk"], c["pv"], c["blocks"]
    cs = prep(c) if cs is None else cs
    d, kvh = q.shape[2], pk.shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    splits = PAGED.splits(sms, ng, kvh, int(table.shape[0]) - 1)
    g, ng, o, lse = partials("cs_pass", q, pk, pv, splits)
    block_m = PAGED.block_m(ng)
    _cs_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, table, cs, o, lse, pk.stride(0), pv.stride(0), ng, d**-0.5 * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=block_m, ALWAYS=always,
        num_warps=PAGED.warps(block_m), num_stages=PAGED.stages,
    )  # fmt: skip
    return o, lse, splits


def small_angles(c: dict[str, Any]) -> Any:
    """The library kernel over the table with every delta cut to ``delta % 4096``."""
    q, pk, kvh = c["q"], c["pk"], c["pk"].shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    tab = c.setdefault("small", c["blocks"].clone())
    tab[1:, 2] %= 4096
    sp = PAGED.splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    o, lse = paged_context(q, pk, c["pv"], tab, c["inv"], 64, sp, q.shape[2] ** -0.5)
    return o, lse, sp


def contenders(c: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """(name, run, same output as the library expected)."""
    cs = prep(c)
    return [
        ("library paged (blocks of 64)", tiles.library, True),
        ("contiguous, keys in context order", tiles.contiguous, True),
        ("library kernel, deltas % 4096 (small angles; other output)", small_angles, False),
        ("cos/sin from the prep table, rotate once a chunk", lambda c: cs_pass(c, False, cs), True),
        ("cos/sin from the prep table, rotate every tile", lambda c: cs_pass(c, True, cs), True),
        ("prep launch alone (once a step)", lambda c: (prep(c), None, 0), False),
    ]


def check_cpu() -> None:
    h, kvh, d = 4, 2, 16
    c = token_major(tiles.case(64 + 512 * 2 + 100, 3, h, kvh, d, "cpu", torch.float32), 3)
    want = tiles.merged(*tiles.library(c), 3, h, kvh, d)
    for _name, fn, same in contenders(c):
        if same:
            o, lse, sp = fn(c)
            torch.testing.assert_close(tiles.merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contender's partials merge to the library's")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (131072, 32768, 10240):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            layers = 32 if shape.startswith("llama") else 28
            c = token_major(tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16), layers)
            o, lse, sp = tiles.library(c)
            ref = tiles.merged(o, lse, sp, 32, h, kvh, d)
            print(f"\n## {shape}, {ctx} keys, token-major pool of {layers} layers\n")
            print("| contender | µs | rel err vs library |\n|---|---|---|")
            for name, fn, same in contenders(c):
                try:
                    o, lse, sp = fn(c)
                    err = (
                        float((tiles.merged(o, lse, sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                        if same
                        else 0
                    )
                    us = do_bench_cudagraph(lambda fn=fn, c=c: fn(c)) * 1e3
                    print(f"| {name} | {us:.1f} | {f'{err:.1e}' if same else '—'} |", flush=True)
                except Exception as exc:
                    print(f"| {name} | failed: {type(exc).__name__} {str(exc)[:80]} | |", flush=True)
            del c
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
