"""The warm 32K request with down_proj whole (``FusedStep(down_splits=1)``) and split over K in
two fp32 partial sums that the residual add sums (``down_splits=2``, the default), in one
process: two engines over the same random model, timed in alternating rounds.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_down_splits_h200/down_splits_ab.py

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse

import torch
import triton
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock, alternating

from ragcompress.kv.fast import FusedStep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b,llama3-8b,mistral-7b,gemma3-12b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    clock = Clock(torch.device("cuda"), 3, 30)
    print(f"\n{a.context} keys, 32 question tokens; ms, median of 30 a round, {a.rounds} rounds\n")
    print(
        "| shape | down_splits=1 warm | down_splits=2 warm | 1: replay alone | 2: replay alone | same first token |"
    )
    print("|---|---|---|---|---|---|")
    for s in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        rs = {k: resident(model, a.context, 32, step=FusedStep(model, down_splits=k)) for k in (1, 2)}
        toks = {k: r.warm() for k, r in rs.items()}
        runs = {
            (k, w): r.warm if w else r.fast._last.graph.replay for k, r in rs.items() for w in (True, False)
        }
        t = alternating(runs, clock, a.rounds)
        m = {k: (t[k, True], t[k, False]) for k in (1, 2)}
        print(
            f"| {s} | {m[1][0]:.3f} | **{m[2][0]:.3f}** | {m[1][1]:.3f} | **{m[2][1]:.3f}** | {toks[1] == toks[2]} |"
        )
        del rs, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
