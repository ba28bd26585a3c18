"""The warm 32K request with the question step's weight products on the skinny GEMM (the
library's ``FusedStep()``) against cuBLAS for all of them (``FusedStep(skinny_rows=0)``), in one
process: two engines over one model and the same random context, alternating rounds.

The numbers in ``swap_step_ab.txt`` came from this script's first version (``git show
140aaea:benchmarks/results/ttft_swap_step_h200/swap_step_ab.py``), run on the tree before the
swapped kernel entered the library: it defined the kernel itself and added the products to it one
at a time. With the kernel now in ``ragcompress/kv/fast/_gemm.py``, this version compares the
library with cuBLAS instead, and its engines share one seeded context, so their first tokens and
logits can be compared too.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_swap_step_h200/swap_step_ab.py

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
    print(f"\n{a.context} keys, 32 question tokens; warm ms, median of 30 a round, {a.rounds} rounds")
    print("\n| shape | cuBLAS (skinny_rows=0) | skinny GEMM | same first token | logits max abs diff |")
    print("|---|---|---|---|---|")
    for s in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        rs = {k: resident(model, a.context, 32, step=FusedStep(model, skinny_rows=k)) for k in (0, 64)}
        toks = {k: r.warm() for k, r in rs.items()}
        diff = float((rs[0].fast.last_logits[0].float() - rs[64].fast.last_logits[0].float()).abs().max())
        m = alternating({k: r.warm for k, r in rs.items()}, clock, a.rounds)
        print(f"| {s} | {m[0]:.3f} | **{m[64]:.3f}** | {toks[0] == toks[64]} | {diff:.4f} |")
        del rs, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
