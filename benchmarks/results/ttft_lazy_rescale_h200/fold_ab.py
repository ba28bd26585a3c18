"""The context passes before and after ``base2_weights`` (the scale folded into the exponent's
multiply-add, the row max taken over the raw products), alternating in one process: the
contiguous pass, the bf16 paged pass and the int4 paged pass, one layer, 32 question tokens,
the pool as a fresh one fills it (``../ttft_paged_tiles_h200/paged_tiles.py``'s ``case``; int4
codes as ``../ttft_paged_int4_h200/paged_int4_ab.py`` quantizes them).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_lazy_rescale_h200/fold_ab.py --before DIR
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <the same> --before DIR --check-cpu

``DIR`` holds the tree before the change (its ``ragcompress/kv/fast/_context.py``, ``_paged.py``
and ``_paged_int4.py`` are loaded as the "before" kernels). µs by ``do_bench_cudagraph``, the
best of 3 alternating rounds; error: relative L2 of the merged output, after against before.
A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, record_module

from ragcompress.kv.fast._context import context_pass
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast._paged_int4 import paged_int4_context
from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED, PAGED_INT4

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")
int4ab = record_module("paged_int4_ab", RESULTS / "ttft_paged_int4_h200" / "paged_int4_ab.py")


def contenders(before: Path, c: dict[str, Any], sms: int) -> dict[str, Any]:
    fast = before / "ragcompress" / "kv" / "fast"
    old_ctx = record_module("before_context", fast / "_context.py")
    old_paged = record_module("before_paged", fast / "_paged.py", ("ragcompress.kv.fast._context", "before_context"))
    old_int4 = record_module("before_paged_int4", fast / "_paged_int4.py")
    q, kc, vc, pk, pv, tab, inv = c["q"], c["kc"], c["vc"], c["pk"], c["pv"], c["blocks"], c["inv"]
    kvh, d = pk.shape[1], q.shape[2]
    ng = q.shape[0] * (q.shape[1] // kvh)
    sc = d**-0.5
    spc = CONTIGUOUS.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // spc // 128) * 128
    start = torch.arange(spc, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    spp = PAGED.splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    sp4 = PAGED_INT4.splits(sms, ng, kvh, int(tab.shape[0]) - 1)
    pool = c["int4"]
    return {
        "contiguous": (spc, lambda: old_ctx.context_pass(q, kc, vc, start, used, sc),
                       lambda: context_pass(q, kc, vc, start, used, sc)),
        "paged bf16": (spp, lambda: old_paged.paged_context(q, pk, pv, tab, inv, 64, spp, sc),
                       lambda: paged_context(q, pk, pv, tab, inv, 64, spp, sc)),
        "paged int4": (sp4, lambda: old_int4.paged_int4_context(q, pool, tab, inv, 64, sp4, sc),
                       lambda: paged_int4_context(q, pool, tab, inv, 64, sp4, sc)),
    }  # fmt: skip


def case(ctx: int, h: int, kvh: int, d: int, dev: str, dt: Any) -> dict[str, Any]:
    c = tiles.case(ctx, 32 if dev == "cuda" else 3, h, kvh, d, dev, dt)
    c["int4"] = tuple(int4ab.quantized_pool(c["pk"], c["pv"], 64, d // 2)[:6])
    return c


def err(a: Any, b: Any, sp: int, c: dict[str, Any]) -> float:
    n, h, d = c["q"].shape
    kvh = c["pk"].shape[1]
    x, y = tiles.merged(*a, sp, n, h, kvh, d).float(), tiles.merged(*b, sp, n, h, kvh, d).float()
    return float((x - y).norm() / y.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="root of the tree before the change")
    ap.add_argument("--check-cpu", action="store_true", help="interpreted, fp32: after equals before")
    args = ap.parse_args()
    if args.check_cpu:
        c = case(64 + 512 * 3 + 100, 4, 2, 16, "cpu", torch.float32)
        for name, (sp, old, new) in contenders(args.before, c, 4).items():
            e = err(new(), old(), sp, c)
            assert e < 1e-5, (name, e)
            print(f"ok {name}: rel err {e:.1e}")
        return
    from triton.testing import do_bench_cudagraph

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | pass | before µs | after µs | after / before | rel err |\n|---|---|---|---|---|---|---|")
    for ctx in (10240, 32768, 131072):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = case(ctx, h, kvh, d, "cuda", torch.bfloat16)
            for name, (sp, old, new) in contenders(args.before, c, sms).items():
                e = err(new(), old(), sp, c)
                best = [float("inf"), float("inf")]
                for _ in range(3):
                    for i, fn in enumerate((old, new)):
                        best[i] = min(best[i], do_bench_cudagraph(fn) * 1e3)
                r = best[1] / best[0]
                print(f"| {shape} | {ctx} | {name} | {best[0]:.1f} | {best[1]:.1f} | {r:.3f} | {e:.1e} |", flush=True)
            del c
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
