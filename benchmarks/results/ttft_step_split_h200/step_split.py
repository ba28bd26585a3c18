"""Where a warm request's time goes outside the kernels: the request (``load_reusing`` +
``prefill`` + reading the token, as ``bench ttft``'s warm column), the captured graph replayed
back to back, the kernels' own time, and the gaps between kernels inside one replay.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_step_split_h200/step_split.py \
        --shapes llama3-8b,qwen2.5-7b --context 32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock


def split(shape: str, ctx: int, qlen: int, clock: Clock) -> None:
    torch.manual_seed(0)
    model = build_model(shape, "cuda", torch.bfloat16)
    r = resident(model, ctx, qlen)
    fast, prefix, chunks, q = r.fast, r.prefix, r.chunks, [r.question]
    warm = r.warm
    request = clock(warm)
    graph = fast._last.graph  # the prefill's captured step
    replay = clock(graph.replay)
    # host time of each part, the GPU idle before it (synchronized first)
    parts = ("load_reusing", "prefill (until the graph is queued)", "token read")
    host: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(30):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fast.load_reusing(prefix, chunks)
        t1 = time.perf_counter()
        tok = fast.prefill(q)
        t2 = time.perf_counter()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        int(tok[0])
        t4 = time.perf_counter()
        host["load_reusing"].append((t1 - t0) * 1e3)
        host["prefill (until the graph is queued)"].append((t2 - t1) * 1e3)
        host["token read"].append((t4 - t3) * 1e3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        torch.cuda.synchronize()
        graph.replay()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    kernels = sorted((e.time_range.start, e.time_range.end) for e in p.events() if e.device_type == cuda)
    busy = sum(b - a for a, b in kernels) / 1e3
    span = (kernels[-1][1] - kernels[0][0]) / 1e3
    gaps = [(kernels[i + 1][0] - kernels[i][1]) for i in range(len(kernels) - 1)]
    print(f"\n## {shape}, {ctx} tokens, {len(kernels)} kernels in one replay")
    print("| part | ms |\n|---|---|")
    print(f"| request (load_reusing + prefill + token read), median | {request:.3f} |")
    print(f"| graph replayed back to back, median | {replay:.3f} |")
    print(f"| one replay, first kernel start to last kernel end | {span:.3f} |")
    print(f"| kernels' own time | {busy:.3f} |")
    print(f"| gaps between kernels | {span - busy:.3f} (median gap {statistics.median(gaps):.2f} us) |")
    for k, v in host.items():
        print(f"| host: {k}, median | {statistics.median(v):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,qwen2.5-7b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    clock = Clock(torch.device("cuda"), 3, 20)
    for s in a.shapes.split(","):
        split(s, a.context, a.question_tokens, clock)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
