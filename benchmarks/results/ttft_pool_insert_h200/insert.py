"""Where a cold insert into the chunk pool goes (``bench ttft``'s ``paged_insert_ms``: 1.2 / 3.0 /
29.3 ms at 10K / 32K / 128K in ``../ttft_placed_host_h200/after/``, ~3.5x its copy floor at 128K).

Llama-3-8B's K/V shape (32 layers, 8 KV heads, 128 channels), bf16, a 64-token prefix and
512-token passages, chunks already on the GPU (``PackedChunk``), per context:

* ``floor``: one copy of the context's keys and one of its values (two ``copy_`` calls);
* copy mechanics over the same chunks into adjacent slots, without the pool: a ``copy_`` a
  chunk and side (what the pool queues for a chunk whose blocks are one run), one
  ``torch._foreach_copy_``, one ``cudaMemcpyBatchAsync`` device-to-device (SM copies, and the
  copy engines with ``PreferOverlapWithCompute``);
* the pool: ``ChunkPool.acquire`` of the whole request into a fresh pool, and the bench's order
  (one pool sized for the longest context; 1K, 10K, 32K, 128K, each released before the next,
  so that 128K evicts the others), with the pool before this change (``old``: freed blocks
  appended a chunk at a time, a chunk over blocks that are not one run written through an index
  tensor) and after it (``new``: the free list sorted after an eviction, a plain copy a run).

ms: ``host`` until the call returns, ``wall`` until the GPU is done; medians of ``--repeats``.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_pool_insert_h200/insert.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from ragcompress.kv.fast import _batch_copy
from ragcompress.kv.fast.host import HostChunk
from ragcompress.kv.fast.packed import PackedChunk
from ragcompress.kv.fast.pool import ChunkPool, PoolEntry, PoolFullError, _tick

LAYERS, KV_HEADS, HEAD_DIM, PREFIX, PASSAGE, BLOCK = 32, 8, 128, 64, 512, 64
DEVICE = "cuda"  # --check-cpu: the CPU, 2 layers (the script's logic, not its numbers)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class OldPool(ChunkPool):
    """The pool's eviction and insert as they were before this change (tree ``123bb05``)."""

    def _evict_for(self, need: int) -> None:
        if need <= len(self._free):
            return
        idle = sorted((e for e in self._entries.values() if e.refs == 0), key=_tick)
        if need > len(self._free) + sum(len(e.blocks) for e in idle):
            raise PoolFullError("full")
        for e in idle:
            if need <= len(self._free):
                break
            del self._entries[e.key]
            self._free.extend(reversed(e.blocks))

    def _insert(self, key: Hashable, chunk: Any) -> PoolEntry:
        if isinstance(chunk, HostChunk):
            packed = chunk.to_packed(self.keys.device, self.compute_dtype)
        else:
            packed = chunk if isinstance(chunk, PackedChunk) else PackedChunk.from_chunk(chunk)
        n, bs = packed.num_tokens, self.block_size
        blocks = tuple(self._free.pop() for _ in range(self._blocks_for(packed)))
        if blocks == tuple(range(blocks[0], blocks[0] + len(blocks))):
            slots: Any = slice(blocks[0] * bs, blocks[0] * bs + n)
        else:
            idx = torch.tensor(blocks, device=self.keys.device)[:, None] * bs
            slots = (idx + torch.arange(bs, device=idx.device)).reshape(-1)[:n]
        dev, dt = self.keys.device, self.keys.dtype
        self.keys[slots] = packed.keys.to(device=dev, dtype=dt)
        self.values[slots] = packed.values.to(device=dev, dtype=dt)
        e = PoolEntry(key, blocks, n, bs, ref=weakref.ref(chunk))
        self._entries[key] = e
        return e


