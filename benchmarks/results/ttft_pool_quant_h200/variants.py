"""The quantizing kernel (one program a block, as it was when this ran: ``parts=1``) against a
variant whose program loops over every block of the run for one (layer, KV head) and side (grid
(LH, 2), so Triton can load block i + 1 while block i reduces), by warps and stages, on one
512-token chunk (Llama-3-8B K/V shape, bf16, int4 pool): ``variants.txt`` (``next.sh``'s call).
µs by ``triton.testing.do_bench``; every variant's bytes checked against the library kernel's.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/variants.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/variants.py --check-cpu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
import triton.language as tl
from split import timed_table  # this folder's split.py (the script's folder is on the path)

from ragcompress.kv.fast._pool_quant import _keys, _values, quantize_run
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool


@triton.jit
def _looped(
    k_ptr, v_ptr, src_t, kc_ptr, vc_ptr, ks_ptr, kz_ptr, vs_ptr, vz_ptr, bad_ptr,
    src, dst, count, LH, BS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    lh = tl.program_id(0).to(tl.int64)
    H: tl.constexpr = D // 2
    DC: tl.constexpr = D * BITS // 8
    t = tl.arange(0, BS)
    c = tl.arange(0, H)
    worst = 0
    for blk in tl.range(0, tl.cdiv(count, BS), num_stages=STAGES):
        ok = (blk * BS + t < count)[:, None]
        rows = (src + blk * BS + t).to(tl.int64)[:, None] * src_t + lh * D + c[None, :]
        slots = (dst + blk * BS + t).to(tl.int64)
        out = slots[:, None] * (LH * DC) + lh * DC + c[None, :]
        if tl.program_id(1) == 0:
            kat = ((dst // BS + blk) * LH + lh) * D + c
            bad = _keys(k_ptr, kc_ptr, ks_ptr, kz_ptr, rows, out, ok, kat, H, BITS)
        else:
            bad = _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, rows, out, ok, (slots * LH + lh) * 2, H, BITS)
        worst = tl.maximum(worst, bad)
    if worst > 0:
        tl.store(bad_ptr, 1)


def looped(
    pool: Any, k: torch.Tensor, v: torch.Tensor, run: tuple[int, int, int], warps: int, stages: int
) -> None:
    token, slot, count = run
    _, layers, kv_heads, d = k.shape
    grid: Any = (layers * kv_heads, 2)
    _looped[grid](
        k, v, k.stride(0), pool.keys, pool.values, pool.key_scale, pool.key_zero, pool.value_scale,
        pool.value_zero, pool.bad, token, slot, count, layers * kv_heads,
        BS=pool.block_size, D=d, BITS=pool.bits, STAGES=stages, num_warps=warps,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check-cpu", action="store_true", help="interpreted, small: equality only")
    args = p.parse_args()
    dev = "cpu" if args.check_cpu else "cuda"
    shape = (2, 2, 32, 16) if args.check_cpu else (32, 8, 128, 64)  # layers, kv heads, head dim, block
    layers, kvh, d, bs = shape
    n = 37 if args.check_cpu else 512
    k = torch.randn(n, layers, kvh, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)

    def pool() -> Int4ChunkPool:
        return Int4ChunkPool(layers, kvh, d, -(-n // bs), bs, torch.bfloat16, dev)

    ref = pool()
    quantize_run(ref, k, v, (0, 0, n), ref.bad)
    contenders: dict[str, Any] = {  # "library": the kernel of that call, one program a block
        f"library, {w} warps": (lambda p, w=w: quantize_run(p, k, v, (0, 0, n), p.bad, w, parts=1))
        for w in (2, 4)
    }
    for w in (2, 4, 8):
        for s in (1, 2, 3):
            contenders[f"looped, {w} warps, {s} stages"] = lambda p, w=w, s=s: looped(
                p, k, v, (0, 0, n), w, s
            )
    read = 2 * k.numel() * k.element_size()
    print(f"{n}-token chunk, {read / 1e6:.1f} MB of bf16 K/V")
    timed_table(contenders, pool, ref, read, args.check_cpu)


if __name__ == "__main__":
    main()
