"""The quantizing kernel alone on one 512-token chunk (Llama-3-8B K/V shape, bf16, int4 pool),
by warps a program: µs (``triton.testing.do_bench``), GB/s of the chunk's bytes read, and whether
its bytes equal the 8-warp kernel's.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/warps.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import torch
import triton

from ragcompress.kv.fast._pool_quant import quantize_run
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool

NAMES = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")
k = torch.randn(512, 32, 8, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
read = 2 * k.numel() * k.element_size()
ref = None
print(f"{torch.cuda.get_device_name()}: one 512-token chunk, {read / 1e6:.0f} MB of bf16 K/V")
print("| warps | µs | GB/s read | equal to 8 warps |")
print("|---|---|---|---|")
for warps in (8, 4, 2, 1):
    pool = Int4ChunkPool(32, 8, 128, 8, 64, torch.bfloat16, "cuda")
    ms = triton.testing.do_bench(lambda p=pool, w=warps: quantize_run(p, k, v, (0, 0, 512), p.bad, w))
    if ref is None:
        ref = pool
    same = all(torch.equal(getattr(pool, n), getattr(ref, n)) for n in NAMES)
    print(f"| {warps} | {ms * 1e3:.1f} | {read / ms / 1e6:.0f} | {same} |")
