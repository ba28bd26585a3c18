"""Stored against packed chunks, one cold load + question step each at 32K on the 8B shape: the
time to first token, then one profiled request of each, its GPU kernels and the host's top calls.
On the GPU, from the repository root:

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_stored_gather_h200/load_profile.py
"""

from __future__ import annotations

import statistics
import time

import torch
from ragcompress_bench.ttft_modes import random_request
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast import FastGenerator, PackedChunk, default_step


def main() -> None:
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    fast = FastGenerator(model, capacity=32768, max_question=32, max_new_tokens=4, step=default_step(model))
    fast.warmup((1,), (32,))
    prefix, stored, question = random_request(model, 32768)
    pre = PackedChunk.from_prefix(prefix)
    packed = [PackedChunk.from_chunk(c) for c in stored]
    for name, chunks in (("packed", packed), ("stored", stored)):

        def request(chunks: list = chunks) -> None:
            fast.load(pre, chunks)
            fast.prefill([question])

        for _ in range(3):
            request()
        torch.cuda.synchronize()
        ttft, host = [], []
        for _ in range(10):
            start = time.perf_counter()
            fast.load(pre, chunks)
            host.append((time.perf_counter() - start) * 1e3)
            fast.prefill([question])
            torch.cuda.synchronize()
            ttft.append((time.perf_counter() - start) * 1e3)
        print(f"\n## {name}: first token {statistics.median(ttft):.2f} ms, load() returns after "
              f"{statistics.median(host):.2f} ms of host time (medians of 10)\n")  # fmt: skip
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            request()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50)
        )


if __name__ == "__main__":
    main()