def request(ctx: int, seed: int) -> list[PackedChunk]:
    """A prefix and the passages of a ``ctx``-token context, random bf16 on the GPU."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    sizes = [PREFIX] + [min(PASSAGE, ctx - s) for s in range(PREFIX, ctx, PASSAGE)]

    def rnd(n: int) -> torch.Tensor:
        shape = (n, LAYERS, KV_HEADS, HEAD_DIM)
        return torch.randn(shape, generator=g, device=DEVICE, dtype=torch.bfloat16)

    return [PackedChunk(rnd(n), rnd(n), n, 0) for n in sizes]


def timed(
    fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] = lambda: None
) -> tuple[float, float]:
    """Median (host ms, wall ms) of ``fn`` over ``repeats``, ``setup`` untimed before each."""
    host, wall = [], []
    for _ in range(repeats):
        setup()
        sync()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        wall.append((t2 - t0) * 1e3)
    return statistics.median(host), statistics.median(wall)


def batch_d2d(dst: list[torch.Tensor], src: list[torch.Tensor], flags: int) -> Callable[[], None]:
    """One ``cudaMemcpyBatchAsync`` of every (dst, src) pair, device to device."""
    rt = _batch_copy.runtime()
    assert rt is not None, "no cudaMemcpyBatchAsync in this runtime"
    d = np.array([t.data_ptr() for t in dst], dtype=np.uint64)
    s = np.array([t.data_ptr() for t in src], dtype=np.uint64)
    n = np.array([t.numel() * t.element_size() for t in src], dtype=np.uint64)
    dev = torch.cuda.current_device()
    loc = _batch_copy._Location(_batch_copy._DEVICE, dev)
    attr = _batch_copy._Attributes(_batch_copy._STREAM_ORDER, loc, loc, flags)

    def run() -> None:
        args: list[Any] = [
            d.ctypes.data_as(ctypes.c_void_p),
            s.ctypes.data_as(ctypes.c_void_p),
            n.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_size_t(len(n)),
            ctypes.byref(attr),
            (ctypes.c_size_t * 1)(0),
            ctypes.c_size_t(1),
        ]
        if rt.version < 13000:
            args.append(ctypes.byref(ctypes.c_size_t(0)))
        rc = int(rt.fn(*args, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        if rc != 0:
            rt.last_error()
            raise RuntimeError(f"cudaMemcpyBatchAsync: error {rc}")

    return run


def mechanics(
    chunks: list[PackedChunk], store: tuple[torch.Tensor, torch.Tensor], reps: int
) -> dict[str, Any]:
    """Copies of every chunk into adjacent slots of ``store`` (keys, values), four ways."""
    dst, src, at = [], [], 0
    for c in chunks:
        n = c.num_tokens
        dst += [store[0][at : at + n], store[1][at : at + n]]
        src += [c.keys, c.values]
        at += n
    flat_k = torch.empty_like(store[0][:at])
    flat_v = torch.empty_like(store[1][:at])

    def floor() -> None:
        store[0][:at].copy_(flat_k)
        store[1][:at].copy_(flat_v)

    def loop() -> None:
        for a, b in zip(dst, src, strict=True):
            a.copy_(b)

    out = {"bytes GB": round(2 * flat_k.numel() * flat_k.element_size() / 1e9, 2)}
    out["floor (one copy a side)"] = timed(floor, reps)
    out["copy_ a chunk and side"] = timed(loop, reps)
    out["torch._foreach_copy_"] = timed(lambda: torch._foreach_copy_(dst, src), reps)
    batched = (("cudaMemcpyBatchAsync, SMs", 0), ("cudaMemcpyBatchAsync, copy engines", 1))
    for name, flags in batched[: 2 * (DEVICE == "cuda")]:
        try:
            out[name] = timed(batch_d2d(dst, src, flags), reps)
        except Exception as exc:  # an older runtime: said, the rest kept
            out[name] = f"{type(exc).__name__}: {exc}"
    check = all(torch.equal(a, b) for a, b in zip(dst, src, strict=True))
    out["copies equal"] = check
    return out


def pools(sets: dict[int, list[PackedChunk]], cap: int, reps: int) -> dict[str, dict[str, Any]]:
    """``acquire`` of each context's request, fresh pool and the bench's order, old and new."""
    blocks = -(-(cap + (cap // PASSAGE + 1) * BLOCK) // BLOCK)
    out: dict[str, dict[str, Any]] = {}
    for name, cls in (("old", OldPool), ("new", ChunkPool)):
        made: list[Any] = []

        def fresh(cls: type[ChunkPool] = cls, made: list[Any] = made) -> None:
            made.clear()
            made.append(cls(LAYERS, KV_HEADS, HEAD_DIM, blocks, BLOCK, torch.bfloat16, DEVICE))

        row: dict[str, Any] = {}
        for ctx, chunks in sets.items():
            row[f"fresh {ctx}"] = timed(lambda c=chunks, m=made: m[0].acquire(c), reps, fresh)
        seq: dict[int, list[tuple[float, float]]] = {ctx: [] for ctx in sets}
        runs: dict[int, list[int]] = {ctx: [] for ctx in sets}
        for _ in range(reps):
            fresh()
            pool = made[0]
            for ctx, chunks in sets.items():
                sync()
                t0 = time.perf_counter()
                lease = pool.acquire(chunks)
                t1 = time.perf_counter()
                sync()
                seq[ctx].append(((t1 - t0) * 1e3, (time.perf_counter() - t0) * 1e3))
                runs[ctx].append(sum(_one_run(e.blocks) for e in lease.entries))
                ok = all(
                    torch.equal(pool.keys[s], c.keys) and torch.equal(pool.values[s], c.values)
                    for e, c in zip(lease.entries, chunks, strict=True)
                    for s in (_slots(e),)
                )
                assert ok, f"{name}: the pool's slots differ from the chunks at {ctx}"
                pool.release(lease)
        for ctx in sets:
            hs = [h for h, _ in seq[ctx]]
            ws = [w for _, w in seq[ctx]]
            row[f"bench order {ctx}"] = (statistics.median(hs), statistics.median(ws))
            row[f"bench order {ctx}: chunks in one run"] = f"{min(runs[ctx])} of {len(sets[ctx])}"
        out[name] = row
        made.clear()
        torch.cuda.empty_cache()
    return out


def _one_run(blocks: tuple[int, ...]) -> int:
    return int(blocks == tuple(range(blocks[0], blocks[0] + len(blocks))))


def _slots(e: PoolEntry) -> torch.Tensor:
    idx = torch.tensor(e.blocks, device=DEVICE)[:, None] * e.block_size
    return (idx + torch.arange(e.block_size, device=DEVICE)).reshape(-1)[: e.num_tokens]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,10240,32768,131072")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check-cpu", action="store_true", help="the CPU, 2 layers: the script's logic only")
    args = p.parse_args()
    if args.check_cpu:
        global DEVICE, LAYERS
        DEVICE, LAYERS = "cpu", 2
    ctxs = [int(c) for c in args.contexts.split(",")]
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'}, torch {torch.__version__}")
    sets = {ctx: request(ctx, seed=i) for i, ctx in enumerate(ctxs)}
    cap = max(ctxs)
    shape = (cap + PASSAGE, LAYERS, KV_HEADS, HEAD_DIM)
    store = tuple(torch.empty(shape, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    print("\n## copy mechanics (host ms, wall ms)")
    for ctx, chunks in sets.items():
        print(f"### {ctx} tokens, {len(chunks)} chunks")
        for k, v in mechanics(chunks, store, args.repeats).items():  # type: ignore[arg-type]
            print(f"| {k} | {_fmt(v)} |")
    del store
    torch.cuda.empty_cache()
    print("\n## ChunkPool.acquire of a request (host ms, wall ms)")
    res = pools(sets, cap, args.repeats)
    print("| | " + " | ".join(res) + " |")
    for k in res["old"]:
        print(f"| {k} | " + " | ".join(_fmt(r[k]) for r in res.values()) + " |")


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return f"{v[0]:.3f} / {v[1]:.3f}"
    return str(v)


if __name__ == "__main__":
    main()
