"""The paged context kernel (v2, the library's since 103ed66) against two variants, one layer at
32K on the Llama-3-8B and Qwen2.5-7B heads, in one wave (16 splits):

- v4: the query rows reloaded (from L1/L2) inside the once-a-chunk rotation instead of held in
  registers as fp32 for the whole loop (2 x 128 x 128 fp32 over 256 threads: 128 registers a
  thread, next to the accumulator, the rotated rows and a key tile: likely spills);
- v5: v4 with every block's tile masked, so the loop's loads sit outside any branch (Triton's
  pipeliner leaves loads inside an ``if`` unpipelined; v2's stages changed nothing).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_v4_h200/paged_v4_ab.py           # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                   # CPU

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
from ragcompress.kv.fast.waves import CONTIGUOUS
from ragcompress.kv.fast.paged import paged_context_reference

_V2 = Path(__file__).resolve().parents[1] / "ttft_paged_v2_h200" / "paged_v2_ab.py"
_spec = importlib.util.spec_from_file_location("paged_v2_ab", _V2)
assert _spec is not None and _spec.loader is not None
v2ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v2ab)

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


@triton.jit
def _paged_v4_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    sk_t, sv_t, NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, MASK_ALL: tl.constexpr,
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
    last = tl.load(tab_ptr + 2)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        delta = tl.load(row + 2)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
            last = delta
        slots = blk * BS + n
        if MASK_ALL:
            m_i, l_i, acc = _tile(a, kb, vb, slots, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        elif used < BS:
            m_i, l_i, acc = _tile(a, kb, vb, slots, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
        else:
            m_i, l_i, acc = _tile(a, kb, vb, slots, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, False, D)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def paged_v4(q: Any, pk: Any, pv: Any, table: Any, inv: Any, bs: int, splits: int, scale: float,
             mask_all: bool, stages: int = 3) -> Any:  # fmt: skip
    d, kvh = q.shape[2], pk.shape[1]
    g, ng, o, lse = partials("paged_v4", q, pk, pv, splits)
    block_m = 64 if ng <= 64 else 128
    _paged_v4_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, table, inv, o, lse, pk.stride(0), pv.stride(0), ng, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=bs, BLOCK_M=block_m, MASK_ALL=mask_all,
        num_warps=8 if block_m == 128 else 4, num_stages=stages,
    )  # fmt: skip
    return o, lse


def check_cpu() -> None:
    for n, h, kvh, d, splits in ((3, 4, 2, 16, 3), (33, 4, 2, 16, 2)):
        q, pk, pv, table, inv = v2ab.case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        want_o, _ = paged_context_reference(q, pk, pv, table, inv, 16, 0.3)
        for mask_all in (False, True):
            o, lse = paged_v4(q, pk, pv, table, inv, 16, splits, 0.3, mask_all)
            torch.testing.assert_close(
                v2ab.merged(o, lse, splits, n, h, kvh, d), want_o, atol=1e-4, rtol=1e-4
            )
    print("cpu check: v4 and v5 partials merge to the reference")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (h, kvh, d) in SHAPES.items():
        q, pk, pv, table, inv = v2ab.case(32768, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
        sp = CONTIGUOUS.splits(sms, 32 * (h // kvh), kvh, 32768 // 64)
        lib = partial(paged_context, q, pk, pv, table, inv, 64, sp, d**-0.5)
        ref = v2ab.merged(*lib(), sp, 32, h, kvh, d)
        print(f"\n## {name}, {sp} splits: library (v2) {do_bench_cudagraph(lib) * 1e3:.1f} us")
        print("| kernel | stages | us | rel err vs the library |\n|---|---|---|---|")
        for label, mask_all in (
            ("v4 (q reloaded at each rotation)", False),
            ("v5 (v4, every tile masked)", True),
        ):
            for st in (2, 3, 4):
                run = partial(paged_v4, q, pk, pv, table, inv, 64, sp, d**-0.5, mask_all, st)
                err = float((v2ab.merged(*run(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
                print(f"| {label} | {st} | {do_bench_cudagraph(run) * 1e3:.1f} | {err:.1e} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
