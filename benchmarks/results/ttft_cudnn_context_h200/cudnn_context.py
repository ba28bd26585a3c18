"""The context pass alone, one layer at a time under a CUDA graph: the library's Triton kernel
against cuDNN's fused attention (torch's ``_scaled_dot_product_cudnn_attention`` and its
variable-length twin ``_cudnn_attention_forward``), each over the same split-KV segments with
the query heads that share a KV head folded into the rows, so every call is a plain,
mask-free attention of R folded rows over L/S keys.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_cudnn_context_h200/cudnn_context.py

Eight layers, each its own K/V (so no layer's keys sit in L2 for the next), replayed 20 times
in one graph; µs a layer, TFLOP/s of the pass (4 * R * L * D * kv_heads), and the merged
output's largest difference from the library's. A diagnostic script kept as the record of one
device call; not part of the library.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ragcompress.kv.fast._context import context_pass
from ragcompress.kv.fast.waves import CONTIGUOUS

SHAPES = {"llama3-8b": (32, 8, 128), "qwen2.5-7b": (28, 4, 128)}
CONTEXTS = (10240, 32768, 131072)
LAYERS = 8
TOKENS = 32


def merge(o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Segments' partials o (S, kvh, R, D), lse (S, kvh, R) natural log -> (kvh, R, D) fp32."""
    w = torch.softmax(lse.float(), dim=0)
    return (o.float() * w[..., None]).sum(0)


