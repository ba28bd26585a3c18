"""The own pass + merge launch, alone, on the warm step's shapes: the library's
``_own_merge_kernel`` against a version that issues the context partials' loads before the own
pass (their latency then overlaps it) and stops its own-slot loop at the slots the query can see
(the library's runs over the whole region, masked). Swept over the own tile and the warps.

The profile (``results/ttft_warm_profile_h200/``) reads this launch at 10-11 µs a layer, 0.32 ms
a request at 32K: one warp per (query, head) over a chain of dependent loads.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_own_merge_h200/own_merge_ab.py           # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 <this script> --check-cpu                      # CPU

A diagnostic script; not part of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from ragcompress.kv.fast._merge import _strides3, merge_with_own
from ragcompress.kv.fast.step_meta import StepMeta

# (heads, kv heads, head dim, segments): the 32K warm step's context pass
SHAPES = {"llama3-8b": (32, 8, 128, 16), "qwen2.5-7b": (28, 4, 128, 16)}


@triton.jit
def _own_merge_v2(
    oa_ptr, la_ptr, q_ptr, k_ptr, v_ptr, used_ptr, qused_ptr, out_ptr,
    N, T, R, WINDOW, scale, la_s, la_h, la_r, q_n, q_h, k_r, k_h,
    S: tl.constexpr, SP: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
    BR: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    kv = h // G
    d = tl.arange(0, D)
    # the context partials first: nothing below depends on them until the merge
    s_idx = tl.arange(0, SP)
    sm = s_idx < S
    used = tl.load(used_ptr + s_idx, mask=sm, other=0)
    valid = sm & (used > 0)
    row = n * G + h % G
    la = tl.load(la_ptr + s_idx.to(tl.int64) * la_s + kv * la_h + row * la_r, mask=valid, other=0.0)
    seg_rows = s_idx.to(tl.int64) * (N * G) + row
    oa = tl.load(oa_ptr + (seg_rows[:, None] * KVH + kv) * D + d[None, :], mask=valid[:, None], other=0.0)
    b = n // T
    t = n % T
    used_own = tl.load(qused_ptr + b)
    last = t + used_own - T
    q = tl.load(q_ptr + n * q_n + h * q_h + d).to(tl.float32) * scale
    m_own = tl.full((), float("-inf"), tl.float32)
    l_own = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    lo = tl.maximum(last - WINDOW + 1, 0) // BR * BR
    hi = tl.minimum(tl.minimum(R, used_own), last + 1)
    for r0 in range(lo, hi, BR):
        r = r0 + tl.arange(0, BR)
        ok = (r < hi) & (last - r < WINDOW)
        rows = (b * R + r).to(tl.int64)
        k = tl.load(k_ptr + rows[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_own, tl.max(s, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe)
        alpha = tl.exp(m_own - m_safe)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l_own = l_own * alpha + tl.sum(p, axis=0)
        m_own = m_new
    la = tl.where(valid, la, float("-inf"))
    m = tl.maximum(tl.max(la, axis=0), m_own)
    m = tl.where(m == float("-inf"), 0.0, m)
    wa = tl.exp(la - m)
    wb = tl.exp(m_own - m)
    num = tl.sum(oa.to(tl.float32) * wa[:, None], axis=0) + acc * wb
    den = tl.sum(wa, axis=0) + l_own * wb
    out = num / tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + (n * (KVH * G) + h) * D + d, out.to(out_ptr.dtype.element_ty))


def v2(o_a: Any, lse_a: Any, ctx_used: Any, q: Any, own_k: Any, own_v: Any, meta: Any, scale: float,
       window: int | None = None, br: int = 16, warps: int = 1) -> Any:  # fmt: skip
    n, heads, d = q.shape
    kvh = o_a.shape[1]
    group = heads // kvh
    segs = ctx_used.numel()
    out = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    _own_merge_v2[(n, heads)](
        o_a, lse_a, q, own_k, own_v, ctx_used, meta.q_used, out,
        n, meta.qlen, meta.region, meta.region + 1 if window is None else window, scale,
        *_strides3(lse_a, n * group), q.stride(0), q.stride(1), own_k.stride(0), own_k.stride(1),
        S=segs, SP=triton.next_power_of_2(segs), G=group, KVH=kvh, D=d, BR=br, num_warps=warps,
    )  # fmt: skip
    return out


def case(
    t: int, region: int, used: int, h: int, kvh: int, d: int, segs: int, dev: str, dt: Any
) -> tuple[Any, ...]:
    """One question of ``t`` tokens with ``used`` own slots of a ``region``-slot region, and
    ``segs`` context partials (the last one empty)."""
    torch.manual_seed(0)
    g = h // kvh
    q = torch.randn(t, h, d, device=dev, dtype=dt)
    own_k = torch.randn(region, kvh, d, device=dev, dtype=dt)
    own_v = torch.randn(region, kvh, d, device=dev, dtype=dt)
    o_a = torch.randn(segs * t * g, kvh, d, device=dev, dtype=dt)
    lse = torch.randn(segs, kvh, t * g, device=dev, dtype=torch.float32) * 3
    ctx_used = torch.full((segs,), 7, dtype=torch.int32, device=dev)
    ctx_used[-1] = 0
    meta = StepMeta.__new__(StepMeta)
    meta.batch, meta.qlen, meta.region = 1, t, region
    meta.q_used = torch.tensor([used], dtype=torch.int32, device=dev)
    return o_a, lse, ctx_used, q, own_k, own_v, meta


def check_cpu() -> None:
    for t, region, used, window in ((5, 12, 9, None), (5, 40, 37, None), (6, 40, 37, 7), (3, 20, 3, 2)):
        args = case(t, region, used, 4, 2, 16, 3, "cpu", torch.float32)
        want = merge_with_own(*args, 0.3, window)
        for br in (4, 16):
            got = v2(*args, 0.3, window, br)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    print("cpu check: v2 equals the library's own pass + merge (windows, partly used regions)")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for name, (h, kvh, d, segs) in SHAPES.items():
        for region in (36, 64, 288):
            args = case(32, region, 32, h, kvh, d, segs, "cuda", torch.bfloat16)
            lib = partial(merge_with_own, *args, d**-0.5)
            want = lib()
            print(f"\n## {name}, region {region} (32 used): library {do_bench_cudagraph(lib) * 1e3:.2f} us")
            print("| variant | own tile | warps | us | max abs diff |\n|---|---|---|---|---|")
            for br, warps in ((16, 1), (32, 1), (32, 2), (64, 2), (64, 4)):
                run = partial(v2, *args, d**-0.5, None, br, warps)
                diff = float((run().float() - want.float()).abs().max())
                print(f"| v2 | {br} | {warps} | {do_bench_cudagraph(run) * 1e3:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
