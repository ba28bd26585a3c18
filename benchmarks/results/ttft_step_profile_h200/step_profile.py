"""Where the warm question step's time goes (batch 1, 32 question tokens, chunks resident), and
each of the step's GEMM shapes against the bytes it reads: cuBLAS (``F.linear``) next to a
Triton split-K kernel for skinny products, swept over its tile sizes.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_step_profile_h200/step_profile.py \
        --shapes llama3-8b,qwen2.5-7b --context 32768

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model, head_dim, weight_bytes
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth
from triton.testing import do_bench_cudagraph

CATEGORIES = (
    ("gemm", r"nvjet|gemm|cutlass|sm90_xmma|splitK|_skinny"),
    ("context attention", r"flash_fwd|_flash|fmha"),
    ("merge", r"merge"),
    ("fold", r"fold"),
    ("rope_write", r"rope_write"),
    ("act_mul", r"act_mul"),
    ("rmsnorm", r"rmsnorm"),
)


@triton.jit
def _skinny(
    x_ptr, w_ptr, y_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr
):
    # y (M, N) = x (M, K) @ w (N, K)^T; program (n-block, k-split); fp32 atomics when split
    pn, pk = tl.program_id(0), tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    per = K // SPLIT
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(pk * per, (pk + 1) * per, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=rn[None, :] < N, other=0.0)
        acc += tl.dot(x, w)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if SPLIT == 1:
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=mask, sem="relaxed")


def skinny(x: torch.Tensor, w: torch.Tensor, bn: int, bk: int, split: int, stages: int) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    if split == 1:
        y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    else:
        y = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(n, bn), split)
    _skinny[grid](
        x,
        w,
        y,
        m,
        n,
        k,
        BM=max(16, triton.next_power_of_2(m)),
        BN=bn,
        BK=bk,
        SPLIT=split,
        num_warps=4,
        num_stages=stages,
    )
    return y if split == 1 else y.to(x.dtype)


def gemm_shapes(cfg: Any) -> dict[str, tuple[int, int]]:
    h, d = cfg.hidden_size, head_dim(cfg)
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    return {
        "qkv": (qkv, h),
        "o_proj": (h, cfg.num_attention_heads * d),
        "gate_up": (2 * cfg.intermediate_size, h),
        "down": (h, cfg.intermediate_size),
    }


def sweep(cfg: Any, m: int, bw: float) -> None:
    print(
        f"\nGEMMs at M = {m}: us per call, GB/s of weights read, share of copy bandwidth {bw / 1e9:.0f} GB/s"
    )
    print(
        "| shape | N x K | MB | cuBLAS us | cuBLAS GB/s | best Triton us | GB/s | config | Triton max rel err |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (n, k) in gemm_shapes(cfg).items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = torch.nn.functional.linear(x, w)
        mb = w.numel() * 2 / 1e6
        t_ref = do_bench_cudagraph(lambda: torch.nn.functional.linear(x, w), rep=50) * 1e3
        best: tuple[float, str, float] = (1e9, "", 0.0)
        for bn in (32, 64, 128):
            for bk in (128, 256):
                for split in (1, 2, 4):
                    for stages in (3, 5):
                        if k % (split * bk):
                            continue
                        try:
                            out = skinny(x, w, bn, bk, split, stages)
                            err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
                            t = do_bench_cudagraph(lambda: skinny(x, w, bn, bk, split, stages), rep=50) * 1e3
                        except Exception as e:  # a config that does not compile here
                            print(f"  {name} bn{bn} bk{bk} split{split} st{stages}: {type(e).__name__}")
                            continue
                        if t < best[0]:
                            best = (t, f"BN{bn} BK{bk} split{split} stages{stages}", err)
        print(
            f"| {name} | {n} x {k} | {mb:.1f} | {t_ref:.1f} | {mb * 1e3 / t_ref:.0f} | {best[0]:.1f} | "
            f"{mb * 1e3 / best[0]:.0f} | {best[1]} | {best[2]:.2e} |"
        )
        del w, x


def step_profile(shape: str, ctx: int, qlen: int) -> None:
    torch.manual_seed(0)
    model = build_model(shape, "cuda", torch.bfloat16)
    cfg = model.config
    clock = Clock(torch.device("cuda"), 3, 20)
    bw = copy_bandwidth(torch.device("cuda"), clock)
    r = resident(model, ctx, qlen)
    warm = r.warm
    kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))
    ms = clock(warm)
    kv_bytes = ctx * kv_shape[0] * kv_shape[1] * kv_shape[2] * 2 * 2
    wb = weight_bytes(model)
    floor = (wb + kv_bytes) / bw * 1e3
    print(
        f"\n## {shape}, {ctx} tokens, warm step {ms:.2f} ms, floor {floor:.2f} ms "
        f"(weights {wb / 1e9:.2f} GB + KV {kv_bytes / 1e9:.2f} GB at {bw / 1e9:.0f} GB/s)"
    )
    reps = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            warm()
    cats: dict[str, float] = defaultdict(float)
    rows = []
    for e in p.key_averages():
        us = e.device_time_total / reps
        if us <= 0:
            continue
        cat = next((c for c, pat in CATEGORIES if re.search(pat, e.key)), "other")
        cats[cat] += us
        rows.append((us, e.key[:70], e.count // reps))
    total = sum(cats.values())
    print(f"GPU kernel time per request {total / 1e3:.2f} ms (the rest of {ms:.2f} ms: gaps and host)")
    print("| category | ms | share |\n|---|---|---|")
    for c, us in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"| {c} | {us / 1e3:.3f} | {us / total:.0%} |")
    print("| kernel | us per request | launches |\n|---|---|---|")
    for us, key, n in sorted(rows, reverse=True)[:16]:
        print(f"| {key} | {us:.0f} | {n} |")
    print(f"weights at copy bandwidth: {wb / bw * 1e3:.2f} ms; context KV: {kv_bytes / bw * 1e3:.2f} ms")
    sweep(cfg, qlen, bw)
    del r, model
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,qwen2.5-7b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for s in a.shapes.split(","):
        step_profile(s, a.context, a.question_tokens)


if __name__ == "__main__":
    main()
