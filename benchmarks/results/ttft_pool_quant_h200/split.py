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

A diagnostic script kept as the record of one device call; not part of the library. The call
ran its own copy of the split kernel; the library took it unchanged (``_quantize_run``'s
``SUB``, ``quantize_run(..., parts=)``), so the script now sweeps the library's ``parts``
(``parts=1``: the kernel before, one program a block).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton

from ragcompress.kv.fast._pool_quant import quantize_run
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool

NAMES = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")


def timed_table(contenders: dict[str, Any], pool: Any, ref: Any, read: int, cpu: bool) -> None:
    """A markdown row per contender (a callable filling a fresh ``pool()``): µs, GB/s of the
    ``read`` bytes, and whether its bytes equal ``ref``'s (the CPU: equality only). Also
    ``variants.py``'s table."""
    print("| kernel | µs | GB/s read | equal |\n|---|---|---|---|")
    for name, fn in contenders.items():
        got = pool()
        fn(got)
        same = all(torch.equal(getattr(got, x), getattr(ref, x)) for x in NAMES)
        if cpu:
            print(f"| {name} | | | {same} |")
            continue
        ms = triton.testing.do_bench(lambda g=got, f=fn: f(g))
        print(f"| {name} | {ms * 1e3:.1f} | {read / ms / 1e6:.0f} | {same} |")


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
            f"library, {w} warps": (lambda q, w=w: quantize_run(q, k, v, (0, 0, n), q.bad, w, parts=1))
            for w in (2, 4)
        }
        for s in subs:
            for w in (1, 2, 4):
                contenders[f"split {s}, {w} warps"] = lambda q, s=s, w=w: quantize_run(
                    q, k, v, (0, 0, n), q.bad, w, parts=s
                )
        print(f"\n{cls.__name__}")
        timed_table(contenders, pool, ref, read, args.check_cpu)


if __name__ == "__main__":
    main()
