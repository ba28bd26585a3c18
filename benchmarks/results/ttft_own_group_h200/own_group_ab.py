"""The own pass + merge launch, alone: the library's program per (query token, head) against
one program per (query token, KV head) that holds the heads sharing that KV head.

The profile of the warm 32K step (``results/ttft_warm_profile_h200/``, rerun 2026-12-02) reads
this launch at 7.5 µs a layer on Qwen2.5-7B, 0.21 ms a request. Each of its 32 x 28 programs
reads its KV head's own keys and values (16 KB at 32 slots) and its 16 context partials: the
group's 7 heads read the same own slots 7 times, ~18 MB from L2 a layer. Grouped, the own slots
are read once a group, 128 programs (one wave) instead of 896.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_own_group_h200/own_group_ab.py            # GPU
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
SHAPES = {"qwen2.5-7b": (28, 4, 128, 16), "llama3-8b": (32, 8, 128, 16), "gemma3-12b": (16, 8, 256, 16)}


@triton.jit
def _own_merge_group(
    oa_ptr, la_ptr, q_ptr, k_ptr, v_ptr, used_ptr, qused_ptr, out_ptr,
    N, T, R, WINDOW, scale, la_s, la_h, la_r, q_n, q_h, k_r, k_h,
    S: tl.constexpr, SP: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, KVH: tl.constexpr,
    D: tl.constexpr, BR: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, D)
    j = tl.arange(0, GP)
    jm = j < G
    head = kv * G + j  # (GP,) the group's query heads
    # the context partials first: nothing below depends on them until the merge
    s_idx = tl.arange(0, SP)
    sm = s_idx < S
    used = tl.load(used_ptr + s_idx, mask=sm, other=0)
    seen = (sm & (used > 0))[:, None] & jm[None, :]  # (SP, GP)
    row = n * G + j  # folded query rows inside each segment
    la = tl.load(
        la_ptr + s_idx.to(tl.int64)[:, None] * la_s + kv * la_h + row[None, :] * la_r,
        mask=seen, other=float("-inf"),
    )  # fmt: skip
    seg_rows = s_idx.to(tl.int64)[:, None] * (N * G) + row[None, :]  # (SP, GP)
    oa = tl.load(
        oa_ptr + ((seg_rows * KVH + kv) * D)[:, :, None] + d[None, None, :], mask=seen[:, :, None], other=0.0
    )  # fmt: skip
    b = n // T
    t = n % T
    used_own = tl.load(qused_ptr + b)
    last = t + used_own - T  # the newest own slot this query sees
    q = tl.load(q_ptr + n * q_n + head[:, None] * q_h + d[None, :], mask=jm[:, None], other=0.0)
    q = q.to(tl.float32) * scale  # (GP, D)
    m_own = tl.full((GP,), float("-inf"), tl.float32)
    l_own = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    lo = tl.maximum(last - WINDOW + 1, 0) // BR * BR
    hi = tl.minimum(tl.minimum(R, used_own), last + 1)
    for r0 in range(lo, hi, BR):
        r = r0 + tl.arange(0, BR)
        ok = (r < hi) & (last - r < WINDOW)
        slots = (b * R + r).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(v_ptr + slots[:, None] * k_r + kv * k_h + d[None, :], mask=ok[:, None], other=0.0)
        s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)  # (GP, BR)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_own, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_own - m_safe)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        l_own = l_own * alpha + tl.sum(p, axis=1)
        m_own = m_new
    # the merge
    m = tl.maximum(tl.max(la, axis=0), m_own)  # (GP,)
    m = tl.where(m == float("-inf"), 0.0, m)
    wa = tl.exp(la - m[None, :])  # (SP, GP)
    wb = tl.exp(m_own - m)
    num = tl.sum(oa.to(tl.float32) * wa[:, :, None], axis=0) + acc * wb[:, None]
    den = tl.sum(wa, axis=0) + l_own * wb
    out = num / tl.where(den > 0, den, 1.0)[:, None]  # a padded query row with no keys at all: 0
    tl.store(out_ptr + (n * (KVH * G) + head[:, None]) * D + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=jm[:, None])  # fmt: skip


def grouped(o_a: Any, lse_a: Any, ctx_used: Any, q: Any, own_k: Any, own_v: Any, meta: Any, scale: float,
            window: int | None = None, br: int = 8, warps: int = 4) -> Any:  # fmt: skip
    n, heads, d = q.shape
    kvh = o_a.shape[1]
    group = heads // kvh
    segs = ctx_used.numel()
    out = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    _own_merge_group[(n, kvh)](
        o_a, lse_a, q, own_k, own_v, ctx_used, meta.q_used, out,
        n, meta.qlen, meta.region, meta.region + 1 if window is None else window, scale,
        *_strides3(lse_a, n * group), q.stride(0), q.stride(1), own_k.stride(0), own_k.stride(1),
        S=segs, SP=triton.next_power_of_2(segs), G=group, GP=triton.next_power_of_2(group), KVH=kvh, D=d,
        BR=br, num_warps=warps,
    )  # fmt: skip
    return out


def case(
    b: int, t: int, region: int, used: list[int], h: int, kvh: int, d: int, segs: int, dev: str, dt: Any
) -> tuple[Any, ...]:
    """``b`` questions of ``t`` tokens with ``used`` own slots each of a ``region``-slot region,
    and ``segs`` context partials (the last one empty)."""
    torch.manual_seed(0)
    g, n = h // kvh, b * t
    q = torch.randn(n, h, d, device=dev, dtype=dt)
    own_k = torch.randn(b * region, kvh, d, device=dev, dtype=dt)
    own_v = torch.randn(b * region, kvh, d, device=dev, dtype=dt)
    o_a = torch.randn(segs * n * g, kvh, d, device=dev, dtype=dt)
    lse = torch.randn(segs, kvh, n * g, device=dev, dtype=torch.float32) * 3
    ctx_used = torch.full((segs,), 7, dtype=torch.int32, device=dev)
    ctx_used[-1] = 0
    meta = StepMeta.__new__(StepMeta)
    meta.batch, meta.qlen, meta.region = b, t, region
    meta.q_used = torch.tensor(used, dtype=torch.int32, device=dev)
    return o_a, lse, ctx_used, q, own_k, own_v, meta


def check_cpu() -> None:
    cases = ((1, 5, 12, [9], None), (1, 5, 40, [37], None), (1, 6, 40, [37], 7), (1, 3, 20, [3], 2),
             (2, 4, 16, [4, 11], None), (2, 4, 16, [4, 11], 3))  # fmt: skip
    for h, kvh in ((4, 2), (7, 1), (6, 2)):
        for b, t, region, used, window in cases:
            args = case(b, t, region, used, h, kvh, 16, 3, "cpu", torch.float32)
            want = merge_with_own(*args, 0.3, window)
            for br in (4, 8):
                got = grouped(*args, 0.3, window, br)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    print("cpu check: the grouped kernel equals the library's own pass + merge (GQA groups of 2, 3, 7;")
    print("windows; partly used regions; two questions)")


def gpu() -> None:
    from triton.testing import do_bench_cudagraph

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for name, (h, kvh, d, segs) in SHAPES.items():
        for region in (36, 288):
            args = case(1, 32, region, [32], h, kvh, d, segs, "cuda", torch.bfloat16)
            lib = partial(merge_with_own, *args, d**-0.5)
            want = lib()
            rows = [("library, a program a (token, head)", "32", "2", do_bench_cudagraph(lib), 0.0)]
            for br, warps in ((4, 4), (8, 4), (8, 8), (16, 4), (16, 8)):
                run = partial(grouped, *args, d**-0.5, None, br, warps)
                try:
                    diff = float((run().float() - want.float()).abs().max())
                    t = do_bench_cudagraph(run)
                except Exception as e:  # a configuration that does not fit
                    print(f"{name} {br}/{warps}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                rows.append(("grouped, a program a (token, KV head)", str(br), str(warps), t, diff))
            lib_again = do_bench_cudagraph(lib)
            rows.append(("library again", "32", "2", lib_again, 0.0))
            print(f"\n## {name}, 32 tokens, region {region} (32 used), {segs} segments")
            print("| kernel | own tile | warps | µs | max abs diff from the library |\n|---|---|---|---|---|")
            for label, br, warps, t, diff in rows:
                print(f"| {label} | {br} | {warps} | {t * 1e3:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-cpu", action="store_true")
    check_cpu() if ap.parse_args().check_cpu else gpu()