def graph_us(fn: Callable[[int], Any], reps: int = 20) -> float:
    """µs a layer of ``fn(layer)`` over LAYERS layers, captured once and replayed ``reps`` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            for i in range(LAYERS):
                fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(LAYERS):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / reps / LAYERS)
    return sorted(times)[len(times) // 2]


def lib_pass(q: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], segs: int, scale: float):
    """The library's pass over ``segs`` equal segments, partials reshaped to (S, kvh, R, D)."""
    length = ks[0].shape[0]
    per = -(-length // segs)
    start = torch.arange(segs, device=q.device, dtype=torch.int32) * per
    used = (torch.full_like(start, length) - start).clamp(0, per)

    def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return context_pass(q, ks[i], vs[i], start, used, scale)

    def shaped(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = run(i)
        kvh, d = ks[i].shape[1], q.shape[2]
        rows = lse.shape[2]
        return o.view(segs, rows, kvh, d).transpose(1, 2), lse

    return run, shaped


def fold(q: torch.Tensor, kvh: int) -> torch.Tensor:
    """q (N, heads, D) -> (kvh, N*G, D): row t*G + j of KV head kv is query head kv*G + j."""
    n, h, d = q.shape
    return q.view(n, kvh, h // kvh, d).transpose(0, 1).reshape(kvh, n * (h // kvh), d)


def cudnn_dense(q: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], segs: int, scale: float):
    """cuDNN over a batch of ``segs`` segments: folded queries repeated per segment, K/V strided
    views of the buffer (S, kvh, L/S, D)."""
    length, kvh, d = ks[0].shape
    per = length // segs
    qf = torch.empty(segs, kvh, fold(q, kvh).shape[1], d, device=q.device, dtype=q.dtype)

    def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        qf.copy_(fold(q, kvh).unsqueeze(0).expand_as(qf))
        return attend(qf, i)

    def attend(qf: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = ks[i][: per * segs].view(segs, per, kvh, d).transpose(1, 2)
        v = vs[i][: per * segs].view(segs, per, kvh, d).transpose(1, 2)
        cudnn = torch.ops.aten._scaled_dot_product_cudnn_attention
        out = cudnn(qf, k, v, None, True, 0.0, False, False, scale=scale)
        return out[0], out[1]

    def shaped(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = run(i)
        return o, lse.reshape(segs, kvh, -1)

    return run, shaped


def cudnn_expanded(q: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], segs: int, scale: float):
    """As :func:`cudnn_dense`, the folded queries one copy with a batch stride of 0."""
    length, kvh, d = ks[0].shape
    per = length // segs
    qf = torch.empty_like(fold(q, kvh))

    def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        qf.copy_(fold(q, kvh))
        k = ks[i][: per * segs].view(segs, per, kvh, d).transpose(1, 2)
        v = vs[i][: per * segs].view(segs, per, kvh, d).transpose(1, 2)
        cudnn = torch.ops.aten._scaled_dot_product_cudnn_attention
        out = cudnn(
            qf.unsqueeze(0).expand(segs, -1, -1, -1), k, v, None, True, 0.0, False, False, scale=scale
        )
        return out[0], out[1]

    def shaped(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = run(i)
        return o, lse.reshape(segs, kvh, -1)

    return run, shaped


def cudnn_varlen(q: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor], segs: int, scale: float):
    """cuDNN's variable-length form: segments as sequences of one packed buffer (L, kvh, D),
    the folded queries packed (S*R, kvh, D), offsets on the device."""
    length, kvh, d = ks[0].shape
    per = length // segs
    rows = fold(q, kvh).shape[1]
    qf = torch.empty(segs, rows, kvh, d, device=q.device, dtype=q.dtype)
    cq = torch.arange(segs + 1, device=q.device, dtype=torch.int32) * rows
    ck = torch.arange(segs + 1, device=q.device, dtype=torch.int32) * per

    def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        qf.copy_(fold(q, kvh).transpose(0, 1).unsqueeze(0).expand_as(qf))
        out = torch.ops.aten._cudnn_attention_forward(
            qf.view(segs * rows, kvh, d), ks[i][: per * segs], vs[i][: per * segs], None, cq, ck, rows, per,
            True, 0.0, False, False, scale=scale,
        )  # fmt: skip
        return out[0], out[1]

    def shaped(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = run(i)
        o = o.view(segs, rows, kvh, d).transpose(1, 2)
        lse = lse.reshape(-1)
        if lse.numel() == segs * rows * kvh:  # (total_q, heads) or (heads, total_q): try both
            lse_a = lse.view(kvh, segs, rows).transpose(0, 1)
            return o, lse_a
        return o, lse.view(segs, kvh, -1)[..., :rows]

    return run, shaped


def main() -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, "cudnn", torch.backends.cudnn.version())
    for shape, (heads, kvh, d) in SHAPES.items():
        g = heads // kvh
        rows = TOKENS * g
        for length in CONTEXTS:
            q = torch.randn(TOKENS, heads, d, device=dev, dtype=torch.bfloat16)
            # the engine's layout: slots major, every layer's heads in a slot (slot stride
            # LAYERS * kvh * D), one layer's view per list entry
            kall = torch.randn(length, LAYERS, kvh, d, device=dev, dtype=torch.bfloat16)
            vall = torch.randn(length, LAYERS, kvh, d, device=dev, dtype=torch.bfloat16)
            ks = [kall[:, i] for i in range(LAYERS)]
            vs = [vall[:, i] for i in range(LAYERS)]
            scale = d**-0.5
            flop = 4 * rows * length * d * kvh
            lib_s = CONTIGUOUS.splits(sms, rows, kvh, length // 256)
            print(f"\n## {shape}, {length} keys, {TOKENS} question tokens ({rows} folded rows)")
            print(f"library splits: {lib_s}")
            print("| pass | segments | µs a layer | TFLOP/s | K/V floor µs | max abs diff from the library |")
            print("|---|---|---|---|---|---|")
            floor_us = 2 * length * kvh * d * 2 / 4.2e12 * 1e6
            _, ref_shaped = lib_pass(q, ks, vs, lib_s, scale)
            ref = merge(*ref_shaped(0))
            contenders: list[tuple[str, int, Any]] = [("library (Triton)", lib_s, lib_pass)]
            for segs in (8, 16, 32, 64):
                contenders.append(("cuDNN, batch of segments", segs, cudnn_dense))
            for segs in (16, 32):
                contenders.append(("cuDNN, q batch stride 0", segs, cudnn_expanded))
            for segs in (16, 32):
                contenders.append(("cuDNN varlen", segs, cudnn_varlen))
            for name, segs, make in contenders:
                try:
                    run, shaped = make(q, ks, vs, segs, scale)
                    diff = (merge(*shaped(0)) - ref).abs().max().item()
                    if length == CONTEXTS[0]:
                        print(f"<!-- {name} raw shapes: {[tuple(t.shape) for t in run(0)]} -->")
                    us = graph_us(run)
                    tf = flop / us / 1e6
                    print(f"| {name} | {segs} | {us:.1f} | {tf:.0f} | {floor_us:.1f} | {diff:.1e} |")
                except Exception as exc:  # a record of what each call does
                    print(f"| {name} | {segs} | {type(exc).__name__}: {str(exc)[:160]} | | | |")
                sys.stdout.flush()
            del ks, vs, kall, vall
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
