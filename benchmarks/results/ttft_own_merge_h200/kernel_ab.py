"""A/B 2: merge_with_own's launch shape (warps, tile), and a Triton fold+replicate of the queries
vs torch's fold + repeat; CUDA graphs of 32 calls, median of 20 replays."""
import importlib.util
import statistics
from pathlib import Path

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast import _merge
from ragcompress.kv.fast.attention import _flash
from ragcompress.kv.fast.shapes import context_splits
from ragcompress.kv.fast.step_meta import StepMeta

spec = importlib.util.spec_from_file_location("old_merge", Path(__file__).with_name("old_merge.py"))
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)


@triton.jit
def _fold_kernel(q_ptr, out_ptr, N, S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, D)
    x = tl.load(q_ptr + (n * (KVH * G) + h) * D + d)
    row = n * G + h % G
    for s in range(S):
        tl.store(out_ptr + (((s * N * G) + row) * KVH + h // G) * D + d, x)


def fold(q, sp, kvh, g):
    n, heads, d = q.shape
    out = torch.empty(sp * n * g, kvh, d, device=q.device, dtype=q.dtype)
    _fold_kernel[(n, heads)](q, out, n, S=sp, G=g, KVH=kvh, D=d, num_warps=1)
    return out


dev, dt = torch.device("cuda"), torch.bfloat16
n, heads, kvh, d, region = 32, 32, 8, 128, 48
g = heads // kvh


def graph_ms(fn, reps=32):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        gr.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps * 1000)
    return statistics.median(times)


print("| variant | µs per layer |")
print("|---|---|")
ctx = 32768
sp = context_splits(dev, n, heads, kvh, ctx)
meta = StepMeta(1, n, region, ctx, torch.tensor([ctx], dtype=torch.int32, device=dev),
                torch.tensor([n], dtype=torch.int32, device=dev), splits=sp, group=g)
meta.refresh()
q = torch.randn(n, heads, d, device=dev, dtype=dt)
ck, cv = (torch.randn(ctx, kvh, d, device=dev, dtype=dt) for _ in "kv")
ok, ov = (torch.randn(region, kvh, d, device=dev, dtype=dt) for _ in "kv")
scale = d**-0.5
qs = q.view(n, kvh, g, d).permute(0, 2, 1, 3).reshape(n * g, kvh, d).repeat(sp, 1, 1)
assert torch.equal(fold(q, sp, kvh, g), qs)
o_a, lse_a = _flash(qs, ck, cv, meta.cu_q_ctx, meta.cu_k_ctx, n * g, meta.max_seg, False, scale, meta.ctx_used)


def own_old():
    o_b, lse_b = _flash(q, ok, ov, meta.cu_q_own, meta.cu_k_own, meta.qlen, meta.region, True, scale, meta.q_used)
    return old.merge_partials(o_a, lse_a, o_b, lse_b, meta.ctx_used, meta.qlen, g)


def own_new(warps, br):
    def run():
        out = torch.empty_like(q)
        _merge._own_merge_kernel[(n, heads)](
            o_a, lse_a, q, ok, ov, meta.ctx_used, meta.q_used, out,
            n, meta.qlen, region, region + 1, scale,
            *_merge._strides3(lse_a, n * g), q.stride(0), q.stride(1), ok.stride(0), ok.stride(1),
            S=sp, SP=triton.next_power_of_2(sp), G=g, KVH=kvh, D=d, BR=br, num_warps=warps,
        )
        return out
    return run


ref = own_old()
rows = [("own pass (flash) + merge_partials (old)", own_old)]
for warps in (1, 2, 4):
    for br in (16, 32, 64):
        fn = own_new(warps, br)
        err = ((fn().float() - ref.float()).norm() / ref.float().norm()).item()
        rows.append((f"merge_with_own warps={warps} BR={br} (rel diff {err:.0e})", fn))
rows += [
    ("fold + repeat (torch, old)", lambda: q.view(n, kvh, g, d).permute(0, 2, 1, 3).reshape(n * g, kvh, d).repeat(sp, 1, 1)),
    ("fold + replicate (Triton, one launch)", lambda: fold(q, sp, kvh, g)),
]
for name, fn in rows:
    print(f"| {name} | {graph_ms(fn):.1f} |")
