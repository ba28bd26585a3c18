"""int4 pool blocks read and dequantized inside the paged context kernel (#16: "compressed chunks
are read and dequantized inside the attention kernel rather than expanded into a bf16 buffer
first"), prepared for the next device call (not yet run on a GPU).

Today a quantized chunk is expanded to the model dtype when it enters the pool, so the pool holds
4x fewer int4 chunks than it could and the pass reads bf16. Here a layer's pool view is the
chunk format of :mod:`ragcompress.kv.kernels.quant_format` with one key group per pool block
(``group == block_size``): key codes and value codes (slots, kv_heads, D/2) uint8, half-split
nibbles; key scale/zero (blocks, kv_heads, D) fp16; value scale/zero (slots, kv_heads, D/VG)
fp16. Each block's keys are dequantized in registers (a nibble pair is a rotation pair, so the
scores are two half-width products against the rotated query halves), values likewise, and the
partials are those of ``_paged.py``. The script checks the partials against the torch reference
over the dequantized pool, and times the kernel against the library's bf16 pass at 32K.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_int4_h200/paged_int4_ab.py          # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                      # CPU

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

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import folded_rows, partials, store_partial
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.paged import paged_context_reference
from ragcompress.kv.fast.waves import CONTIGUOUS
from ragcompress.kv.kernels.quant_format import (
    dequantize_keys,
    dequantize_values,
    quantize_keys,
    quantize_values,
)

_V2 = Path(__file__).resolve().parents[1] / "ttft_paged_v2_h200" / "paged_v2_ab.py"
_spec = importlib.util.spec_from_file_location("paged_v2_ab", _V2)
assert _spec is not None and _spec.loader is not None
v2ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v2ab)

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


@triton.jit
def _dq(codes, scale, zero, dt: tl.constexpr):
    return (codes.to(tl.float32) * scale + zero).to(dt)


@triton.jit
def _paged_int4_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, VG: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    NVG: tl.constexpr = D // VG
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
    last = tl.load(tab_ptr + 2)
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        delta = tl.load(row + 2)
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
        k1 = _dq(kc & 0xF, tl.load(ks_ptr + kq + i).to(tl.float32)[None, :],
                 tl.load(kz_ptr + kq + i).to(tl.float32)[None, :], dt)  # fmt: skip
        k2 = _dq(kc >> 4, tl.load(ks_ptr + kq + HALF + i).to(tl.float32)[None, :],
                 tl.load(kz_ptr + kq + HALF + i).to(tl.float32)[None, :], dt)  # fmt: skip
        s = (tl.dot(a1, tl.trans(k1)) + tl.dot(a2, tl.trans(k2))) * qk_scale
        s = tl.where(km[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        vc = tl.load(vc_ptr + crow, mask=km[:, None], other=0)
        vq = (slots[:, None] * KVH + kv) * NVG
        g1 = vq + (i // VG)[None, :]
        g2 = vq + ((i + HALF) // VG)[None, :]
        v1 = _dq(vc & 0xF, tl.load(vs_ptr + g1, mask=km[:, None], other=0.0).to(tl.float32),
                 tl.load(vz_ptr + g1, mask=km[:, None], other=0.0).to(tl.float32), dt)  # fmt: skip
        v2 = _dq(vc >> 4, tl.load(vs_ptr + g2, mask=km[:, None], other=0.0).to(tl.float32),
                 tl.load(vz_ptr + g2, mask=km[:, None], other=0.0).to(tl.float32), dt)  # fmt: skip
        pd = p.to(dt)
        acc1 = acc1 * alpha[:, None] + tl.dot(pd, v1)
        acc2 = acc2 * alpha[:, None] + tl.dot(pd, v2)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    acc = tl.reshape(tl.permute(tl.join(acc1, acc2), (0, 2, 1)), (BLOCK_M, D))
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


@triton.jit
def _full(lo, hi, BS: tl.constexpr, D: tl.constexpr):
    """(BS, D/2) low/high halves -> (BS, D): channel i from ``lo``, i + D/2 from ``hi``."""
    return tl.reshape(tl.permute(tl.join(lo, hi), (0, 2, 1)), (BS, D))


@triton.jit
def _paged_int4_full_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, VG: tl.constexpr,
):  # fmt: skip
    """The int4 kernel with full-width products (the library bf16 pass's v5 structure): codes
    unpacked to (BS, D) in registers, one D-wide product for the scores and one for the values."""
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    NVG: tl.constexpr = D // VG
    dt = q_ptr.dtype.element_ty
    i = tl.arange(0, HALF)
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
    a = tl.zeros([BLOCK_M, D], dt)
    last = tl.full((), 0, tl.int32)
    for e in range(e0, e1):
        row = tab_ptr + 3 * (1 + e)
        blk = tl.load(row).to(tl.int64)
        used = tl.load(row + 1)
        delta = tl.load(row + 2)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(dt)
            last = delta
        slots = blk * BS + n
        km = n < used
        crow = (slots[:, None] * KVH + kv) * HALF + i[None, :]
        kc = tl.load(kc_ptr + crow, mask=km[:, None], other=0)
        kq = (blk * KVH + kv) * D
        ks = tl.load(ks_ptr + kq + d).to(tl.float32)
        kz = tl.load(kz_ptr + kq + d).to(tl.float32)
        k = (_full(kc & 0xF, kc >> 4, BS, D).to(tl.float32) * ks[None, :] + kz[None, :]).to(dt)
        s = tl.dot(a, tl.trans(k)) * qk_scale
        s = tl.where(km[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        vc = tl.load(vc_ptr + crow, mask=km[:, None], other=0)
        gv = (slots[:, None] * KVH + kv) * NVG + (d // VG)[None, :]
        vsc = tl.load(vs_ptr + gv, mask=km[:, None], other=0.0).to(tl.float32)
        vze = tl.load(vz_ptr + gv, mask=km[:, None], other=0.0).to(tl.float32)
        v = (_full(vc & 0xF, vc >> 4, BS, D).to(tl.float32) * vsc + vze).to(dt)
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)



@triton.jit
def _row(tab_ptr, e, e1):
    """Row ``1 + e`` of the table, or an empty block past the split's end."""
    row = tab_ptr + 3 * (1 + tl.minimum(e, e1 - 1))
    blk = tl.load(row).to(tl.int64)
    used = tl.where(e < e1, tl.load(row + 1), 0)
    return blk, used, tl.load(row + 2)


@triton.jit
def _paged_int4_pf_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, tab_ptr, freq_ptr, o_ptr, lse_ptr,
    NG, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, VG: tl.constexpr,
):  # fmt: skip
    """The full-width int4 kernel (codes unpacked to (BS, D) in registers, one D-wide product
    for the scores and one for the values) with the next block's table row loaded one block
    ahead, as ``../ttft_paged_v6_h200/``'s ``rowpf``."""
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    NVG: tl.constexpr = D // VG
    dt = q_ptr.dtype.element_ty
    i = tl.arange(0, HALF)
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
    a = tl.zeros([BLOCK_M, D], dt)
    last = tl.full((), 0, tl.int32)
    blk, used, delta = _row(tab_ptr, e0, e1)
    for e in range(e0, e1):
        nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
        if (delta != last) | (e == e0):
            qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
            ang = delta.to(tl.float32) * freq
            a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(dt)
            last = delta
        slots = blk * BS + n
        km = n < used
        crow = (slots[:, None] * KVH + kv) * HALF + i[None, :]
        kc = tl.load(kc_ptr + crow, mask=km[:, None], other=0)
        kq = (blk * KVH + kv) * D
        ks = tl.load(ks_ptr + kq + d).to(tl.float32)
        kz = tl.load(kz_ptr + kq + d).to(tl.float32)
        k = (_full(kc & 0xF, kc >> 4, BS, D).to(tl.float32) * ks[None, :] + kz[None, :]).to(dt)
        s = tl.dot(a, tl.trans(k)) * qk_scale
        s = tl.where(km[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        vc = tl.load(vc_ptr + crow, mask=km[:, None], other=0)
        gv = (slots[:, None] * KVH + kv) * NVG + (d // VG)[None, :]
        vsc = tl.load(vs_ptr + gv, mask=km[:, None], other=0.0).to(tl.float32)
        vze = tl.load(vz_ptr + gv, mask=km[:, None], other=0.0).to(tl.float32)
        v = (_full(vc & 0xF, vc >> 4, BS, D).to(tl.float32) * vsc + vze).to(dt)
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        blk, used, delta = nblk, nused, ndelta
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def quantized_pool(pk: Any, pv: Any, bs: int, vg: int) -> tuple[Any, ...]:
    """A bf16/fp32 pool (slots, kvh, D) as int4 blocks: key groups of ``bs`` slots (one per
    block), value groups of ``vg`` channels; returns the pool tensors and the dequantized pool."""
    k = pk.permute(1, 0, 2)
    v = pv.permute(1, 0, 2)
    kc, ks, kz = quantize_keys(k, 4, bs)
    vc, vs, vz = quantize_values(v, 4, vg)
    dk = dequantize_keys(kc, ks, kz, 4, bs).permute(1, 0, 2).to(pk.dtype).contiguous()
    dv = dequantize_values(vc, vs, vz, 4, vg).permute(1, 0, 2).to(pv.dtype).contiguous()
    lay = [t.permute(1, 0, 2).contiguous() for t in (kc, ks, kz, vc, vs, vz)]
    return (*lay, dk, dv)


def paged_int4(
    q: Any, pool: tuple[Any, ...], table: Any, inv: Any, bs: int, vg: int, splits: int, scale: float,
    kernel: Any = _paged_int4_kernel,
) -> Any:
    kc, ks, kz, vc, vs, vz = pool
    d, kvh = q.shape[2], kc.shape[1]
    g, ng, o, lse = partials("paged_int4", q, q.new_empty(1, kvh, d), q.new_empty(1, kvh, d), splits)
    block_m = 64 if ng <= 64 else 128
    kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), kc, ks, kz, vc, vs, vz, table, inv, o, lse, ng, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=bs, BLOCK_M=block_m, VG=vg,
        num_warps=8 if block_m == 128 else 4, num_stages=3,
    )  # fmt: skip
    return o, lse


def check_cpu() -> None:
    for n, h, kvh, d, splits in ((3, 4, 2, 32, 3), (33, 4, 2, 32, 2)):
        q, pk, pv, table, inv = v2ab.case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        *pool, dk, dv = quantized_pool(pk, pv, 16, 16)
        want_o, _ = paged_context_reference(q, dk, dv, table, inv, 16, 0.3)
        for kern in (_paged_int4_kernel, _paged_int4_full_kernel, _paged_int4_pf_kernel):
            o, lse = paged_int4(q, tuple(pool), table, inv, 16, 16, splits, 0.3, kern)
            got = v2ab.merged(o, lse, splits, n, h, kvh, d)
            torch.testing.assert_close(got, want_o, atol=1e-4, rtol=1e-4)
    print("cpu check: the int4 kernel's partials merge to the reference over the dequantized pool")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (h, kvh, d) in SHAPES.items():
        q, pk, pv, table, inv = v2ab.case(32768, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
        *pool, dk, dv = quantized_pool(pk, pv, 64, 64)
        sp = CONTIGUOUS.splits(sms, 32 * (h // kvh), kvh, 32768 // 64)
        lib = partial(paged_context, q, dk, dv, table, inv, 64, sp, d**-0.5)
        ref = v2ab.merged(*lib(), sp, 32, h, kvh, d)
        run = partial(paged_int4, q, tuple(pool), table, inv, 64, 64, sp, d**-0.5)
        err = float((v2ab.merged(*run(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
        bf16_bytes = 2 * dk.numel() * 2
        int4_bytes = sum(t.numel() * t.element_size() for t in pool)
        print(f"\n## {name}, 32K keys, {sp} splits")
        print("| pool | bytes read (MB) | us | rel err vs bf16 pass over the dequantized pool |")
        print("|---|---|---|---|")
        print(f"| bf16 (library) | {bf16_bytes / 1e6:.0f} | {do_bench_cudagraph(lib) * 1e3:.1f} | 0 |")
        t_int4 = do_bench_cudagraph(run) * 1e3
        print(f"| int4/64 in the kernel, half-width products | {int4_bytes / 1e6:.0f} | {t_int4:.1f} | {err:.1e} |")  # noqa: E501
        full = partial(paged_int4, q, tuple(pool), table, inv, 64, 64, sp, d**-0.5, _paged_int4_full_kernel)
        err = float((v2ab.merged(*full(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
        t_full = do_bench_cudagraph(full) * 1e3
        print(f"| int4/64 in the kernel, full-width products | {int4_bytes / 1e6:.0f} | {t_full:.1f} | {err:.1e} |")  # noqa: E501
        pf = partial(paged_int4, q, tuple(pool), table, inv, 64, 64, sp, d**-0.5, _paged_int4_pf_kernel)
        err = float((v2ab.merged(*pf(), sp, 32, h, kvh, d) - ref).norm() / ref.norm())
        t_pf = do_bench_cudagraph(pf) * 1e3
        print(f"| int4/64 in the kernel, full-width, rows one block ahead | {int4_bytes / 1e6:.0f} | {t_pf:.1f} | {err:.1e} |")  # noqa: E501


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
