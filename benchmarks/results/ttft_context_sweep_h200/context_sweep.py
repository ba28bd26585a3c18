"""The contiguous context pass (``_context.py``) and the int4 paged pass (``_paged_int4.py``)
over the work splits that won for the bf16 paged pass (``../ttft_paged_sweep_h200/``: 64-row
programs of one warpgroup, two an SM, 9-30% faster than one 128-row program an SM).

Contiguous: Llama-3-8B, Qwen2.5-7B and Gemma 3 12B's global-layer heads at 10K and 32K, over
rows a program (64/128), programs an SM (1/2), stages (2/3) and key tiles. int4 paged: Llama
and Qwen2.5 at 32K and 128K over the same rows and programs an SM. Each variant's partials,
merged, are compared with the library's default's.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_sweep_h200/context_sweep.py              # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                             # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import torch
import triton

from ragcompress.kv.fast._context import _LOG2E, _context_kernel
from ragcompress.kv.fast._online import partials
from ragcompress.kv.fast._paged_int4 import paged_int4_context
from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED_INT4, Tiling

_V1 = Path(__file__).resolve().parents[1] / "ttft_paged_int4_h200" / "paged_int4_ab.py"
_spec = importlib.util.spec_from_file_location("paged_int4_ab", _V1)
assert _spec is not None and _spec.loader is not None
v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v1)
v2ab = v1.v2ab

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128), "gemma3-12b": (16, 8, 256)}
# (rows a program, programs an SM, stages)
TILINGS = ((128, 1, 3), (128, 1, 2), (64, 2, 3), (64, 2, 2), (64, 1, 3), (128, 2, 3))


def contiguous(q: Any, ck: Any, cv: Any, segs: int, ctx: int, t: Tiling, bn: int) -> Any:
    """The library's contiguous kernel over the first ``ctx - 7`` keys in ``segs`` segments."""
    d, kvh = q.shape[2], ck.shape[1]
    g, ng, o, lse = partials("sweep", q, ck, cv, segs)
    keys = ctx - 7  # a masked tail
    seg = -(-keys // segs)
    start = torch.arange(segs, device=q.device, dtype=torch.int32) * seg
    used = (keys - start).clamp(0, seg).to(torch.int32)
    bm = t.block_m(ng)
    _context_kernel[(segs, kvh, triton.cdiv(ng, bm))](
        q, ck, cv, start, used, o, lse, q.stride(0), q.stride(1), ck.stride(0), cv.stride(0), ng,
        d**-0.5 * _LOG2E, G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=t.warps(bm),
        num_stages=t.stages,
    )  # fmt: skip
    return o, lse


def check_cpu() -> None:
    n, h, kvh, d, ctx = 33, 4, 2, 32, 16 * 13
    q = torch.randn(n, h, d)
    ck, cv = torch.randn(ctx, kvh, d), torch.randn(ctx, kvh, d)
    want = v2ab.merged(*contiguous(q, ck, cv, 1, ctx, CONTIGUOUS, 16), 1, n, h, kvh, d)
    for segs, (bm, per, st) in ((3, TILINGS[2]), (2, TILINGS[0])):
        got = contiguous(q, ck, cv, segs, ctx, Tiling(bm, per, st), 16)
        torch.testing.assert_close(v2ab.merged(*got, segs, n, h, kvh, d), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every contiguous split merges to the one-segment pass")


def time_cell(bench: Any, run: Any, ref: Any, merge: Any) -> str:
    try:
        err = float((merge(*run()) - ref).abs().max())
        return f"{bench(run) * 1e3:.1f} | {err:.1e}"
    except Exception as exc:  # out of resources at a configuration
        return f"failed: {type(exc).__name__} |"


def gpu_contiguous(bench: Any, sms: int) -> None:
    for ctx in (10240, 32768):
        for name, (h, kvh, d) in SHAPES.items():
            torch.manual_seed(0)
            q = torch.randn(32, h, d, device="cuda", dtype=torch.bfloat16)
            ck = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
            cv = torch.randn(ctx, kvh, d, device="cuda", dtype=torch.bfloat16)
            ng = 32 * (h // kvh)
            ref_segs = CONTIGUOUS.splits(sms, ng, kvh, ctx // 256)
            lib_bn = 32 if d > 128 else 128
            ref = v2ab.merged(
                *contiguous(q, ck, cv, ref_segs, ctx, CONTIGUOUS, lib_bn), ref_segs, 32, h, kvh, d
            )
            lib = f"library: 128 rows, 1 an SM, 3 stages, {lib_bn} keys"
            print(f"\n## contiguous, {name}, {ctx // 1024}K keys ({lib})")
            print("| rows | an SM | stages | key tile | segments | us | max abs err |")
            print("|---|---|---|---|---|---|---|")
            for bm, per, st in TILINGS:
                t = Tiling(bm, per, st)
                segs = t.splits(sms, ng, kvh, ctx // 256)
                for bn in (64, 128) if d <= 128 else (32, 64):
                    run = partial(contiguous, q, ck, cv, segs, ctx, t, bn)
                    cell = time_cell(
                        bench, run, ref, partial(v2ab.merged, splits=segs, n=32, h=h, kvh=kvh, d=d)
                    )
                    print(f"| {bm} | {per} | {st} | {bn} | {segs} | {cell} |")


def gpu_int4(bench: Any, sms: int) -> None:
    for ctx in (32768, 131072):
        for name, (h, kvh, d) in list(SHAPES.items())[:2]:
            q, pk, pv, table, inv = v2ab.case(ctx, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
            pool = tuple(v1.quantized_pool(pk, pv, 64, d // 2)[:6])
            del pk, pv
            ng = 32 * (h // kvh)
            ref_sp = PAGED_INT4.splits(sms, ng, kvh, ctx // 64)
            out = paged_int4_context(q, pool, table, inv, 64, ref_sp, d**-0.5, tiling=PAGED_INT4)
            ref = v2ab.merged(*out, ref_sp, 32, h, kvh, d)
            print(f"\n## int4 paged, {name}, {ctx // 1024}K keys (library: 128 rows, 1 an SM, 3 stages)")
            print("| rows | an SM | stages | splits | us | max abs err |")
            print("|---|---|---|---|---|---|")
            for bm, per, st in TILINGS:
                t = Tiling(bm, per, st)
                sp = t.splits(sms, ng, kvh, ctx // 64)
                run = partial(paged_int4_context, q, pool, table, inv, 64, sp, d**-0.5, tiling=t)
                cell = time_cell(bench, run, ref, partial(v2ab.merged, splits=sp, n=32, h=h, kvh=kvh, d=d))
                print(f"| {bm} | {per} | {st} | {sp} | {cell} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    if ap.parse_args().check_cpu:
        check_cpu()
    else:
        from triton.testing import do_bench_cudagraph

        print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
        n_sms = torch.cuda.get_device_properties(0).multi_processor_count
        gpu_contiguous(do_bench_cudagraph, n_sms)
        gpu_int4(do_bench_cudagraph, n_sms)
