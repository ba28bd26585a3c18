"""Three context programs an SM: the bf16 paged pass (and the contiguous one) with 64-row
programs of one warpgroup, three an SM at two pipeline stages (3 x 64 KB of shared memory), so
two programs' math covers the third's table-row and block loads; against the library's splits
(paged: two an SM at three stages; contiguous: one 128-row program an SM at three). The earlier
sweep (``../ttft_paged_sweep_h200/``) tried two stages only at two programs an SM. One layer,
32 question tokens, the pool as a fresh one fills it (``../ttft_paged_tiles_h200/``'s case);
µs by ``do_bench_cudagraph``, best of 3 alternating rounds.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_three_per_sm_h200/tiling_ab.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, record_module

from ragcompress.kv.fast._context import context_pass
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.waves import CONTIGUOUS, PAGED, Tiling

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")

TILINGS = {
    "paged": (PAGED, Tiling(rows=64, per_sm=3, stages=2), Tiling(rows=64, per_sm=2, stages=2)),
    "contiguous": (CONTIGUOUS, Tiling(rows=64, per_sm=3, stages=2), Tiling(rows=64, per_sm=2, stages=3)),
}


def run(kind: str, c: dict[str, Any], tiling: Tiling, sms: int) -> tuple[Any, Any, int]:
    q, kvh = c["q"], c["pk"].shape[1]
    ng = q.shape[0] * (q.shape[1] // kvh)
    sc = q.shape[2] ** -0.5
    if kind == "paged":
        sp = tiling.splits(sms, ng, kvh, int(c["blocks"].shape[0]) - 1)
        return (*paged_context(q, c["pk"], c["pv"], c["blocks"], c["inv"], 64, sp, sc, tiling=tiling), sp)
    sp = tiling.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    return (*context_pass(q, c["kc"], c["vc"], start, used, sc, tiling), sp)


def main() -> None:
    from triton.testing import do_bench_cudagraph

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | pass | tiling (rows/per SM/stages) | splits | µs | vs library | rel err |")
    print("|---|---|---|---|---|---|---|---|")
    for ctx in (10240, 32768, 131072):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = tiles.case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            for kind, tilings in TILINGS.items():
                o, lse, sp = run(kind, c, tilings[0], sms)
                ref = tiles.merged(o, lse, sp, 32, h, kvh, d).float()
                best = [float("inf")] * len(tilings)
                errs = [0.0] * len(tilings)
                for i, t in enumerate(tilings):
                    try:
                        o, lse, sp_i = run(kind, c, t, sms)
                        got = tiles.merged(o, lse, sp_i, 32, h, kvh, d).float()
                        errs[i] = float((got - ref).norm() / ref.norm())
                    except Exception as exc:  # out of resources
                        print(f"| {shape} | {ctx} | {kind} | {t.rows}/{t.per_sm}/{t.stages} | | failed: "
                              f"{type(exc).__name__} {str(exc)[:60]} | | |")  # fmt: skip
                        best[i] = float("nan")
                for _ in range(3):
                    for i, t in enumerate(tilings):
                        if best[i] == best[i]:  # not failed
                            us = do_bench_cudagraph(lambda t=t, c=c, kind=kind: run(kind, c, t, sms)) * 1e3
                            best[i] = min(best[i], us)
                for i, t in enumerate(tilings):
                    if best[i] == best[i]:
                        sp_i = run(kind, c, t, sms)[2]
                        print(f"| {shape} | {ctx} | {kind} | {t.rows}/{t.per_sm}/{t.stages} | {sp_i} | "
                              f"{best[i]:.1f} | {best[i] / best[0]:.3f} | {errs[i]:.1e} |", flush=True)  # fmt: skip
            del c
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
