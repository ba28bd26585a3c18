"""Chunks entering an int4/int8 pool (ragcompress/kv/fast/_pool_quant.py, pool_int4.py): the Triton
kernel, interpreted on the CPU, stores exactly what the torch path stores (codes, key scales and
zeros per block and channel, value scales and zeros per token and half head) over blocks that
are not one run, a ragged last block and a constant channel; a NaN or an infinity is flagged,
and the pool then refuses the request's new chunks and keeps its blocks. The compiled kernel on
CUDA: tests/gpu/test_fast_paged_int4_gpu.py."""

from __future__ import annotations

import pytest
import torch

from ragcompress.kv.fast.packed import PackedChunk
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool
from tests.support.interpret import run_interpreted

_CHECK = """
import torch
from ragcompress.kv.fast._pool_quant import quantize_run
from ragcompress.kv.fast.pool import block_runs
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool
from tests.kv.test_fast_pool_quant import chunk

SHAPE = {"layers": 2, "kv_heads": 2, "head_dim": 32, "num_blocks": 6, "block_size": 16}
NAMES = ("keys", "values", "key_scale", "key_zero", "value_scale", "value_zero")
for cls in (Int4ChunkPool, Int8ChunkPool):
    for dtype, bs in ((torch.float32, 16), (torch.bfloat16, 16), (torch.float32, 8)):
        c = chunk(37, 3, dtype)
        blocks = (2, 4, 5) if bs == 16 else (2, 3, 9, 10, 11)  # blocks of 8: not half a head
        runs = block_runs(blocks, 37, bs)
        shape = {**SHAPE, "block_size": bs, "num_blocks": 12}
        ref, got = cls(**shape, dtype=dtype), cls(**shape, dtype=dtype)
        ref._write(c, blocks, runs)  # the torch path
        for run in runs:
            quantize_run(got, c.keys, c.values, run, got.bad)
        diff = [n for n in NAMES if not torch.equal(getattr(got, n), getattr(ref, n))]
        print(cls.__name__, str(dtype), bs, "differ:", diff, "bad:", int(got.bad))


class Kernel(Int4ChunkPool):
    _kernel = True  # the CUDA path's entry, interpreted here


for side in ("keys", "values"):
    for value in (float("nan"), float("inf")):
        pool = Kernel(**SHAPE)
        good, bad = chunk(20, 1), chunk(37, 2)
        getattr(bad, side)[36, 1, 0, 3] = value
        kept = pool.acquire([chunk(16, 5)])
        free = pool.free_blocks
        try:
            pool.acquire([good, bad])
            print("accepted")
        except ValueError as err:
            left = pool.free_blocks == free and pool.resident(good) is None and pool.resident(bad) is None
            print(side, value, "refused" if "non-finite" in str(err) else err, "pool as before:", left)
        pool.acquire([good])  # the flag was cleared: a good chunk enters
        print("then accepted:", pool.resident(good) is not None and int(pool.bad) == 0)

# an insert that fails after a non-finite chunk was written: that chunk is still checked
pool, nan, boom = Kernel(**SHAPE), chunk(20, 1), chunk(20, 2)
nan.keys[0, 0, 0, 0] = float("nan")
real = pool._write
pool._write = lambda p, b, r: (_ for _ in ()).throw(RuntimeError("boom")) if p is boom else real(p, b, r)
try:
    pool.acquire([nan, boom])
except ValueError as err:
    gone = pool.resident(nan) is None
    print("failed insert:", "non-finite" in str(err), gone, int(pool.bad), pool.free_blocks)
"""


def chunk(n: int, seed: int, dtype: torch.dtype = torch.float32) -> PackedChunk:
    """(n, 2 layers, 2 KV heads, 32) keys and values; one key channel constant (scale 0)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 2, 2, 32, generator=g) * 3
    k[:, 0, 1, 5] = 7.0
    v = torch.randn(n, 2, 2, 32, generator=g)
    return PackedChunk(k.to(dtype), v.to(dtype), length=n, base_offset=0)


def test_the_kernel_stores_what_the_torch_path_stores() -> None:
    out = run_interpreted(_CHECK).splitlines()
    assert out[:6] == [
        f"{cls} {dtype} differ: [] bad: 0"
        for cls in ("Int4ChunkPool", "Int8ChunkPool")
        for dtype in ("torch.float32 16", "torch.bfloat16 16", "torch.float32 8")
    ]
    for side in ("keys", "values"):
        for value in ("nan", "inf"):
            assert f"{side} {value} refused pool as before: True" in out
    assert out.count("then accepted: True") == 4 and "accepted" not in out
    assert out[-1] == "failed insert: True True 0 6"


@pytest.mark.parametrize("cls", [Int4ChunkPool, Int8ChunkPool])
def test_a_refused_chunk_takes_no_blocks(cls: type[Int4ChunkPool]) -> None:
    """The torch path (CPU) refuses a non-finite chunk before writing; its blocks go back."""
    pool = cls(layers=2, kv_heads=2, head_dim=32, num_blocks=6, block_size=16)
    good, bad = chunk(20, 1), chunk(37, 2)
    bad.values[3, 0, 1, 0] = float("nan")
    free = pool.free_blocks
    with pytest.raises(ValueError, match="non-finite"):
        pool.acquire([good, bad])
    assert pool.resident(bad) is None and pool.free_blocks + 2 == free  # good entered, unleased
    pool.acquire([chunk(96, 3)])  # every block: evicts good, and the bad chunk's are free
    assert pool.free_blocks == 0


@pytest.mark.parametrize("parts", [0, 3, 6])
def test_a_block_is_cut_into_a_power_of_two_of_parts(parts: int) -> None:
    pytest.importorskip("triton")
    from ragcompress.kv.fast._pool_quant import quantize_run

    pool = Int4ChunkPool(layers=2, kv_heads=2, head_dim=32, num_blocks=6, block_size=16)
    c = chunk(20, 1)
    with pytest.raises(ValueError, match="power of two"):
        quantize_run(pool, c.keys, c.values, (0, 0, 20), pool.bad, parts=parts)
