"""Cold inserts into the int4 / int8 chunk pools, through torch (before) and the Triton kernel
(``ragcompress/kv/fast/_pool_quant.py``), beside the bf16 pool's copies, in one process.

Llama-3-8B's K/V shape (32 layers, 8 KV heads, 128 channels), bf16 chunks on the GPU (a 64-token
prefix and 512-token passages), a fresh pool per sample; ms to the GPU's end of
``pool.acquire(request)``, medians of ``--repeats`` (host ms beside it). ``kernel GB/s``: the
chunk bytes read plus the codes, scales and zeros written, over the kernel's wall time.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_quant_h200/int4_insert.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from ragcompress.kv.fast.packed import PackedChunk
from ragcompress.kv.fast.pool import ChunkPool
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool

LAYERS, KV_HEADS, HEAD_DIM, PREFIX, PASSAGE, BLOCK = 32, 8, 128, 64, 512, 64


class TorchInt4(Int4ChunkPool):
    _kernel = False  # the torch path, as before the kernel


class TorchInt8(Int8ChunkPool):
    _kernel = False


def request(ctx: int, seed: int) -> list[PackedChunk]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    sizes = [PREFIX] + [min(PASSAGE, ctx - s) for s in range(PREFIX, ctx, PASSAGE)]

    def rnd(n: int) -> torch.Tensor:
        shape = (n, LAYERS, KV_HEADS, HEAD_DIM)
        return torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)

    return [PackedChunk(rnd(n), rnd(n), n, 0) for n in sizes]


def insert(cls: type[ChunkPool], chunks: list[PackedChunk], reps: int) -> tuple[float, float, Any]:
    """Median (host ms, wall ms) of a fresh pool's ``acquire(chunks)``, and the last pool."""
    tokens = sum(c.num_tokens for c in chunks)
    blocks = sum(-(-c.num_tokens // BLOCK) for c in chunks)
    host, wall, pool = [], [], None
    for _ in range(reps):
        pool = None
        torch.cuda.empty_cache()
        pool = cls(LAYERS, KV_HEADS, HEAD_DIM, blocks, BLOCK, torch.bfloat16, "cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pool.acquire(chunks)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append((t1 - t0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    assert tokens <= pool.slots  # type: ignore[union-attr]
    return statistics.median(host), statistics.median(wall), pool


def pool_bytes(pool: Any) -> int:
    names = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")
    return sum(getattr(pool, n).numel() * getattr(pool, n).element_size() for n in names if hasattr(pool, n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,10240,32768,131072")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| context | pool | host ms | wall ms | kernel GB/s | same bytes as torch |")
    print("|---|---|---|---|---|---|")
    for ctx in (int(c) for c in args.contexts.split(",")):
        chunks = request(ctx, seed=ctx)
        read = sum(2 * c.keys.numel() * c.keys.element_size() for c in chunks)
        h, w, _ = insert(ChunkPool, chunks, args.repeats)
        print(f"| {ctx} | bf16 (copies) | {h:.3f} | {w:.3f} | {2 * read / w / 1e6:.0f} | |")
        for name, old, new in (("int4", TorchInt4, Int4ChunkPool), ("int8", TorchInt8, Int8ChunkPool)):
            ho, wo, ref = insert(old, chunks, args.repeats)
            hn, wn, got = insert(new, chunks, args.repeats)
            names = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")
            same = all(torch.equal(getattr(ref, n), getattr(got, n)) for n in names)
            moved = read + pool_bytes(got) * ctx // got.slots
            print(f"| {ctx} | {name} torch | {ho:.3f} | {wo:.3f} | | |")
            print(f"| {ctx} | {name} kernel | {hn:.3f} | {wn:.3f} | {moved / wn / 1e6:.0f} | {same} |")
            del ref, got
        del chunks
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
