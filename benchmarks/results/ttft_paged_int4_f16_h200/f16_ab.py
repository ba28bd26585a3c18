"""The int4/int8 paged pass with fp16 products (the library since this call) against bf16
products (the kernel before: codes converted to fp32, an fp32 multiply-add and a bf16 rounding
an element), beside the bf16 paged pass over the same keys dequantized; one layer at 32K and
128K, 32 question tokens, Llama-3-8B and Qwen2.5-7B heads, 64-slot blocks, one delta every 8
blocks (``../ttft_paged_v2_h200/``'s case). µs by ``do_bench_cudagraph``; error: relative L2 of
the merged output against the bf16 pass over the dequantized pool.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_paged_int4_f16_h200/f16_ab.py             # f16_ab.txt
    PYTHONPATH=$PWD python3 <the same script> --profile   # one launch of each int4 variant, for ncu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import partials
from ragcompress.kv.fast._paged import paged_context, question_tables
from ragcompress.kv.fast._paged_int4 import _paged_int4_kernel, paged_int4_context
from ragcompress.kv.fast.waves import PAGED, PAGED_INT4

_V1 = Path(__file__).resolve().parents[1] / "ttft_paged_int4_h200" / "paged_int4_ab.py"
_spec = importlib.util.spec_from_file_location("paged_int4_ab", _V1)
assert _spec is not None and _spec.loader is not None
v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v1)
v2ab = v1.v2ab

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}


def bf16_products(q: Any, pool: Any, table: Any, inv: Any, splits: int, scale: float) -> Any:
    """``paged_int4_context``'s launch with bf16 operands: the kernel as it was before."""
    kc, ks, kz, vc, vs, vz = pool
    d, kvh = q.shape[2], kc.shape[1]
    dense = q.new_empty(1, kvh, d)
    g, ng, o, lse = partials("bf16_products", q, dense, dense, splits)
    nq, qg, tab_q = question_tables(q, table, g)
    bm = PAGED_INT4.block_m(qg)
    _paged_int4_kernel[(splits, kvh, nq * triton.cdiv(qg, bm))](
        q, kc, ks, kz, vc, vs, vz, table, inv, o, lse, kc.stride(0), ks.stride(0), vs.stride(0),
        ng, qg, tab_q, scale * _LOG2E, S=splits, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=bm,
        BITS=4, OP=tl.bfloat16, num_warps=PAGED_INT4.warps(bm), num_stages=PAGED_INT4.stages,
    )  # fmt: skip
    return o, lse


def truth(
    q: Any, pool: Any, dk: Any, dv: Any, table: Any, inv: Any, sp4: int, spd: int, f16: Any, b16: Any
) -> None:
    """Relative L2 of each pass's output against fp32 attention over the codes dequantized in
    fp32 (``paged_context_reference``, torch fp32 products)."""
    from ragcompress.kv.fast.paged import paged_context_reference
    from ragcompress.kv.kernels.quant_format import dequantize_keys, dequantize_values

    n, h, d = q.shape
    kvh = dk.shape[1]
    kc, ks, kz, vc, vs, vz = (t.permute(1, 0, 2) for t in pool)
    k32 = dequantize_keys(kc, ks, kz, 4, 64).permute(1, 0, 2).contiguous()
    v32 = dequantize_values(vc, vs, vz, 4, d // 2).permute(1, 0, 2).contiguous()
    want = paged_context_reference(q.float(), k32, v32, table, inv, 64, d**-0.5)[0]
    dense = paged_context(q, dk, dv, table, inv, 64, spd, d**-0.5)
    print("| pass | rel. L2 vs fp32 attention over the codes dequantized in fp32 |\n|---|---|")
    for label, (o, lse), sp in (
        ("bf16 pass over the pool dequantized to bf16", dense, spd),
        ("int4, bf16 products (before)", b16(), sp4),
        ("int4, fp16 products (library)", f16(), sp4),
    ):
        got = v2ab.merged(o, lse, sp, n, h, kvh, d).float()
        print(f"| {label} | {float((got - want).norm() / want.norm()):.2e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="one launch of each int4 variant (Llama, 32K)")
    ap.add_argument("--truth", action="store_true", help="each pass against fp32 attention (Llama, 32K)")
    args = ap.parse_args()
    from triton.testing import do_bench_cudagraph

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    one = args.profile or args.truth
    for ctx in (32768,) if one else (32768, 131072):
        for name, (h, kvh, d) in list(SHAPES.items())[: 1 if one else 2]:
            q, pk, pv, table, inv = v2ab.case(ctx, 32, h, kvh, d, 64, "cuda", torch.bfloat16)
            *pool, dk, dv = v1.quantized_pool(pk, pv, 64, d // 2)
            pool = tuple(pool)
            del pk, pv
            ng = 32 * (h // kvh)
            sp4 = PAGED_INT4.splits(sms, ng, kvh, ctx // 64)
            f16 = partial(paged_int4_context, q, pool, table, inv, 64, sp4, d**-0.5)
            b16 = partial(bf16_products, q, pool, table, inv, sp4, d**-0.5)
            if args.profile:
                f16(), b16()
                torch.cuda.synchronize()
                return
            if args.truth:
                truth(q, pool, dk, dv, table, inv, sp4, PAGED.splits(sms, ng, kvh, ctx // 64), f16, b16)
                return
            spd = PAGED.splits(sms, ng, kvh, ctx // 64)
            dense = partial(paged_context, q, dk, dv, table, inv, 64, spd, d**-0.5)
            ref = v2ab.merged(*dense(), spd, 32, h, kvh, d).float()
            print(f"\n## {name}, {ctx // 1024}K keys ({sp4} int4 splits, {spd} bf16)")
            print("| pass | µs | rel. L2 vs the bf16 pass over the dequantized pool |\n|---|---|---|")
            print(f"| bf16 pool (library) | {do_bench_cudagraph(dense) * 1e3:.1f} | 0 |")
            for label, run in (("int4, bf16 products (before)", b16), ("int4, fp16 products (library)", f16)):
                out = v2ab.merged(*run(), sp4, 32, h, kvh, d).float()
                err = float((out - ref).norm() / ref.norm())
                print(f"| {label} | {do_bench_cudagraph(run) * 1e3:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
