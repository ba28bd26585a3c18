"""Does prefetching o_proj's weights into L2 while the context attention runs make o_proj faster?

The warm 32K step's context pass is bound by its arithmetic (~1.7 TB/s of the H200's ~4.2 of
copy bandwidth on Qwen2.5-7B), and o_proj right after it reads 26-34 MB of weights from DRAM.
Hopper's ``cp.async.bulk.prefetch.L2`` pulls bytes into L2 without registers or shared memory,
so a launch before the context pass (or one on a side stream beside it) can start o_proj's
weights moving while the tensor cores work. Each variant below is a CUDA graph over every
layer, with each layer's own K/V and weights (so nothing is L2-hot by accident):

    ctx -> o_proj -> gate/up (cuBLAS) -> act·mul -> down

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_l2_prefetch_h200/l2_prefetch_ab.py

A diagnostic script; not part of the library.
"""

# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.ttft_timing import Clock, copy_bandwidth, graph_ms

from ragcompress.kv.fast._context import context_pass
from ragcompress.kv.fast._gemm import skinny_linear
from ragcompress.kv.fast._triton import act_mul
from ragcompress.kv.fast.waves import CONTIGUOUS

SHAPES = {
    "qwen2.5-7b": {"hidden": 3584, "heads": 28, "kvh": 4, "inter": 18944, "layers": 28},
    "llama3-8b": {"hidden": 4096, "heads": 32, "kvh": 8, "inter": 14336, "layers": 32},
}
N, D = 32, 128


@triton.jit
def _bulk_kernel(ptr, nbytes, CHUNK: tl.constexpr, NT: tl.constexpr, HINT: tl.constexpr):
    off = (tl.program_id(0) * NT + tl.arange(0, NT)).to(tl.int64) * CHUNK
    off = tl.minimum(off, nbytes - CHUNK)
    p = ptr.to(tl.pointer_type(tl.int8)) + off
    size = tl.full([NT], CHUNK, tl.int32)
    if HINT:
        tl.inline_asm_elementwise(
            "{ .reg .b64 pol; createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
            "cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; mov.u32 $0, 0; }",
            "=r,l,r", [p, size], dtype=tl.int32, is_pure=False, pack=1,
        )
    else:
        tl.inline_asm_elementwise(
            "{ cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [p, size], dtype=tl.int32, is_pure=False, pack=1,
        )


@triton.jit
def _line_kernel(ptr, nbytes, NT: tl.constexpr, PER: tl.constexpr):
    # per-128-byte-line prefetch with evict_last: PER lines a thread
    base = (tl.program_id(0) * NT + tl.arange(0, NT)).to(tl.int64) * (PER * 128)
    p0 = ptr.to(tl.pointer_type(tl.int8))
    for i in range(PER):
        off = tl.minimum(base + i * 128, nbytes - 128)
        tl.inline_asm_elementwise(
            "{ prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }",
            "=r,l", [p0 + off], dtype=tl.int32, is_pure=False, pack=1,
        )


def prefetch(w: torch.Tensor, kind: str, chunk: int = 65536) -> None:
    nbytes = w.numel() * w.element_size()
    if kind in ("bulk", "bulk_last"):
        nt = 128
        grid = (triton.cdiv(nbytes, chunk * nt),)
        _bulk_kernel[grid](w, nbytes, CHUNK=chunk, NT=nt, HINT=kind == "bulk_last", num_warps=4)
    elif kind == "line":
        nt, per = 128, 16
        grid = (triton.cdiv(nbytes, 128 * per * nt),)
        _line_kernel[grid](w, nbytes, NT=nt, PER=per, num_warps=4)
    else:
        raise ValueError(kind)


