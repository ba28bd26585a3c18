"""The warm question step with o_proj/down_proj on the Triton skinny GEMM (``FusedStep``'s
default, ``skinny_rows=64``) against cuBLAS (``skinny_rows=0``), alternating in one process, and
each product alone at 32 rows.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_skinny_gemm_h200/skinny_ab.py \
        --shapes llama3-8b,qwen2.5-7b,mistral-7b,gemma3-12b --contexts 10240,32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import gc
import statistics

import torch
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model, head_dim, weight_bytes
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth
from triton.testing import do_bench_cudagraph

from ragcompress.kv.fast import FusedStep
from ragcompress.kv.fast._gemm import skinny_linear


def products(model: torch.nn.Module, m: int) -> None:
    cfg = model.config
    hd = head_dim(cfg)
    shapes = {
        "o_proj": (cfg.hidden_size, cfg.num_attention_heads * hd),
        "down_proj": (cfg.hidden_size, cfg.intermediate_size),
    }
    print(f"| product ({m} rows) | N x K | cuBLAS us | skinny us |\n|---|---|---|---|")
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        t_ref = do_bench_cudagraph(lambda x=x, w=w: torch.nn.functional.linear(x, w), rep=50) * 1e3
        t_sk = do_bench_cudagraph(lambda x=x, w=w: skinny_linear(x, w), rep=50) * 1e3
        print(f"| {name} | {n} x {k} | {t_ref:.1f} | {t_sk:.1f} |")


def warm_ms(model: torch.nn.Module, ctx: int, qlen: int, skinny: int, clock: Clock) -> float:
    return clock(resident(model, ctx, qlen, FusedStep(model, skinny_rows=skinny)).warm)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,qwen2.5-7b,mistral-7b,gemma3-12b")
    ap.add_argument("--contexts", default="10240,32768")
    ap.add_argument("--question-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    clock = Clock(torch.device("cuda"), 3, 20)
    bw = copy_bandwidth(torch.device("cuda"), clock)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for shape in a.shapes.split(","):
        torch.manual_seed(0)
        model = build_model(shape, "cuda", torch.bfloat16)
        cfg = model.config
        print(f"\n## {shape}")
        products(model, a.question_tokens)
        print("| context | floor ms | cuBLAS warm ms (rounds) | skinny warm ms (rounds) | skinny / floor |")
        print("|---|---|---|---|---|")
        for ctx in (int(c) for c in a.contexts.split(",")):
            kv = ctx * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(cfg) * 2 * 2
            floor = (weight_bytes(model) + kv) / bw * 1e3
            runs: dict[int, list[float]] = {64: [], 0: []}
            for _ in range(a.rounds):
                for v in (64, 0):
                    runs[v].append(warm_ms(model, ctx, a.question_tokens, v, clock))
                    gc.collect()
                    torch.cuda.empty_cache()
            cb, sk = runs[0], runs[64]
            print(
                f"| {ctx} | {floor:.2f} | {' / '.join(f'{t:.2f}' for t in cb)} | "
                f"{' / '.join(f'{t:.2f}' for t in sk)} | {statistics.median(sk) / floor:.2f} |"
            )
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
