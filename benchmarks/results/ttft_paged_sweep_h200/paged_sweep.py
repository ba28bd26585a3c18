"""How the library's paged context kernel (v6, ``_paged.py``) cuts its work, swept: rows a
program holds, warps, pipeline stages and splits (one wave, or two programs an SM resident at
once), one layer at 32K and 128K on the Llama-3-8B and Qwen2.5-7B heads. Prepared for the next
device call (not yet run on a GPU).

At 128K the paged pass runs ~2.3x the contiguous pass over the same keys, and at 32K ~1.5x: one
128-row program of 8 warps an SM leaves the SM waiting on each block's loads. Two resident
programs an SM (64 rows, 4 warps, twice the splits) may hide that latency where the pipeliner
cannot; the sweep also times the realistic table (a chunk's blocks consecutive in the pool, as
a fresh pool inserts them) beside the shuffled one the earlier A/Bs used.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_sweep_h200/paged_sweep.py               # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                          # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch
import triton

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import partials
from ragcompress.kv.fast._paged import _paged_kernel
from ragcompress.kv.fast.paged import paged_context_reference

_V2 = Path(__file__).resolve().parents[1] / "ttft_paged_v2_h200" / "paged_v2_ab.py"
_spec = importlib.util.spec_from_file_location("paged_v2_ab", _V2)
assert _spec is not None and _spec.loader is not None
v2ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v2ab)

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


def run(
    q: Any, pk: Any, pv: Any, table: Any, inv: Any, bs: int, splits: int, cfg: tuple[int, int, int]
) -> Any:
    """The library kernel with ``cfg`` = (rows a program, warps, stages)."""
    block_m, warps, stages = cfg
    d, kvh = q.shape[2], pk.shape[1]
    g, ng, o, lse = partials("paged_sweep", q, pk, pv, splits)
    _paged_kernel[(splits, kvh, triton.cdiv(ng, block_m))](
        q.contiguous(), pk, pv, table, inv, o, lse, pk.stride(0), pv.stride(0), ng, d**-0.5 * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=bs, BLOCK_M=block_m, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse


def consecutive(table: Any) -> Any:
    """The same table with block ``i`` at pool block ``i`` (chunks inserted as runs)."""
    t = table.clone()
    t[1:, 0] = torch.arange(t.shape[0] - 1, device=t.device, dtype=t.dtype)
    return t


def check_cpu() -> None:
    for n, h, kvh, d, splits in ((3, 4, 2, 16, 3), (33, 4, 2, 16, 2)):
        q, pk, pv, table, inv = v2ab.case(16 * 13, n, h, kvh, d, 16, "cpu", torch.float32)
        for tab in (table, consecutive(table)):
            want_o, _ = paged_context_reference(q, pk, pv, tab, inv, 16, d**-0.5)
            for cfg in ((64, 4, 3), (128, 8, 2)):
                o, lse = run(q, pk, pv, tab, inv, 16, splits, cfg)
                torch.testing.assert_close(
                    v2ab.merged(o, lse, splits, n, h, kvh, d), want_o, atol=1e-4, rtol=1e-4
                )
    print("cpu check: every configuration's partials merge to the reference")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for ctx in (32768, 131072):
        for name, (h, kvh, d) in SHAPES.items():
            q, pk, pv, table, inv = v2ab.case(ctx, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
            ng = 32 * (h // kvh)
            print(f"\n## {name}, {ctx // 1024}K keys")
            print("| table | rows a program | warps | stages | splits | programs | us |")
            print("|---|---|---|---|---|---|---|")
            for tname, tab in (("shuffled", table), ("consecutive", consecutive(table))):
                for block_m, warps in ((128, 8), (64, 4), (64, 8)):
                    wave = max(1, sms // (kvh * -(-ng // block_m)))
                    for splits in sorted({wave, 2 * wave}):
                        for stages in (2, 3):
                            args = (q, pk, pv, tab, inv, 64, splits, (block_m, warps, stages))
                            cell = time_one(do_bench_cudagraph, args)
                            progs = splits * kvh * -(-ng // block_m)
                            print(
                                f"| {tname} | {block_m} | {warps} | {stages} | {splits} | {progs} | {cell} |"
                            )


def time_one(bench: Any, args: tuple[Any, ...]) -> str:
    try:
        return f"{bench(lambda: run(*args)) * 1e3:.1f}"
    except Exception as exc:  # out of resources at a configuration
        return f"failed: {type(exc).__name__}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
