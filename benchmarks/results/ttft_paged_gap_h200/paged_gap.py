"""Where placed (paged) requests lose time against the same chunks already in the buffer:
per context, the two requests' wall times (CUDA events), the paged load's host time, and every
kernel of both under the profiler, grouped, side by side.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_paged_gap_h200/paged_gap.py \
        --shape llama3-8b --contexts 1024,10240,32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch
import triton
from ragcompress_bench.ttft_paged import build_paged
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model
from ragcompress_bench.ttft_timing import Clock

from ragcompress.kv.fast.pool import ChunkPool

CATEGORIES = (
    ("skinny gemm", r"_skinny"),
    ("cuBLAS gemm", r"nvjet|gemm|cutlass|sm90_xmma|splitK|Kernel2"),
    ("context: contiguous", r"_context_kernel|_window"),
    ("context: paged", r"_paged_kernel"),
    ("own pass + merge", r"merge|_own"),
    ("rope_write", r"rope_write"),
    ("act_mul", r"act_mul"),
    ("norms", r"rmsnorm|_rms"),
    ("copies / fills", r"index|copy|Memcpy|fill|elementwise"),
)


def kernels(fn: Any, reps: int) -> tuple[dict[str, float], list[tuple[float, str, float]]]:
    """µs a request by category, and the kernels (µs, name, launches a request)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            fn()
    cats: dict[str, float] = defaultdict(float)
    rows = []
    for e in p.key_averages():
        us = e.device_time_total / reps
        if us <= 0:
            continue
        cat = next((c for c, pat in CATEGORIES if re.search(pat, e.key)), "other")
        cats[cat] += us
        rows.append((us, e.key[:70], e.count / reps))
    return cats, rows


def host_ms(fn: Any, reps: int = 30) -> float:
    """Median host milliseconds of ``fn`` (the GPU idle before each call)."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def row(name: str, x: float, y: float, diff: bool = True) -> None:
    print(f"| {name} | {x:.3f} | {y:.3f} | {f'{y - x:+.3f}' if diff else ''} |")


def one_context(model: Any, ctx: int, qlen: int, clock: Clock, shape: str) -> None:
    """Both requests over the same ``ctx`` tokens of chunks: table, then top kernels."""
    args = SimpleNamespace(passage_tokens=512, question_tokens=qlen, new_tokens=4)
    r = resident(model, ctx, qlen)
    paged = build_paged(model, r.fast, [ctx], args, ChunkPool)
    paged.load(r.prefix, r.chunks)  # the chunks enter the pool once

    def placed() -> int:
        paged.load(r.prefix, r.chunks)
        return int(paged.prefill([r.question])[0])

    same = placed() == r.warm()
    ms = [clock(r.warm), clock(placed)]
    loads = [
        host_ms(lambda: r.fast.load_reusing(r.prefix, r.chunks)),
        host_ms(lambda: paged.load(r.prefix, r.chunks)),
    ]
    prof = [kernels(r.warm, 20), kernels(placed, 20)]
    tot = [sum(p[0].values()) / 1e3 for p in prof]
    print(f"\n## {shape}, {ctx} tokens ({len(r.chunks)} chunks), same first token: {same}\n")
    print("| per request | in buffer | placed | placed - in buffer |\n|---|---|---|---|")
    row("wall ms (CUDA events)", *ms)
    row("load, host ms", *loads)
    row("kernels ms", *tot)
    row("wall - kernels ms", ms[0] - tot[0], ms[1] - tot[1], False)
    for c in sorted({*prof[0][0], *prof[1][0]}):
        row(f"{c} ms", prof[0][0].get(c, 0.0) / 1e3, prof[1][0].get(c, 0.0) / 1e3)
    for name, p in zip(("in buffer", "placed"), prof, strict=True):
        print(f"\n{name}: top kernels\n\n| kernel | µs a request | launches | µs a launch |")
        print("|---|---|---|---|")
        for us, key, n in sorted(p[1], reverse=True)[:12]:
            print(f"| `{key}` | {us:.0f} | {n:.0f} | {us / max(n, 1):.1f} |")
    paged.release()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="1024,10240,32768")
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    clock = Clock(torch.device("cuda"), 3, 20)
    for ctx in (int(c) for c in a.contexts.split(",")):
        one_context(model, ctx, a.question_tokens, clock, a.shape)
        torch.cuda.empty_cache()  # this context's engines are gone with the call


if __name__ == "__main__":
    main()
