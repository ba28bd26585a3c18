"""The contiguous context pass at batch shapes: its tiles swept, beside torch's flash and cuDNN
attention over the same dense problem, one layer (Llama-3-8B heads: 32 query heads, 8 KV heads,
128 channels), 32 question tokens a question, one shared 10K context.

At batch 32 the step spends ~40 ms (797 queries/s, `../ttft_lead_h200/`) against a compute
floor of ~26 ms; its context attention is 172 GFLOP a layer (4,096 folded rows a KV head over
10,240 keys). The library runs it as 256 programs of 128 rows, one split, 128-key tiles, 8
warps, 3 stages. µs by ``triton.testing.do_bench``; TFLOP/s = 4 x rows x keys x 128 / time;
each variant's merged output checked against the library split's.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_batch_context_h200/batch_context.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <the same script> --check-cpu

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton

from ragcompress.kv.fast._context import _LOG2E, _context_kernel
from ragcompress.kv.fast._online import partials

HEADS, KVH, D = 32, 8, 128


def run(q: Any, k: Any, v: Any, segs: int, bm: int, bn: int, warps: int, stages: int) -> Any:
    """The library kernel over ``segs`` equal segments with explicit tiles; merged (N, heads, D)."""
    n_keys = k.shape[0]
    per = -(-n_keys // segs)
    start = torch.arange(segs, dtype=torch.int32, device=q.device) * per
    used = (torch.clamp(n_keys - start, max=per)).to(torch.int32)
    g, ng, o, lse = partials("batch_context", q, k, v, segs)
    grid: Any = (segs, KVH, triton.cdiv(ng, bm))
    _context_kernel[grid](
        q, k, v, start, used, o, lse, q.stride(0), q.stride(1), k.stride(0), v.stride(0), ng,
        D**-0.5 * _LOG2E, G=g, KVH=KVH, D=D, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse


def merged(o: Any, lse: Any) -> Any:
    """Partials (S*NG, KVH, D), (S, KVH, NG) -> (NG, KVH, D) by their log-sum-exp weights."""
    s = lse.shape[0]
    w = torch.softmax(lse, dim=0)  # (S, KVH, NG)
    return (o.view(s, -1, KVH, D).float() * w.permute(0, 2, 1)[..., None]).sum(0)


def sdpa(q: Any, k: Any, v: Any, flop: int) -> None:
    """torch's attention backends over the same dense problem (every token sees every key)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qd = q.transpose(0, 1)[None]  # (1, heads, n, D)
    kd, vd = k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    sdp = torch.nn.functional.scaled_dot_product_attention
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(be):
                ms = triton.testing.do_bench(lambda: sdp(qd, kd, vd, enable_gqa=True))
            print(f"| torch SDPA {be.name} (dense, GQA) | | {ms * 1e3:.1f} | {flop / ms / 1e9:.0f} | |")
        except Exception as err:  # a backend this build or shape lacks: say so, go on
            print(f"| torch SDPA {be.name} | | failed: {type(err).__name__}: {str(err)[:80]} | | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check-cpu", action="store_true", help="interpreted, small: equality only")
    args = p.parse_args()
    dev = "cpu" if args.check_cpu else "cuda"
    keys = 300 if args.check_cpu else 10240
    batches = (2,) if args.check_cpu else (1, 8, 32)
    # fp32 on the CPU: Triton 3.9's interpreter multiplies bf16 tiles wrongly (the library's own
    # context_pass too; its tests run fp32)
    dt = torch.float32 if args.check_cpu else torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    k = torch.randn(keys, KVH, D, device=dev, dtype=dt, generator=g)
    v = torch.randn(keys, KVH, D, device=dev, dtype=dt, generator=g)
    configs = [  # (BLOCK_M, BLOCK_N, warps, stages); segments: one wave of 132 SMs
        (128, 128, 8, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 4),
        (128, 64, 8, 4),
        (128, 128, 8, 2),
        (128, 64, 4, 3),
        (64, 64, 4, 3),
        (64, 128, 4, 3),
        (64, 64, 4, 4),
    ]
    if args.check_cpu:
        configs = [(16, 16, 1, 1), (32, 16, 1, 1)]
    for b in batches:
        n = 32 * b
        q = torch.randn(n, HEADS, D, device=dev, dtype=dt, generator=g)
        rows = n * HEADS
        flop = 4 * rows * keys * D
        print(f"\nbatch {b}: {n} question tokens, {rows // KVH} folded rows a KV head, {keys} keys")
        print("| kernel | segments | µs | TFLOP/s | max abs diff |\n|---|---|---|---|---|")
        ref = None
        for bm, bn, w, st in configs:
            programs = KVH * -(-rows // KVH // bm)
            segs = max(1, 132 // programs) if not args.check_cpu else 2
            try:
                o, lse = run(q, k, v, segs, bm, bn, w, st)
            except Exception as err:  # e.g. out of shared memory: say so, go on
                print(f"| {bm} x {bn}, {w} warps, {st} stages | {segs} | {type(err).__name__} | | |")
                continue
            out = merged(o, lse)
            if ref is None:  # the first config, against a dense fp32 softmax over the same keys
                qf = q.float().view(n, KVH, HEADS // KVH, D).permute(1, 0, 2, 3).reshape(KVH, -1, D)
                att = torch.softmax(qf @ k.float().transpose(0, 1).transpose(1, 2) * D**-0.5, dim=-1)
                dense = (att @ v.float().transpose(0, 1)).transpose(0, 1)  # (NG, KVH, D)
                print(f"dense check: max abs diff {(out - dense).abs().max().item():.1e}")
                ref = out
            diff = (out - ref).abs().max().item()
            name = f"triton {bm} rows x {bn} keys, {w} warps, {st} stages"
            if args.check_cpu:
                print(f"| {name} | {segs} | | | {diff:.1e} |")
                continue
            ms = triton.testing.do_bench(lambda x=q, s=segs, a=(bm, bn, w, st): run(x, k, v, s, *a))
            print(f"| {name} | {segs} | {ms * 1e3:.1f} | {flop / ms / 1e9:.0f} | {diff:.1e} |")
        if args.check_cpu:
            continue
        sdpa(q, k, v, flop)


if __name__ == "__main__":
    main()
