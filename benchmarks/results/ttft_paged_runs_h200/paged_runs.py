"""Is it the branch? The paged pass rotates its queries inside the key loop (``if delta !=
last``), so each 64-key block is one iteration of a loop with a branch and a table-dependent
address, and 128-key tiles ran 2x the contiguous pass (``../ttft_paged_tiles_h200/``). Here the
table lists *runs* (a chunk's consecutive blocks: ``[first slot, keys, delta, context start]``)
and the kernel nests two loops: once a run, rotate the queries; inside, the contiguous pass's
affine, branch-free key loop over the run. Splits cut either the runs (``ceil(count / S)``
each) or the keys (``ceil(total / S)`` each, rounded to the tile; a split finds its runs with
one vector scan of the table's start column).

The pool as ``paged_tiles.py`` fills it: each item (a 64-token prefix, then 512-token chunks,
or chunks of ``--chunk`` tokens) one run of consecutive blocks, the runs in shuffled pool order.
One layer, 32 question tokens.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_runs_h200/paged_runs.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                   # CPU

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

from ragcompress.kv.fast._context import _LOG2E, _clamped, _tile
from ragcompress.kv.fast._online import partials, store_partial
from ragcompress.kv.fast._paged import question_rows
from ragcompress.kv.fast.waves import Tiling

_spec = importlib.util.spec_from_file_location(
    "paged_tiles", Path(__file__).parents[1] / "ttft_paged_tiles_h200" / "paged_tiles.py"
)
assert _spec is not None and _spec.loader is not None
tiles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiles)


@triton.jit
def _run(a, kb, vb, slot0, lo, hi, sk_t, sv_t, qk_scale, m_i, l_i, acc, BN: tl.constexpr, D: tl.constexpr):
    """Keys ``[slot0 + lo, slot0 + hi)`` of one run: full tiles unmasked in an affine loop, the
    last partial one masked."""
    n = tl.arange(0, BN).to(tl.int64)
    full = lo + (hi - lo) // BN * BN
    for off in range(lo, full, BN):
        keys = slot0 + off + n
        m_i, l_i, acc = _tile(a, kb, vb, keys, keys >= 0, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, D)
    if full < hi:
        keys = _clamped(slot0 + full, n, hi - full)
        m_i, l_i, acc = _tile(a, kb, vb, keys, n < hi - full, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
    return m_i, l_i, acc


@triton.jit
def _runs_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BN: tl.constexpr, BLOCK_M: tl.constexpr, BY_KEYS: tl.constexpr, SCAN: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, NG, 0, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    sign = tl.where(d < HALF, 1.0, -1.0)
    freq = tl.load(freq_ptr + d % HALF)
    count = tl.load(tab_ptr).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    if BY_KEYS:
        total = tl.load(tab_ptr + 1).to(tl.int64)
        per = (total + S * BN - 1) // (S * BN) * BN
        start = seg * per
        end = tl.minimum(start + per, total)
        first = tl.zeros((), tl.int64)
        last = tl.zeros((), tl.int64)
        for b in range(0, count, SCAN):  # one vector scan of the runs' context starts
            idx = b + tl.arange(0, SCAN).to(tl.int64)
            c = tl.load(tab_ptr + 4 * (1 + idx) + 3, mask=idx < count, other=2**30).to(tl.int64)
            first += tl.sum((c <= start).to(tl.int64), axis=0)
            last += tl.sum((c < end).to(tl.int64), axis=0)
        e0 = tl.maximum(first - 1, 0)
        e1 = last
    else:
        per_e = (count + S - 1) // S
        e0 = seg * per_e
        e1 = tl.minimum(e0 + per_e, count)
        start = tl.zeros((), tl.int64)
        end = tl.full((), 2**40, tl.int64)
    for e in range(e0, e1):
        row = tab_ptr + 4 * (1 + e)
        slot0 = tl.load(row).to(tl.int64)
        used = tl.load(row + 1).to(tl.int64)
        delta = tl.load(row + 2)
        cstart = tl.load(row + 3).to(tl.int64)
        lo = tl.maximum(start - cstart, 0)
        hi = tl.maximum(tl.minimum(end - cstart, used), lo)
        qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
        qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
        ang = delta.to(tl.float32) * freq
        a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
        m_i, l_i, acc = _run(a, kb, vb, slot0, lo, hi, sk_t, sv_t, qk_scale, m_i, l_i, acc, BN, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def runs_table(blocks: Any, bs: int) -> Any:
    """The library's block table (1 + n, 3) ``[block, used, delta]`` -> a run table (1 + r, 4):
    row 0 ``[count, total keys, 0, 0]``, then ``[first slot, keys, delta, context start]`` per
    run of consecutive, full blocks with one delta."""
    rows = blocks[1 : 1 + int(blocks[0, 0])].tolist()
    runs: list[list[int]] = []
    pos = 0
    for blk, used, delta in rows:
        r = runs[-1] if runs else None
        if r is not None and r[2] == delta and r[0] + r[1] == blk * bs and r[1] % bs == 0:
            r[1] += used
        else:
            runs.append([blk * bs, used, delta, pos])
        pos += used
    return torch.tensor([[len(runs), pos, 0, 0], *runs], dtype=torch.int32, device=blocks.device)


def runs_pass(c: dict[str, Any], by_keys: bool, cfg: tuple[int, int, int, int, int]) -> Any:
    """(o, lse, splits); ``cfg`` = (rows a program, key tile, warps, stages, programs an SM)."""
    q, pk, pv = c["q"], c["pk"], c["pv"]
    tab = c["runs"]
    block_m, bn, warps, stages, per_sm = cfg
    d, kvh = q.shape[2], pk.shape[1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count if q.is_cuda else 4
    ng = q.shape[0] * (q.shape[1] // kvh)
    most = 1 << 20 if by_keys else int(tab.shape[0]) - 1
    splits = Tiling(rows=block_m, per_sm=per_sm, stages=stages).splits(sms, ng, kvh, most)
    g, ng, o, lse = partials("runs_pass", q, pk, pv, splits)
    _runs_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, tab, c["inv"], o, lse, pk.stride(0), pv.stride(0), ng, d**-0.5 * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BN=bn, BLOCK_M=block_m, BY_KEYS=by_keys, SCAN=256,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse, splits


CONFIGS = (
    (128, 128, 8, 3, 1),
    (128, 64, 8, 3, 1),
    (64, 64, 4, 3, 2),
    (64, 128, 4, 2, 2),
    (128, 128, 8, 2, 1),
)


def contenders() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("library paged (blocks of 64)", tiles.library),
        ("contiguous, keys in context order", tiles.contiguous),
    ]
    for by_keys in (True, False):
        for cfg in CONFIGS:
            name = f"runs, split by {'keys' if by_keys else 'runs'}, {'/'.join(map(str, cfg))}"
            out.append((name, lambda c, k=by_keys, cfg=cfg: runs_pass(c, k, cfg)))
    return out


def with_runs(c: dict[str, Any]) -> dict[str, Any]:
    c["runs"] = runs_table(c["blocks"].cpu(), 64).to(c["q"].device)
    return c


def check_cpu() -> None:
    h, kvh, d = 4, 2, 16
    for chunk in (512, 200):
        c = with_runs(tiles.case(64 + chunk * 3 + 100, 3, h, kvh, d, "cpu", torch.float32, chunk=chunk))
        want = tiles.merged(*tiles.library(c), 3, h, kvh, d)
        for _name, fn in contenders()[1:]:
            o, lse, sp = fn(c)
            torch.testing.assert_close(tiles.merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contender's partials merge to the library's")


def gpu(chunk: int) -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, f"chunks of {chunk} tokens")
    for ctx in (32768, 131072, 10240, 1024):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = with_runs(tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16, chunk=chunk))
            o, lse, sp = tiles.library(c)
            ref = tiles.merged(o, lse, sp, 32, h, kvh, d)
            print(
                f"\n## {shape}, {ctx} keys, {int(c['runs'][0, 0])} runs"
                " (rows/key tile/warps/stages/programs an SM)\n"
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
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    check_cpu() if args.check_cpu else gpu(args.chunk)
