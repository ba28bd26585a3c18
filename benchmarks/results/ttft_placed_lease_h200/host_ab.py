"""A placed request's host work before and after the one-pass lease and the one-getter deltas
(``ChunkPool._all_resident``, ``paged_engine.item_deltas``), alternating in one process on the
same chunk objects: the pool's ``acquire`` + ``release``, the items' deltas, the table rows, and
the three together (what ``PagedFastGenerator._place`` runs for a resident request). Small
tiny-shape chunks on the CPU: the host work does not depend on the chunks' bytes.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_placed_lease_h200/host_ab.py --before DIR

``DIR`` holds the tree before the change (its ``ragcompress/kv/fast/pool.py`` and
``paged_engine.py`` are loaded as the "before" modules). Min of 5 rounds x 3 repeats x 20 calls
each, in µs. A diagnostic script kept as a record, not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import timeit
from pathlib import Path
from typing import Any

import torch

from ragcompress.kv.fast import paged_engine as new_pe
from ragcompress.kv.fast import pool as new_pool
from ragcompress.kv.fast.packed import PackedChunk

CASES = ((10240, 512), (32768, 512), (131072, 512), (131072, 256))


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _old_deltas(items: list[Any]) -> tuple[list[int], int, int]:
    """The loop ``_place`` ran before (attributes read one by one)."""
    deltas, pos, tokens = [], 0, 0
    for c in items:
        deltas.append(pos - int(c.base_offset))
        pos += int(c.length)
        tokens += int(c.num_tokens)
    return deltas, pos, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="root of the tree before the change")
    args = ap.parse_args()
    fast = args.before / "ragcompress" / "kv" / "fast"
    old_pool, old_pe = _load("pool_before", fast / "pool.py"), _load("paged_engine_before", fast / "paged_engine.py")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| context | items | place before | place after | acquire before | acquire after | deltas before | deltas after |")
    print("|---|---|---|---|---|---|---|---|")
    for ctx, size in CASES:
        n = (ctx - 64) // size

        def chunk(t: int, off: int) -> PackedChunk:
            return PackedChunk(torch.zeros(t, 2, 2, 16), torch.zeros(t, 2, 2, 16), length=t, base_offset=off)

        items = [chunk(64, 0)] + [chunk(size, 64) for _ in range(n)]
        po = old_pool.ChunkPool(2, 2, 16, num_blocks=ctx // 64 + 64, block_size=64)
        pn = new_pool.ChunkPool(2, 2, 16, num_blocks=ctx // 64 + 64, block_size=64)

        def place(pool: Any, pe: Any, deltas_of: Any) -> list[Any]:
            deltas, _, _ = deltas_of(items)
            lease = pool.lease_request(items)
            rows = [pe.table_rows(g, deltas) for g in lease.tables]
            pool.release_request(lease)
            return rows

        before, after = place(po, old_pe, _old_deltas), place(pn, new_pe, new_pe.item_deltas)
        assert all((a == b).all() for a, b in zip(before, after, strict=True)), "the rows differ"
        assert _old_deltas(items) == new_pe.item_deltas(items)
        cases = {
            "place before": lambda: place(po, old_pe, _old_deltas),
            "place after": lambda: place(pn, new_pe, new_pe.item_deltas),
            "acquire before": lambda: po.release(po.acquire(items)),
            "acquire after": lambda: pn.release(pn.acquire(items)),
            "deltas before": lambda: _old_deltas(items),
            "deltas after": lambda: new_pe.item_deltas(items),
        }
        best: dict[str, float] = {}
        for _ in range(5):  # rounds alternate the contenders, so a slow spell hits each
            for name, f in cases.items():
                t = min(timeit.repeat(f, number=20, repeat=3)) / 20
                best[name] = min(best.get(name, float("inf")), t)
        cells = " | ".join(f"{best[k] * 1e6:.1f}" for k in cases)
        print(f"| {ctx} | {n + 1} of {size} | {cells} |")


if __name__ == "__main__":
    main()
