"""Follow-up of ``paged_tiles.py``: is it the masks? The paged pass masks the loads of every
tile (``n < used``); the contiguous pass only its segments' last tiles. Timed here, one layer:
the contiguous pass with every tile masked, and slot kernels whose loads are unmasked (rows past
``used`` read the tile's last filled row again, in bounds; only their scores are hidden).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_tiles_h200/paged_masks.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                     # CPU

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E, _tile
from ragcompress.kv.fast._online import folded_rows, partials, store_partial
from ragcompress.kv.fast._paged import _entries, question_rows
from ragcompress.kv.fast.waves import CONTIGUOUS, Tiling

_spec = importlib.util.spec_from_file_location("paged_tiles", Path(__file__).with_name("paged_tiles.py"))
assert _spec is not None and _spec.loader is not None
tiles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiles)


@triton.jit
def _tile_clamped(q, kb, vb, slot0, n, used, sk_t, sv_t, qk_scale, m_i, l_i, acc, D: tl.constexpr):
    """``_tile`` over ``slot0 + n`` with unmasked loads: rows past ``used`` read the tile's last
    filled row again (in bounds) and only their scores are hidden."""
    d = tl.arange(0, D)
    keys = slot0 + tl.maximum(tl.minimum(n, used - 1), 0)
    k = tl.load(kb + keys[:, None] * sk_t + d[None, :])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where((n < used)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    v = tl.load(vb + keys[:, None] * sv_t + d[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _clamped_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    TN: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """The slot kernel (rows one ahead) over ``_tile_clamped``."""
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, NG, 0, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    e0, e1 = _entries(tab_ptr, seg, S)
    n = tl.arange(0, TN).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
    last = tl.full((), 0, tl.int32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    row = tab_ptr + 3 * (1 + tl.minimum(e0, e1 - 1))
    slot0 = tl.load(row).to(tl.int64)
    used = tl.where(e0 < e1, tl.load(row + 1), 0)
    delta = tl.load(row + 2)
    for e in range(e0, e1):
        nrow = tab_ptr + 3 * (1 + tl.minimum(e + 1, e1 - 1))
        nslot = tl.load(nrow).to(tl.int64)
        nused = tl.where(e + 1 < e1, tl.load(nrow + 1), 0)
        ndelta = tl.load(nrow + 2)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
            last = delta
        m_i, l_i, acc = _tile_clamped(a, kb, vb, slot0, n, used, sk_t, sv_t, qk_scale, m_i, l_i, acc, D)
        slot0, used, delta = nslot, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _context_masked_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The library's contiguous pass with every tile masked (as the paged pass masks them)."""
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * q_n + head[:, None] * q_h + d[None, :], mask=rm[:, None], other=0.0)
    start = tl.load(start_ptr + seg).to(tl.int64)
    used = tl.load(used_ptr + seg)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    for off in range(0, used, BLOCK_N):
        n = off + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _tile(q, kb, vb, start + n, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def clamped(c: dict[str, Any], tn: int, cfg: tuple[int, int, int, int]) -> tuple[Any, Any, int]:
    block_m, warps, stages, per_sm = cfg
    q, pk, pv, tab = c["q"], c["pk"], c["pv"], c[f"slots{tn}"]
    d, kvh = q.shape[2], pk.shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    splits = Tiling(rows=block_m, per_sm=per_sm, stages=stages).splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    g, ng, o, lse = partials("clamped", q, pk, pv, splits)
    _clamped_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, tab, c["inv"], o, lse, pk.stride(0), pv.stride(0), ng, d**-0.5 * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, TN=tn, BLOCK_M=block_m, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse, splits


def context_masked(c: dict[str, Any]) -> tuple[Any, Any, int]:
    q, kc, vc, kvh = c["q"], c["kc"], c["vc"], c["kc"].shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    g, d = q.shape[1] // kvh, q.shape[2]
    ng = q.shape[0] * g
    sp = CONTIGUOUS.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    g, ng, o, lse = partials("context_masked", q, kc, vc, sp)
    block_m = CONTIGUOUS.block_m(ng)
    _context_masked_kernel[(sp, kvh, triton.cdiv(ng, block_m))](
        q, kc, vc, start, used, o, lse, q.stride(0), q.stride(1), kc.stride(0), vc.stride(0), ng,
        d**-0.5 * _LOG2E, G=g, KVH=kvh, D=d, BLOCK_M=block_m, BLOCK_N=128 if block_m == 128 else 64,
        num_warps=CONTIGUOUS.warps(block_m), num_stages=CONTIGUOUS.stages,
    )  # fmt: skip
    return o, lse, sp


CONFIGS = ((64, 4, 3, 2), (128, 8, 3, 1), (64, 4, 3, 1))


def contenders() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("library paged (blocks of 64)", tiles.library),
        ("contiguous (library)", tiles.contiguous),
        ("contiguous, every tile masked", context_masked),
    ]
    for tn in (64, 128):
        for cfg in CONFIGS:
            name = f"slot tiles of {tn}, unmasked loads, {'/'.join(map(str, cfg))}"
            out.append((name, lambda c, tn=tn, cfg=cfg: clamped(c, tn, cfg)))
    return out


def check_cpu() -> None:
    c = tiles.case(64 + 512 * 3 + 100, 3, 4, 2, 16, "cpu", torch.float32, chunk=512)
    want = tiles.merged(*tiles.library(c), 3, 4, 2, 16)
    for name, fn in contenders():
        if "128/8" in name:
            continue
        o, lse, sp = fn(c)
        torch.testing.assert_close(tiles.merged(o, lse, sp, 3, 4, 2, 16), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contender's partials merge to the library's")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for ctx in (32768, 131072, 10240):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            ref = tiles.merged(*tiles.library(c), 32, h, kvh, d)
            print(f"\n## {shape}, {ctx} keys (slot configs: rows/warps/stages/programs an SM)\n")
            print("| contender | splits | µs | rel err vs library |\n|---|---|---|---|")
            for name, fn in contenders():
                try:
                    o, lse, sp = fn(c)
                    err = float((tiles.merged(o, lse, sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                    us = do_bench_cudagraph(lambda fn=fn, c=c: fn(c)) * 1e3
                    print(f"| {name} | {sp} | {us:.1f} | {err:.1e} |", flush=True)
                except Exception as exc:  # out of resources at a configuration
                    print(f"| {name} | | failed: {type(exc).__name__} {str(exc)[:80]} | |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