def build(name: str, ctx: int) -> dict[str, Any]:
    s = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    dev, bf = "cuda", torch.bfloat16

    def rnd(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * scale).to(bf)

    L, H, kvh, hid, inter = s["layers"], s["heads"], s["kvh"], s["hidden"], s["inter"]
    t: dict[str, Any] = {"s": s}
    t["K"] = [rnd(ctx, kvh, D, scale=1.0) for _ in range(L)]
    t["V"] = [rnd(ctx, kvh, D, scale=1.0) for _ in range(L)]
    t["Wo"] = [rnd(hid, H * D) for _ in range(L)]
    t["Wgu"] = [rnd(2 * inter, hid) for _ in range(L)]
    t["Wd"] = [rnd(hid, inter) for _ in range(L)]
    t["q"] = rnd(N, H, D, scale=1.0)
    t["x"] = rnd(N, H * D, scale=1.0)
    t["hs"] = rnd(N, hid, scale=1.0)
    segs = CONTIGUOUS.splits(torch.cuda.get_device_properties(0).multi_processor_count, N * (H // kvh), kvh, 64)
    per = -(-ctx // segs)
    starts = torch.arange(segs, device=dev, dtype=torch.int32) * per
    t["seg_start"] = starts
    t["used"] = torch.clamp(ctx - starts, max=per).to(torch.int32)
    t["segs"] = segs
    return t


def step(t: dict[str, Any], variant: str, side: torch.cuda.Stream) -> Callable[[], None]:
    L = t["s"]["layers"]
    main_only = variant.split(":")

    def run() -> None:
        for li in range(L):
            kind = main_only[1] if len(main_only) > 1 else None
            where = main_only[0]
            if kind is not None and where == "same":
                prefetch(t["Wo"][li], kind)
            if kind is not None and where == "side":
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    prefetch(t["Wo"][li], kind)
            if where not in ("oproj_only", "oproj_hot"):
                context_pass(t["q"], t["K"][li], t["V"][li], t["seg_start"], t["used"], 0.088)
            if kind is not None and where == "side":
                torch.cuda.current_stream().wait_stream(side)
            if where == "ctx_only":
                continue
            skinny_linear(t["x"], t["Wo"][li] if where != "oproj_hot" else t["Wo"][0])
            if where in ("oproj_only", "oproj_hot"):
                continue
            gu = torch.nn.functional.linear(t["hs"], t["Wgu"][li])
            skinny_linear(act_mul(gu, "silu"), t["Wd"][li])

    return run


def time_graph(fn: Callable[[], None], reps: int = 20) -> float:
    return graph_ms(fn, reps)


def main() -> None:
    print(torch.cuda.get_device_name(0), torch.__version__, triton.__version__)
    cuda = torch.device("cuda")
    bw = copy_bandwidth(cuda, Clock(cuda, 3, 10)) / 1e9  # the bench's probe, GB/s
    print(f"copy bandwidth {bw:.0f} GB/s (read + write counted)")
    side = torch.cuda.Stream()
    variants = ["base", "same:bulk_last", "side:bulk_last", "same:bulk", "side:bulk", "same:line",
                "ctx_only", "oproj_only", "oproj_hot"]
    for name in SHAPES:
        for ctx in (32768, 10240):
            t = build(name, ctx)
            L = t["s"]["layers"]
            wo_mb = t["Wo"][0].numel() * 2 / 1e6
            print(f"\n## {name}, {ctx} keys, {t['segs']} segments, {L} layers; o_proj {wo_mb:.1f} MB a layer "
                  f"({wo_mb / bw * 1e3:.1f} µs at copy bandwidth)\n")
            res: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(3):
                for v in variants:
                    try:
                        res[v].append(time_graph(step(t, v, side)) * 1e3 / L)
                    except Exception as e:  # a variant that does not compile is reported, not fatal
                        res[v].append(float("nan"))
                        print(f"{v}: {type(e).__name__}: {str(e)[:300]}")
            print("| variant | µs a layer (3 rounds) | best |")
            print("|---|---|---|")
            for v in variants:
                print(f"| {v} | {' / '.join(f'{r:.1f}' for r in res[v])} | {min(res[v]):.1f} |")
            del t
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
