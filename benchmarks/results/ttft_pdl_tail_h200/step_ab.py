"""The warm question step (chunks already in the buffer) with the step kernels' programmatic
dependent launch on (the library's default on Hopper) and off (``RAGCOMPRESS_PDL=0``),
alternating in one process: a fresh engine each round, its graphs captured under the setting.
Llama-3-8B shape, random bf16, 32 question tokens; ms to the first token (CUDA events, median of
20 after 3), and the floor (weights + context KV at the copy bandwidth).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_pdl_tail_h200/step_ab.py --contexts 1024,10240,32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model, head_dim, weight_bytes
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth

from ragcompress.kv.fast import FusedStep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="1024,10240,32768")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__)
    clock = Clock(dev, 3, 20)
    bw = copy_bandwidth(dev, clock)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + written)\n")
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    cfg = model.config
    print(f"## {a.shape}, warm step ms (each round a fresh engine; PDL = programmatic dependent launch)\n")
    print("| context | floor | PDL off (rounds) | PDL on (rounds) | off / floor | on / floor | on / off |")
    print("|---|---|---|---|---|---|---|")
    for ctx in (int(c) for c in a.contexts.split(",")):
        kv = ctx * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(cfg) * 2 * 2
        floor = (weight_bytes(model) + kv) / bw * 1e3
        runs: dict[str, list[float]] = {"0": [], "1": []}
        tokens: dict[str, set[int]] = {"0": set(), "1": set()}
        for _ in range(a.rounds):
            for flag in ("0", "1"):
                os.environ["RAGCOMPRESS_PDL"] = flag
                warm = resident(model, ctx, 32, FusedStep(model)).warm
                runs[flag].append(clock(warm))
                tokens[flag].add(int(warm()))
                del warm
                gc.collect()
                torch.cuda.empty_cache()
        off, on = statistics.median(runs["0"]), statistics.median(runs["1"])
        print(
            f"| {ctx} | {floor:.2f} | {' / '.join(f'{t:.3f}' for t in runs['0'])} | "
            f"{' / '.join(f'{t:.3f}' for t in runs['1'])} | {off / floor:.3f} | {on / floor:.3f} | {on / off:.3f} |"
        )
        assert tokens["0"] == tokens["1"] and len(tokens["0"]) == 1, tokens
    print("\nfirst tokens equal with and without PDL at every context (asserted)")


if __name__ == "__main__":
    main()
