"""The host side of a warm request on CUDA: cProfile over 100 requests (``load_reusing`` +
``prefill`` + the token read), and the host time of the captured graph's ``replay()`` alone.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_step_split_h200/host_profile.py \
        --shapes llama3-8b,qwen2.5-7b --context 32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model


def host(shape: str, ctx: int, qlen: int) -> None:
    torch.manual_seed(0)
    model = build_model(shape, "cuda", torch.bfloat16)
    r = resident(model, ctx, qlen)
    fast, warm = r.fast, r.warm
    for _ in range(5):
        warm()
    graph = fast._last.graph
    replay = []
    for _ in range(30):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        replay.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    med = statistics.median(replay)
    print(f"\n## {shape}, {ctx} tokens: host time of graph.replay() alone, median {med:.3f} ms")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(100):
        warm()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,qwen2.5-7b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    for s in a.shapes.split(","):
        host(s, a.context, a.question_tokens)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
