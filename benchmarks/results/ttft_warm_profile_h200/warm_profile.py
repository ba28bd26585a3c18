"""Where the warm question step's time goes now (batch 1, 32 question tokens, chunks resident):
every kernel of one request under the profiler, grouped, against the wall time of the request
and the floor (weights + context K/V at the copy bandwidth measured in the same run).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_warm_profile_h200/warm_profile.py \
        --shapes qwen2.5-7b,llama3-8b --context 32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
import triton
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model, head_dim, weight_bytes
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth

CATEGORIES = (
    ("skinny gemm (o_proj, down)", r"_skinny"),
    ("cuBLAS gemm", r"nvjet|gemm|cutlass|sm90_xmma|splitK|Kernel2"),
    ("context attention", r"_context_kernel|_window"),
    ("own pass + merge", r"merge|_own"),
    ("rope_write", r"rope_write"),
    ("act_mul", r"act_mul"),
    ("norms", r"rmsnorm|_rms"),
    ("embedding / copies", r"index|copy|Memcpy|fill|elementwise"),
)


def profile(shape: str, ctx: int, qlen: int, bw: float, clock: Clock) -> None:
    torch.manual_seed(0)
    model = build_model(shape, "cuda", torch.bfloat16)
    cfg = model.config
    r = resident(model, ctx, qlen)
    ms = clock(r.warm)
    kv = ctx * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(cfg) * 2 * 2
    wb = weight_bytes(model)
    print(
        f"\n## {shape}, {ctx} tokens: warm request {ms:.3f} ms, floor {(wb + kv) / bw * 1e3:.3f} ms "
        f"(weights {wb / bw * 1e3:.3f} ms + KV {kv / bw * 1e3:.3f} ms at {bw / 1e9:.0f} GB/s)"
    )
    reps = 20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            r.warm()
    cats: dict[str, float] = defaultdict(float)
    rows = []
    for e in p.key_averages():
        us = e.device_time_total / reps
        if us <= 0:
            continue
        cat = next((c for c, pat in CATEGORIES if re.search(pat, e.key)), "other")
        cats[cat] += us
        rows.append((us, e.key[:80], e.count / reps, cat))
    total = sum(cats.values())
    print(
        f"kernel time a request {total / 1e3:.3f} ms; the rest of the wall time (gaps, host) "
        f"{ms - total / 1e3:.3f} ms; launches a request {sum(n for _, _, n, _ in rows):.0f}"
    )
    print("\n| category | ms | share |\n|---|---|---|")
    for c, us in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"| {c} | {us / 1e3:.3f} | {us / total:.0%} |")
    print("\n| kernel | category | us a request | launches | us a launch |\n|---|---|---|---|---|")
    for us, key, n, cat in sorted(rows, reverse=True)[:24]:
        print(f"| `{key}` | {cat} | {us:.0f} | {n:.0f} | {us / max(n, 1):.1f} |")
    del r, model
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-7b,llama3-8b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    clock = Clock(torch.device("cuda"), 3, 20)
    bw = max(copy_bandwidth(torch.device("cuda"), clock) for _ in range(3))
    for s in a.shapes.split(","):
        profile(s, a.context, a.question_tokens, bw, clock)


if __name__ == "__main__":
    main()
