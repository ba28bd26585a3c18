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
from ragcompress_bench.ttft_shapes import build_model, head_dim
from ragcompress_bench.ttft_timing import passage_sizes

from ragcompress.kv.fast import FastGenerator, PackedChunk, default_step


def host(shape: str, ctx: int, qlen: int) -> None:
    torch.manual_seed(0)
    model = build_model(shape, "cuda", torch.bfloat16)
    cfg = model.config
    fast = FastGenerator(
        model,
        capacity=ctx,
        max_question=qlen,
        max_new_tokens=4,
        max_batch=1,
        buckets=(qlen,),
        graphs=True,
        step=default_step(model),
    )
    fast.warmup((1,), (qlen,))
    kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    def rnd(t: int) -> torch.Tensor:
        return torch.randn(t, *kv_shape, device="cuda", dtype=torch.bfloat16)

    prefix = PackedChunk(rnd(64), rnd(64), 64, 0)
    chunks = [PackedChunk(rnd(s), rnd(s), s, 64) for s in passage_sizes(ctx - 64, 512)]
    q = [list(range(100, 100 + qlen))]
    fast.load(prefix, chunks)

    def warm() -> int:
        fast.load_reusing(prefix, chunks)
        return int(fast.prefill(q)[0])

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
