"""The bf16 paged context pass with 128-row programs two an SM: the library's kernel launched
with a register cap (``maxnreg``) so that two 8-warp programs fit an SM, each key block then
read by one program for all of a KV head's 128 folded rows (Llama-3-8B's 32 tokens x 4 heads)
instead of by two 64-row programs. Against the library's split (64-row programs, two an SM:
``waves.PAGED``) and 128-row programs one an SM; one layer, 32 question tokens,
``../ttft_paged_tiles_h200/``'s case (a 64-token prefix, 512-token chunks, each a run of
64-slot blocks, the runs in shuffled pool order). µs by ``do_bench_cudagraph``, best of 3
alternating rounds; each contender's merged output against the library's.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_paged_regs_h200/paged_regs.py [--pick FILE]
    RAGCOMPRESS_SM90_LOG=/tmp/log PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/tests python3 <the same> --compile

``--pick FILE`` writes the contender that beats the library by the most at 32K + 128K (both
shapes; none if it is slower at 10K by more than 2% or at any context by more than 5%) as
``rows per_sm stages maxnreg`` (or ``none``), for the call's next steps. A diagnostic script;
not part of the library.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, record_module, shape_rows

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast._online import partials
from ragcompress.kv.fast._paged import _paged_kernel, question_tables
from ragcompress.kv.fast.waves import Tiling

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")

# (rows, programs an SM, stages, register cap)
CONFIGS = ((128, 1, 3, None), (128, 2, 2, 128), (128, 2, 3, 128), (64, 2, 3, 128), (64, 3, 2, 168))


def run(c: dict[str, Any], sms: int, rows: int, per_sm: int, stages: int, regs: int | None) -> tuple[Any, Any, int]:
    q, pk, pv, table = c["q"], c["pk"], c["pv"], c["blocks"]
    kvh, d = pk.shape[1], q.shape[2]
    tiling = Tiling(rows=rows, per_sm=per_sm, stages=stages)
    g = q.shape[1] // kvh
    sp = tiling.splits(sms, q.shape[0] * g, kvh, int(table.shape[0]) - 1)
    g, ng, o, lse = partials("paged_context", q, pk, pv, sp, None)
    nq, qg, tab_q = question_tables(q, table, g)
    bm = tiling.block_m(qg)
    extra = {} if regs is None else {"maxnreg": regs}
    _paged_kernel[(sp, kvh, nq * triton.cdiv(qg, bm))](
        q.contiguous(), pk, pv, table, c["inv"], o, lse, pk.stride(0), pv.stride(0), ng, qg, tab_q,
        d**-0.5 * _LOG2E, S=sp, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=bm,
        num_warps=Tiling.warps(bm), num_stages=stages, **extra,
    )  # fmt: skip
    return o, lse, sp


def name(cfg: tuple[int, int, int, int | None]) -> str:
    rows, per_sm, stages, regs = cfg
    return f"{rows} rows, {per_sm}/SM, {stages} stages, maxnreg {regs}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU)")
    ap.add_argument("--pick", type=Path, help="write the winning configuration here")
    args = ap.parse_args()
    if args.compile:
        from support.sm90 import install

        install()
        for shape in ((32, 8, 128), (28, 4, 128)):
            c = tiles.case(64 + 512 * 4, 32, *shape, "cpu", torch.bfloat16)
            for cfg in CONFIGS:
                run(c, 132, *cfg)
                print("compiled", shape, name(cfg), flush=True)
        return
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | kernel | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    lib = "library paged (64 rows, 2/SM, 3 stages)"
    runs: dict[str, Any] = {lib: lambda c, sms: tiles.library(c)}
    for cfg in CONFIGS:
        runs[name(cfg)] = lambda c, sms, cfg=cfg: run(c, sms, *cfg)
    ratios: dict[str, dict[int, list[float]]] = {name(cfg): {} for cfg in CONFIGS}
    for (_, ctx), best in shape_rows(tiles, (10240, 32768, 131072), runs).items():
        base = best.pop(lib)
        for k, us in best.items():
            ratios[k].setdefault(ctx, []).append(us / base)
    if args.pick:
        ok = {
            k: sum(r[32768] + r[131072])
            for k, r in ratios.items()
            if len(r) == 3 and max(r[10240]) <= 1.02 and max(max(v) for v in r.values()) <= 1.05
        }
        win = min(ok, key=ok.__getitem__) if ok else None
        cfg = next((c for c in CONFIGS if name(c) == win), None)
        pick = "none" if cfg is None or ok[win] >= 4 * 0.97 else " ".join(str(x) for x in cfg)
        args.pick.write_text(pick + "\n")
        print(f"\npick: {pick}")


if __name__ == "__main__":
    main()
