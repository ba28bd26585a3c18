"""The warm question step (chunks already in the buffer) under each value of one environment
variable the step's kernels read at launch, alternating in one process: a fresh engine each
round, its graphs captured under the value. Llama-3-8B shape, random bf16, 32 question tokens;
ms to the first token (CUDA events, median of 20 after 3) against the floor (weights + context
K/V at the copy bandwidth); the first tokens must agree across values.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gemm_prefetch_h200/env_ab.py \
        --var RAGCOMPRESS_GEMM_PREFETCH --values 0,6,12 --contexts 1024,10240,32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model, kv_bytes_per_token, weight_bytes
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth

from ragcompress.kv.fast import FusedStep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--var", required=True)
    ap.add_argument("--values", required=True, help="comma-separated; the first is the baseline")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="1024,10240,32768")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    values = a.values.split(",")
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__)
    clock = Clock(dev, 3, 20)
    bw = copy_bandwidth(dev, clock)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + written)\n")
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    print(f"## {a.shape}, warm step ms by {a.var} (each round a fresh engine)\n")
    print(
        "| context | floor | "
        + " | ".join(f"{v}: rounds / x floor" for v in values)
        + " | vs "
        + values[0]
        + " |"
    )
    print("|---|---|" + "---|" * (len(values) + 1))
    for ctx in (int(c) for c in a.contexts.split(",")):
        floor = (weight_bytes(model) + kv_bytes_per_token(model.config, ctx) * ctx) / bw * 1e3
        runs: dict[str, list[float]] = {v: [] for v in values}
        tokens: set[int] = set()
        for _ in range(a.rounds):
            for v in values:
                os.environ[a.var] = v
                warm = resident(model, ctx, 32, FusedStep(model)).warm
                runs[v].append(clock(warm))
                tokens.add(int(warm()))
                del warm
                gc.collect()
                torch.cuda.empty_cache()
        med = {v: statistics.median(r) for v, r in runs.items()}
        cells = [f"{' / '.join(f'{t:.3f}' for t in runs[v])} / {med[v] / floor:.3f}" for v in values]
        ratios = " / ".join(f"{med[v] / med[values[0]]:.3f}" for v in values[1:])
        print(f"| {ctx} | {floor:.2f} | " + " | ".join(cells) + f" | {ratios} |", flush=True)
        assert len(tokens) == 1, tokens
    print(f"\nfirst tokens equal under every value of {a.var} at every context (asserted)")


if __name__ == "__main__":
    main()
