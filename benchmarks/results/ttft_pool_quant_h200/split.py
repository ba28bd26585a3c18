"""The quantizing kernel with each block's work cut into SUB programs, against the library's, on
one 512-token chunk (Llama-3-8B K/V shape, bf16, int4 and int8 pools), by SUB and warps.

`ncu.txt` (the library kernel at 8 warps) read one 256-thread program an SM: its registers
allow no second one (12.5% occupancy), DRAM 5.6% busy, ~6 cycles between a warp's
instructions. Here a key program takes a block's tokens over 1/SUB of the channel pairs (j, j +
D/2) (a per-channel statistic needs every token of the block, not every channel), a value
program 1/SUB of the block's tokens over the whole half heads (a per-token statistic needs the
half head): SUB times the programs, each 1/SUB of the registers. µs by
``triton.testing.do_bench``; every variant's bytes checked against the library kernel's; the
chunk's bf16 copy (``torch.clone``) as the floor.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/split.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/split.py --check-cpu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._pool_quant import _keys, _values, quantize_run
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool

NAMES = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")


@triton.jit
def _key_part(k_ptr, kc_ptr, ks_ptr, kz_ptr, src_t, src, dst, count, LH, lh, blk, sub,
              BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """A block's tokens over channel pairs ``sub * CP ..`` (and the same + D/2)."""
    H: tl.constexpr = D // 2
    DC: tl.constexpr = D * BITS // 8
    CP: tl.constexpr = H // SUB
    t = tl.arange(0, BS)
    c = sub * CP + tl.arange(0, CP)
    ok = (blk * BS + t < count)[:, None]
    rows = (src + blk * BS + t).to(tl.int64)[:, None] * src_t + lh * D + c[None, :]
    out = (dst + blk * BS + t).to(tl.int64)[:, None] * (LH * DC) + lh * DC + c[None, :]
    kat = ((dst // BS + blk) * LH + lh) * D + c
    return _keys(k_ptr, kc_ptr, ks_ptr, kz_ptr, rows, out, ok, kat, H, BITS)


@triton.jit
def _value_part(v_ptr, vc_ptr, vs_ptr, vz_ptr, src_t, src, dst, count, LH, lh, blk, sub,
                BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """Tokens ``sub * TT ..`` of a block over both half heads."""
    H: tl.constexpr = D // 2
    DC: tl.constexpr = D * BITS // 8
    TT: tl.constexpr = BS // SUB
    t = sub * TT + tl.arange(0, TT)
    c = tl.arange(0, H)
    ok = (blk * BS + t < count)[:, None]
    rows = (src + blk * BS + t).to(tl.int64)[:, None] * src_t + lh * D + c[None, :]
    slots = (dst + blk * BS + t).to(tl.int64)
    out = slots[:, None] * (LH * DC) + lh * DC + c[None, :]
    return _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, rows, out, ok, (slots * LH + lh) * 2, H, BITS)


@triton.jit
def _split(
    k_ptr, v_ptr, src_t, kc_ptr, vc_ptr, ks_ptr, kz_ptr, vs_ptr, vz_ptr, bad_ptr,
    src, dst, count, LH, BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    lh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1) // SUB
    sub = tl.program_id(1) % SUB  # fastest: a block's SUB programs read the same rows together
    if tl.program_id(2) == 0:
        bad = _key_part(k_ptr, kc_ptr, ks_ptr, kz_ptr, src_t, src, dst, count, LH, lh, blk, sub, BS, D, BITS, SUB)
    else:
        bad = _value_part(v_ptr, vc_ptr, vs_ptr, vz_ptr, src_t, src, dst, count, LH, lh, blk, sub, BS, D, BITS, SUB)
    if bad > 0:
        tl.store(bad_ptr, 1)


def split(pool: Any, k: torch.Tensor, v: torch.Tensor, n: int, sub: int, warps: int) -> None:
    _, layers, kv_heads, d = k.shape
    grid: Any = (layers * kv_heads, triton.cdiv(n, pool.block_size) * sub, 2)
    _split[grid](
        k, v, k.stride(0), pool.keys, pool.values, pool.key_scale, pool.key_zero, pool.value_scale,
        pool.value_zero, pool.bad, 0, 0, n, layers * kv_heads,
        BS=pool.block_size, D=d, BITS=pool.bits, SUB=sub, num_warps=warps,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check-cpu", action="store_true", help="interpreted, small: equality only")
    args = p.parse_args()
    dev = "cpu" if args.check_cpu else "cuda"
    layers, kvh, d, bs = (2, 2, 32, 16) if args.check_cpu else (32, 8, 128, 64)
    n = 37 if args.check_cpu else 512
    k = torch.randn(n, layers, kvh, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    read = 2 * k.numel() * k.element_size()
    subs = (1, 2, 4) if args.check_cpu else (1, 2, 4, 8)
    if not args.check_cpu:
        ms = triton.testing.do_bench(lambda: (k.clone(), v.clone()))
        print(f"{torch.cuda.get_device_name()}: {n}-token chunk, {read / 1e6:.1f} MB of bf16 K/V")
        print(f"bf16 copy (clone of keys and values): {ms * 1e3:.1f} µs, {2 * read / ms / 1e6:.0f} GB/s")
    for cls in (Int4ChunkPool, Int8ChunkPool):

        def pool(c: Any = cls) -> Any:
            return c(layers, kvh, d, -(-n // bs), bs, torch.bfloat16, dev)

        ref = pool()
        quantize_run(ref, k, v, (0, 0, n), ref.bad)
        contenders: dict[str, Any] = {
            f"library, {w} warps": (lambda q, w=w: quantize_run(q, k, v, (0, 0, n), q.bad, w)) for w in (2, 4)
        }
        for s in subs:
            for w in (1, 2, 4):
                contenders[f"split {s}, {w} warps"] = lambda q, s=s, w=w: split(q, k, v, n, s, w)
        print(f"\n{cls.__name__}\n| kernel | µs | GB/s read | equal |\n|---|---|---|---|")
        for name, fn in contenders.items():
            got = pool()
            fn(got)
            same = all(torch.equal(getattr(got, x), getattr(ref, x)) for x in NAMES)
            if args.check_cpu:
                print(f"| {name} | | | {same} |")
                continue
            ms = triton.testing.do_bench(lambda g=got, f=fn: f(g))
            print(f"| {name} | {ms * 1e3:.1f} | {read / ms / 1e6:.0f} | {same} |")


if __name__ == "__main__":
    main()
