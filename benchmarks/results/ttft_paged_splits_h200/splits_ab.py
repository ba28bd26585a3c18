"""The layer's attention (the paged context pass, then the own pass + merge) at each number of
context splits, against the library's choice (one wave: ``PAGED.splits``), alternating in one
process.

At 1K the library cuts 16 table blocks into 16 splits, a block a program, and the own pass +
merge then reads 16 partials a query row. Fewer splits mean longer programs but fewer partials
to write and read back. This sweeps the splits at short and middle contexts to see whether
one wave is the right split there.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_paged_splits_h200/splits_ab.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <the same> --check-cpu

µs by ``do_bench_cudagraph`` (a CUDA graph of the two launches), best of 3 alternating rounds;
one layer, 32 question tokens, a region of 36 own slots with 32 used. A diagnostic script; not
part of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, contender_rows, record_module

from ragcompress.kv.fast.waves import PAGED

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")
# the fused-attention record's case (queries, pool, table, own slots) and its library pair (the
# paged pass, then the own pass + merge), which this sweep runs at each split count
fused = record_module("fused_attend_ab", RESULTS / "ttft_fused_attend_h200" / "fused_attend_ab.py")
attend = fused.library


def case(ctx: int, h: int, kvh: int, d: int, dev: str, dt: Any, **kw: Any) -> tuple[Any, ...]:
    """One layer at ``ctx`` keys with 32 question tokens (``t`` to change), as the fused record
    builds it."""
    return tuple(fused.case(ctx, kw.pop("t", 32), h, kvh, d, dev, dt, **kw))


def check_cpu() -> None:
    """Every split count gives the same attention (interpreted, fp32)."""
    c = case(64 + 1024, 4, 2, 16, "cpu", torch.float32, t=5, used=9, chunk=256)
    want = attend(*c, 1, 0.3)
    for s in (2, 3, 8, 16, 17):
        torch.testing.assert_close(attend(*c, s, 0.3), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every split count gives the one-split attention")


def gpu(contexts: list[int]) -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print("| shape | context | contender | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    for ctx in contexts:
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = case(ctx, h, kvh, d, "cuda", torch.bfloat16)
            blocks = int(c[3].shape[0]) - 1
            sp = PAGED.splits(sms, 32 * (h // kvh), kvh, blocks)
            runs: dict[str, Any] = {}
            for s in [sp] + [s for s in (1, 2, 4, 6, 8, 12, 16, 24, 32) if s != sp and s <= blocks]:
                fn = partial(attend, *c, s, d**-0.5)
                runs[f"{s} splits" + (" (library)" if s == sp else "")] = lambda fn=fn: (fn(), None, 0)
            contender_rows(f"{shape} | {ctx}", runs, lambda out, _lse, _sp: out)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-cpu", action="store_true", help="interpreted, fp32: the splits agree")
    ap.add_argument("--contexts", default="1024,2048,4096,10240,32768", help="keys, comma-separated")
    args = ap.parse_args()
    check_cpu() if args.check_cpu else gpu([int(x) for x in args.contexts.split(",")])
