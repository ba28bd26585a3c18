"""int4 pool blocks in the paged kernel, second try: the first int4 kernels
(``../ttft_paged_int4_h200/``) ran at 2.1-2.7x the bf16 pass at 32K. Their value scale and
zero were gathered per element, a (block, D) load of values that are the same over 64 channels.
Here (value group == D/2, so each half-width product has one value group) they are (block,)
vectors broadcast over the channels, the key codes become bf16 by a plain conversion, and the
table rows come one block ahead (``../ttft_paged_v6_h200/``'s ``rowpf``, 19% on the bf16 pass).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_int4_v2_h200/paged_int4_v2_ab.py            # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                              # CPU

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

from ragcompress.kv.fast._online import folded_rows, store_partial
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference
from ragcompress.kv.fast.waves import CONTIGUOUS


def _load(name: str, rel: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / rel)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


v1 = _load("paged_int4_ab", "ttft_paged_int4_h200/paged_int4_ab.py")
v2ab = v1.v2ab
_row = v1._row


@triton.jit
def _paged_int4_v2_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, VG: tl.constexpr,
):  # fmt: skip
    tl.static_assert(VG == HALF)
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    dt = q_ptr.dtype.element_ty
    i = tl.arange(0, HALF)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    freq = tl.load(freq_ptr + i)
    count = tl.load(tab_ptr).to(tl.int64)
    per = (count + S - 1) // S
    e0 = seg * per
    e1 = tl.minimum(e0 + per, count)
    n = tl.arange(0, BS).to(tl.int64)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HALF], tl.float32)
    acc2 = tl.zeros([BLOCK_M, HALF], tl.float32)
    a1 = tl.zeros([BLOCK_M, HALF], dt)
    a2 = tl.zeros([BLOCK_M, HALF], dt)
    last = tl.full((), 0, tl.int32)
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
        if (delta != last) | (e == e0):
            q1 = tl.load(qrow + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            q2 = tl.load(qrow + HALF + i[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            c = tl.cos(ang)[None, :]
            s_ = tl.sin(ang)[None, :]
            a1 = (q1 * c + q2 * s_).to(dt)
            a2 = (q2 * c - q1 * s_).to(dt)
            last = delta
        slots = blk * BS + n
        km = n < used
        crow = (slots[:, None] * KVH + kv) * HALF + i[None, :]
        kc = tl.load(kc_ptr + crow, mask=km[:, None], other=0)
        kq = (blk * KVH + kv) * D
        k1 = ((kc & 0xF).to(tl.float32) * tl.load(ks_ptr + kq + i).to(tl.float32)[None, :]
              + tl.load(kz_ptr + kq + i).to(tl.float32)[None, :]).to(dt)  # fmt: skip
        k2 = ((kc >> 4).to(tl.float32) * tl.load(ks_ptr + kq + HALF + i).to(tl.float32)[None, :]
              + tl.load(kz_ptr + kq + HALF + i).to(tl.float32)[None, :]).to(dt)  # fmt: skip
        s = (tl.dot(a1, tl.trans(k1)) + tl.dot(a2, tl.trans(k2))) * qk_scale
        s = tl.where(km[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        vc = tl.load(vc_ptr + crow, mask=km[:, None], other=0)
        vq = (slots * KVH + kv) * 2  # two value groups a slot: channels [0, HALF) and [HALF, D)
        vs1 = tl.load(vs_ptr + vq, mask=km, other=0.0).to(tl.float32)[:, None]
        vz1 = tl.load(vz_ptr + vq, mask=km, other=0.0).to(tl.float32)[:, None]
        vs2 = tl.load(vs_ptr + vq + 1, mask=km, other=0.0).to(tl.float32)[:, None]
        vz2 = tl.load(vz_ptr + vq + 1, mask=km, other=0.0).to(tl.float32)[:, None]
        pd = p.to(dt)
        acc1 = acc1 * alpha[:, None] + tl.dot(pd, ((vc & 0xF).to(tl.float32) * vs1 + vz1).to(dt))
        acc2 = acc2 * alpha[:, None] + tl.dot(pd, ((vc >> 4).to(tl.float32) * vs2 + vz2).to(dt))
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        blk, used, delta = nblk, nused, ndelta
    acc = tl.reshape(tl.permute(tl.join(acc1, acc2), (0, 2, 1)), (BLOCK_M, D))
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def check_cpu() -> None:
    for n, h, kvh, d, splits in ((3, 4, 2, 32, 3), (33, 4, 2, 32, 2), (5, 4, 2, 32, 7)):
        q, pk, pv, table, inv = v2ab.case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        *pool, dk, dv = v1.quantized_pool(pk, pv, 16, d // 2)
        want_o, _ = paged_context_reference(q, dk, dv, table, inv, 16, 0.3)
        o, lse = v1.paged_int4(q, tuple(pool), table, inv, 16, d // 2, splits, 0.3, _paged_int4_v2_kernel)
        torch.testing.assert_close(v2ab.merged(o, lse, splits, n, h, kvh, d), want_o, atol=1e-4, rtol=1e-4)
    print("cpu check: the int4 v2 kernel's partials merge to the reference over the dequantized pool")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (h, kvh, d) in v1.SHAPES.items():
        q, pk, pv, table, inv = v2ab.case(32768, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
        *pool, dk, dv = v1.quantized_pool(pk, pv, 64, 64)
        sp = CONTIGUOUS.splits(sms, 32 * (h // kvh), kvh, 32768 // 64)
        lib = partial(paged_context, q, dk, dv, table, inv, 64, sp, d**-0.5)
        ref = v2ab.merged(*lib(), sp, 32, h, kvh, d)
        print(f"\n## {name}, 32K keys, {sp} splits")
        print("| pool | us | rel err vs the bf16 pass over the dequantized pool |")
        print("|---|---|---|")
        print(f"| bf16 (library) | {do_bench_cudagraph(lib) * 1e3:.1f} | 0 |")
        kernels = (("int4 v1, half-width", v1._paged_int4_kernel), ("int4 v2", _paged_int4_v2_kernel))
        for kname, kern in kernels:
            run = partial(v1.paged_int4, q, tuple(pool), table, inv, 64, 64, sp, d**-0.5, kern)
            err = float((v2ab.merged(*run(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
            print(f"| {kname} | {do_bench_cudagraph(run) * 1e3:.1f} | {err:.1e} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
