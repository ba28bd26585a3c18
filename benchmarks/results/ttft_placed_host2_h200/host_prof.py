"""Where a placed request's host time goes on the device's host: ``PagedFastGenerator.load`` of
resident chunks (the tiny test model: the host work depends on the number of chunks, not on
their bytes) on the GPU and, on the same host, with the pool on the CPU; each part of it timed
alone, and a cProfile of the whole. A pure-Python loop first, to compare the host's single-thread
speed with another machine's.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_placed_host2_h200/host_prof.py [--chunks 2,20,256]

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import time
import timeit
from typing import Any

import torch

from ragcompress.kv.fast import PackedChunk
from ragcompress.kv.fast.paged_engine import PagedFastGenerator, item_deltas, table_rows
from ragcompress.kv.fast.pool import ChunkPool
from tests.conftest import make_tiny_llama


def us(fn: Any, reps: int = 300) -> float:
    """Median µs of ``fn`` over ``reps`` calls (CUDA synchronized before each, not timed)."""
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def engine(model: Any, n: int, dev: str) -> tuple[PagedFastGenerator, PackedChunk, list[PackedChunk]]:
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)

    def chunk(t: int, base: int) -> PackedChunk:
        return PackedChunk(torch.randn(t, *shape, device=dev), torch.randn(t, *shape, device=dev), t, base)

    prefix, chunks = chunk(64, 0), [chunk(512, 64) for _ in range(n)]
    cap = 64 + 512 * n
    pool = ChunkPool.for_model(model, cap + 64 * (n + 2), 64)
    paged = PagedFastGenerator(model, capacity=cap, max_question=32, max_new_tokens=4, buckets=(32,), pool=pool)
    paged.load(prefix, chunks)
    return paged, prefix, chunks


def parts(paged: PagedFastGenerator, prefix: PackedChunk, chunks: list[PackedChunk]) -> dict[str, float]:
    """µs of load() and of each of its parts alone (the chunks resident)."""
    pool = paged.pool
    assert pool is not None
    items = [prefix, *chunks]
    deltas = item_deltas(items)[0]
    lease = pool.lease_request(items)
    groups = lease.tables
    pool.release_request(lease)
    rows = [table_rows(g, deltas) for g in groups]

    def lease_release() -> None:
        pool.release_request(pool.lease_request(items))

    return {
        "load()": us(lambda: paged.load(prefix, chunks)),
        "item_deltas": us(lambda: item_deltas(items)),
        "lease + release": us(lease_release),
        "table_rows": us(lambda: [table_rows(g, deltas) for g in groups]),
        "table.write": us(lambda: [t.write(r) for t, r in zip(paged.tables, rows, strict=True)]),
        "buffer.place": us(lambda: paged.buffer.place(10, 10)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="2,20,256")
    args = ap.parse_args()
    loop = min(timeit.repeat("sum(i * i for i in range(100000))", number=10, repeat=5)) / 10 * 1e3
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}; pure-Python loop {loop:.2f} ms")  # fmt: skip
    counts = [int(c) for c in args.chunks.split(",")]
    devs = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    model = make_tiny_llama(512, seed=3)
    table: dict[tuple[str, int], dict[str, float]] = {}
    for dev in devs:
        m = model.to(dev)
        for n in counts:
            paged, prefix, chunks = engine(m, n, dev)
            table[dev, n] = parts(paged, prefix, chunks)
            if dev == devs[-1] and n == counts[-1]:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(200):
                    paged.load(prefix, chunks)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(16)
                profile = out.getvalue()
    cols = [f"{d} {n}" for d, n in table]
    print("\n| µs, chunks resident | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for part in next(iter(table.values())):
        print(f"| {part} | " + " | ".join(f"{v[part]:.1f}" for v in table.values()) + " |")
    print(f"\n## cProfile of 200 loads ({devs[-1]}, {counts[-1]} chunks)\n\n```\n{profile.strip()}\n```")


if __name__ == "__main__":
    main()
