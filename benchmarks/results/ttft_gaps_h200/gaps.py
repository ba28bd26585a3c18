"""Where the warm step's non-kernel time goes: GPU idle before the graph's first kernel (host
work of the request) against the gaps between the graph's kernels, from a CUDA + CPU trace.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gaps_h200/gaps.py --shapes qwen2.5-7b

Per request: wall time (CUDA events, as ``bench ttft``), the replay of the captured step alone
(same events), and from the profiler's device timeline the sum of kernel times, the gaps
between consecutive kernels split by size, and the time from the request's first device
activity to the graph's first kernel. A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import torch
import triton
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock


def trace(r, reps: int) -> None:  # type: ignore[no-untyped-def]
    acts = [torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as p:
        for _ in range(reps):
            torch.cuda.synchronize()
            with torch.profiler.record_function("request"):
                r.warm()
    ev = p.events()
    reqs = sorted((e.time_range.start, e.time_range.end) for e in ev if e.name == "request")
    dev = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in ev
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    launch = sorted(e.time_range.start for e in ev if "GraphLaunch" in e.name)
    rows = []
    for (a, b), gl in zip(reqs, launch, strict=False):
        ks = [d for d in dev if a <= d[0] <= b + 5000]
        if not ks:
            continue
        busy = sum(e - s for s, e, _ in ks)
        gaps = [ks[i + 1][0] - ks[i][1] for i in range(len(ks) - 1)]
        first_graph = next((s for s, _, n in ks if s >= gl), ks[0][0])
        rows.append((ks[-1][1] - a, busy, sum(g for g in gaps if g > 0), ks[0][0] - a, gl - a, first_graph - gl, gaps, len(ks)))
    print("| per request, µs | median |\n|---|---|")
    names = ["request start to last kernel end", "kernel time", "gaps between kernels",
             "request start to first device activity", "request start to graph launch call",
             "graph launch call to its first kernel"]  # fmt: skip
    for i, nm in enumerate(names):
        print(f"| {nm} | {statistics.median(r_[i] for r_ in rows):.1f} |")
    print(f"| device activities | {statistics.median(r_[7] for r_ in rows):.0f} |")
    allg = [g for r_ in rows for g in r_[6]]
    hist: Counter[str] = Counter()
    tot: Counter[str] = Counter()
    for g in allg:
        k = "<0.5" if g < 0.5 else "0.5-1" if g < 1 else "1-2" if g < 2 else "2-5" if g < 5 else "5-20" if g < 20 else ">=20"
        hist[k] += 1
        tot[k] += max(g, 0)
    print("\n| gap µs | count a request | µs a request |\n|---|---|---|")
    for k in ("<0.5", "0.5-1", "1-2", "2-5", "5-20", ">=20"):
        print(f"| {k} | {hist[k] / len(rows):.0f} | {tot[k] / len(rows):.1f} |")
    # the largest gaps with their neighbours, from the last request
    r_ = rows[-1]
    big = sorted(range(len(r_[6])), key=lambda i: -r_[6][i])[:8]
    ks = [d for d in dev if reqs[-1][0] <= d[0] <= reqs[-1][1] + 5000]
    print("\n| largest gaps (last request) µs | before | after |\n|---|---|---|")
    for i in big:
        print(f"| {r_[6][i]:.1f} | `{ks[i][2][:60]}` | `{ks[i + 1][2][:60]}` |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b")
    ap.add_argument("--context", type=int, default=32768)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    clock = Clock(torch.device("cuda"), 3, 20)
    for s in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(s, "cuda", torch.bfloat16)
        r = resident(model, a.context, 32)
        warm = clock(r.warm)
        shape = r.fast._last
        replay = clock(shape.graph.replay)
        print(f"\n## {s}, {a.context} keys: warm request {warm:.3f} ms; the captured step replayed alone {replay:.3f} ms\n")
        trace(r, 10)
        del r, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
