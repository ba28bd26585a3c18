"""Where ``blend_question`` at 15% spends its time to first token on the fast engine, stage by
stage (each stage synchronized, so the sum is a little above the unsynchronized TTFT), and the
GPU kernels of its partial forward. 8B Llama shape, random bf16, 10K and 32K. From the
repository root on the GPU:

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_flash_recompute_h200/stages.py
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from ragcompress_bench.ttft_modes import RandomTextTokenizer, random_request
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.assembly import build_assembly
from ragcompress.kv.assembly import recompute as recompute_mod
from ragcompress.kv.assembly import selective as selective_mod
from ragcompress.kv.assembly.blend_question import QuestionBlend
from ragcompress.kv.fast import FastGenerator, PackedChunk, default_step

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        TIMES[name].append((time.perf_counter() - start) * 1e3)
        return out

    return run


def one_context(model: Any, fast: Any, mode: Any, ctx: int) -> None:
    prefix, chunks, question = random_request(model, ctx)
    packed = PackedChunk.from_prefix(prefix)

    def request() -> None:
        mode.load_fast(fast, packed, model, prefix, chunks, question)
        fast.prefill([question])

    request_t = timed("whole request", request)
    question_t = timed("question step", fast.prefill)
    for _ in range(2):
        request()
    TIMES.clear()
    for _ in range(5):
        request_t()
        question_t([question])
    print(f"\n## {ctx} tokens of context (median of 5, ms)\n\n| stage | ms |\n|---|---|")
    for name, ms in TIMES.items():
        print(f"| {name} | {statistics.median(ms):.1f} |")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        request()
        torch.cuda.synchronize()
    print(f"\nGPU kernels of one request at {ctx}:\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main() -> None:
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    fast = FastGenerator(
        model, capacity=32768, max_question=48, max_new_tokens=4, buckets=(32, 48), step=default_step(model)
    )
    fast.warmup((1,), (32,))
    FastGenerator.load_reusing = timed("engine load (concat)", FastGenerator.load_reusing)  # type: ignore[method-assign]
    selective_mod.concat_slots = timed("slot map", selective_mod.concat_slots)
    QuestionBlend.score_fast = timed("probe (score_fast)", QuestionBlend.score_fast)  # type: ignore[method-assign]
    recompute_mod.recompute_slots = timed("partial forward", recompute_mod.recompute_slots)
    mode = build_assembly({"name": "blend_question", "recompute": 0.15})
    mode.bind(model, RandomTextTokenizer(int(model.config.vocab_size)))
    for ctx in (10240, 32768):
        one_context(model, fast, mode, ctx)


if __name__ == "__main__":
    main()
