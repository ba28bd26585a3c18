"""The paged context pass, the question's own pass and the merge in one launch, against the
library's two (the paged pass, then the own pass + merge), alternating in one process.

At 1K the two launches take ~7.8 + 7.3 µs a layer for a few MB (``../ttft_placed_host2_h200/``):
their latency, not their bytes. Here the own slots are one more segment of the paged pass's
grid (program ``S`` of each (KV head, row block): its rows' queries against their question's
own keys, causal, on the tensor cores), and the merge is done by whichever program of a
(KV head, row block) group finishes last: each stores its partial, fences, and adds one to the
group's counter; the one that reads ``S`` (all others done) reads the ``S + 1`` partials back
from L2, writes the output and zeroes the counter for the next step. One launch a layer, no
own-pass + merge kernel.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_fused_attend_h200/fused_attend_ab.py
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <the same> --check-cpu

µs by ``do_bench_cudagraph`` (a CUDA graph of the launches), best of 5 alternating rounds; one
layer, 32 question tokens, a region of 36 own slots with 32 used. A diagnostic script; not part
of the library.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.records import RESULTS, contender_rows, record_module

from ragcompress.kv.fast._context import _LOG2E, _clamped, _tile
from ragcompress.kv.fast._merge import merge_with_own
from ragcompress.kv.fast._online import base2_weights, folded_rows, store_partial
from ragcompress.kv.fast._paged import _entries, _row, paged_context, question_rows
from ragcompress.kv.fast._pdl import pdl_launch, release_next, wait_inputs
from ragcompress.kv.fast.step_meta import StepMeta
from ragcompress.kv.fast.waves import PAGED

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")


@triton.jit
def _fence(x):
    """Every thread's earlier stores visible GPU-wide before the counter's add (``fence.acq_rel.gpu``)."""
    return tl.inline_asm_elementwise(
        "fence.acq_rel.gpu; mov.u32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _fused_kernel(
    q_ptr, k_ptr, v_ptr, tab_ptr, freq_ptr, ok_ptr, ov_ptr, qused_ptr, o_ptr, lse_ptr, cnt_ptr, out_ptr,
    sk_t, sv_t, ok_r, NG, QG, TAB_Q, T, R, qk_scale,
    S: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BR: tl.constexpr, FENCE: tl.constexpr,
    LAST_MERGES: tl.constexpr, UNROLLED: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    seg, kv, rows, rm, tok, head, tab_ptr = question_rows(NG, QG, TAB_Q, tab_ptr, G, BLOCK_M)
    D: tl.constexpr = 2 * HALF
    wait_inputs(PDL)
    d = tl.arange(0, D)
    qrow = q_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    if seg < S:  # a context split: the library's paged loop
        sign = tl.where(d < HALF, 1.0, -1.0)
        freq = tl.load(freq_ptr + d % HALF)
        e0, e1 = _entries(tab_ptr, seg, S)
        n = tl.arange(0, BS).to(tl.int64)
        a = tl.zeros([BLOCK_M, D], k_ptr.dtype.element_ty)
        last = tl.full((), 0, tl.int32)
        blk, used, delta = _row(tab_ptr, e0, e1)
        for e in range(e0, e1):
            nblk, nused, ndelta = _row(tab_ptr, e + 1, e1)
            if (delta != last) | (e == e0):
                qf = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                qs = tl.load(qrow + ((d + HALF) % D)[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
                ang = delta.to(tl.float32) * freq
                a = (qf * tl.cos(ang)[None, :] + qs * (sign * tl.sin(ang))[None, :]).to(k_ptr.dtype.element_ty)
                last = delta
            keys = _clamped(blk * BS, n, used)
            m_i, l_i, acc = _tile(a, kb, vb, keys, n < used, sk_t, sv_t, qk_scale, m_i, l_i, acc, True, D)
            blk, used, delta = nblk, nused, ndelta
    else:  # the own segment: each row's question's own slots, causal (query t sees j <= t + used - T)
        qo = tl.load(qrow + d[None, :], mask=rm[:, None], other=0.0)
        qb = tok // T
        lastj = tok % T - T  # + used below
        b_lo = tl.min(tl.where(rm, qb, 1 << 40), axis=0)
        b_hi = tl.max(tl.where(rm, qb, -1), axis=0)
        r = tl.arange(0, BR)
        for b in range(b_lo, b_hi + 1):
            used_own = tl.load(qused_ptr + b)
            hi = tl.minimum(R, used_own)
            for r0 in range(0, hi, BR):
                j = r0 + r
                slots = b * R + tl.maximum(tl.minimum(j, hi - 1), 0)
                k = tl.load(ok_ptr + slots[:, None] * ok_r + kv * D + d[None, :])
                s = tl.dot(qo, tl.trans(k))
                vis = (qb[:, None] == b) & (j[None, :] <= lastj[:, None] + used_own) & (j[None, :] < hi)
                s = tl.where(vis & rm[:, None], s, float("-inf"))
                m_i, l_i, alpha, p = base2_weights(s, qk_scale, m_i, l_i)
                v = tl.load(ov_ptr + slots[:, None] * ok_r + kv * D + d[None, :])
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    release_next(PDL)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)
    if LAST_MERGES:  # the last program of this (KV head, row block) to finish merges the group
        group = kv * tl.num_programs(2) + tl.program_id(2)
        token = tl.full((), 1, tl.int32)
        if FENCE:
            token = _fence(token)
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + group, token, sem="acq_rel", scope="gpu")
        if done == S:
            tl.atomic_xchg(cnt_ptr + group, 0, sem="relaxed", scope="gpu")
            merge_rows(o_ptr, lse_ptr, out_ptr, kv, rows, rm, tok, head, NG, S + 1, G, KVH, D, BLOCK_M, UNROLLED)


@triton.jit
def merge_rows(o_ptr, lse_ptr, out_ptr, kv, rows, rm, tok, head, NG, PARTS: tl.constexpr, G: tl.constexpr,
               KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, UNROLLED: tl.constexpr):  # fmt: skip
    """Writes the output of the folded ``rows`` (BLOCK_M,) of KV head ``kv`` from their ``PARTS``
    partials (read past L1: other programs of a launch may have written them). ``UNROLLED``: the
    maximum first (every log-sum-exp in one load), then the partials' loads unrolled and
    independent of each other; else one online pass, each partial rescaling the sum so far (the
    first call's kernel: a chain of dependent loads)."""
    d = tl.arange(0, D)
    num = tl.zeros([BLOCK_M, D], tl.float32)
    if UNROLLED:
        s_idx = tl.arange(0, triton.next_power_of_2(PARTS))
        lse = tl.load(lse_ptr + (s_idx[:, None] * KVH + kv) * NG + rows[None, :],
                      mask=(s_idx[:, None] < PARTS) & rm[None, :], other=float("-inf"), cache_modifier=".cg")  # fmt: skip
        mm = tl.max(lse, axis=0)
        m_safe = tl.where(mm == float("-inf"), 0.0, mm)
        den = tl.sum(tl.exp(lse - m_safe[None, :]), axis=0)
        for s2 in tl.static_range(PARTS):
            ls = tl.load(lse_ptr + (s2 * KVH + kv) * NG + rows, mask=rm, other=float("-inf"), cache_modifier=".cg")
            os_ = tl.load(o_ptr + ((s2 * NG + rows[:, None]) * KVH + kv) * D + d[None, :],
                          mask=rm[:, None], other=0.0, cache_modifier=".cg")  # fmt: skip
            num += os_.to(tl.float32) * tl.exp(ls - m_safe)[:, None]
    else:
        mm = tl.full([BLOCK_M], float("-inf"), tl.float32)
        den = tl.zeros([BLOCK_M], tl.float32)
        for s2 in range(0, PARTS):
            ls = tl.load(lse_ptr + (s2 * KVH + kv) * NG + rows, mask=rm, other=float("-inf"), cache_modifier=".cg")
            os_ = tl.load(o_ptr + ((s2 * NG + rows[:, None]) * KVH + kv) * D + d[None, :],
                          mask=rm[:, None], other=0.0, cache_modifier=".cg")  # fmt: skip
            m_new = tl.maximum(mm, ls)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            al = tl.exp(mm - m_safe)
            w = tl.where(ls == float("-inf"), 0.0, tl.exp(ls - m_safe))
            num = num * al[:, None] + os_.to(tl.float32) * w[:, None]
            den = den * al + w
            mm = m_new
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(out_ptr + (tok[:, None] * (KVH * G) + head[:, None]) * D + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rm[:, None])  # fmt: skip


@triton.jit
def _merge_kernel(o_ptr, lse_ptr, out_ptr, NG, PARTS: tl.constexpr, G: tl.constexpr, KVH: tl.constexpr,
                  D: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr = False):  # fmt: skip
    """The merge alone (after a pass that wrote every partial, the own one included)."""
    _, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    wait_inputs(PDL)
    release_next(PDL)
    merge_rows(o_ptr, lse_ptr, out_ptr, kv, rows, rm, tok, head, NG, PARTS, G, KVH, D, BLOCK_M, True)


_COUNTERS: dict[tuple[int, str], torch.Tensor] = {}


def fused(
    q: Any, pk: Any, pv: Any, table: Any, inv: Any, own_k: Any, own_v: Any, meta: StepMeta, splits: int,
    scale: float, last_merges: bool = True, unrolled: bool = True, merge_rows_a_program: int = 8,
    block_m: int = 64, br: int = 64,
) -> Any:  # fmt: skip
    """(N, heads, D): the paged pass over ``table`` and the own pass in one launch, merged by each
    group's last program (``last_merges``) or by a second launch of ``merge_rows_a_program``
    folded rows a program."""
    n, h, d = q.shape
    kvh = pk.shape[1]
    g = h // kvh
    ng = n * g
    o = torch.empty((splits + 1) * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(splits + 1, kvh, ng, device=q.device, dtype=torch.float32)
    out = torch.empty(n, h, d, device=q.device, dtype=q.dtype)
    mb = triton.cdiv(ng, block_m)
    key = (kvh * mb, str(q.device))
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(kvh * mb, dtype=torch.int32, device=q.device)
    fence = q.is_cuda or q.dtype != torch.float32  # the interpreter (fp32 here) has no inline asm
    _fused_kernel[(splits + 1, kvh, mb)](
        q.contiguous(), pk, pv, table, inv, own_k, own_v, meta.q_used, o, lse, _COUNTERS[key], out,
        pk.stride(0), pv.stride(0), own_k.stride(0), ng, ng, 0, meta.qlen, meta.region, scale * _LOG2E,
        S=splits, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=block_m, BR=br, FENCE=fence,
        LAST_MERGES=last_merges, UNROLLED=unrolled, num_warps=4, num_stages=PAGED.stages, **pdl_launch(q),
    )  # fmt: skip
    if not last_merges:
        bm = merge_rows_a_program
        _merge_kernel[(1, kvh, triton.cdiv(ng, bm))](
            o, lse, out, ng, PARTS=splits + 1, G=g, KVH=kvh, D=d, BLOCK_M=bm,
            num_warps=1 if bm <= 8 else 2, **pdl_launch(q),
        )  # fmt: skip
    return out


def library(q: Any, pk: Any, pv: Any, table: Any, inv: Any, own_k: Any, own_v: Any, meta: StepMeta, splits: int,
            scale: float) -> Any:  # fmt: skip
    """The library's two launches: the paged pass, then the own pass + merge."""
    o, lse = paged_context(q, pk, pv, table, inv, 64, splits, scale)
    return merge_with_own(o, lse, None, q, own_k, own_v, meta, scale)


def case(ctx: int, t: int, h: int, kvh: int, d: int, dev: str, dt: Any, region: int = 36, used: int = 32,
         chunk: int = 512) -> tuple[Any, ...]:  # fmt: skip
    """``paged_tiles.case``'s queries, pool and block table, and one question's own slots."""
    c = tiles.case(ctx, t, h, kvh, d, dev, dt, chunk=chunk)
    own_k = torch.randn(region, kvh, d, device=dev, dtype=dt)
    own_v = torch.randn(region, kvh, d, device=dev, dtype=dt)
    meta = StepMeta.__new__(StepMeta)
    meta.batch, meta.qlen, meta.region = 1, t, region
    meta.q_used = torch.tensor([used], dtype=torch.int32, device=dev)
    return c["q"], c["pk"], c["pv"], c["blocks"], c["inv"], own_k, own_v, meta


VARIANTS: dict[str, dict[str, Any]] = {
    "one launch, the last program merges, chained loads (the first call's)": {"unrolled": False},
    "one launch, the last program merges, loads unrolled": {},
    "own segment in the paged launch + a merge launch, 4 rows a program": {"last_merges": False, "merge_rows_a_program": 4},
    "own segment in the paged launch + a merge launch, 8 rows a program": {"last_merges": False},
    "own segment in the paged launch + a merge launch, 16 rows a program": {"last_merges": False, "merge_rows_a_program": 16},
}  # fmt: skip


def check_cpu() -> None:
    for ctx, t, used, splits in ((64 + 512 + 100, 5, 9, 3), (64 + 1024, 3, 3, 2), (64 + 300, 6, 36, 1)):
        c = case(ctx, t, 4, 2, 16, "cpu", torch.float32, used=used, chunk=256)
        want = library(*c, splits, 0.3)
        for kw in VARIANTS.values():
            for _ in range(2):  # twice: the counters must have been reset
                torch.testing.assert_close(fused(*c, splits, 0.3, br=16, **kw), want, atol=1e-4, rtol=1e-4)
    print("cpu check: every variant equals the library's two launches")


def gpu() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print("| shape | context | contender | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    for ctx in (1024, 10240, 32768, 131072):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = case(ctx, 32, h, kvh, d, "cuda", torch.bfloat16)
            sp = PAGED.splits(sms, 32 * (h // kvh), kvh, int(c[3].shape[0]) - 1)
            fns: dict[str, Any] = {f"library, {sp} splits": partial(library, *c, sp, d**-0.5)}
            for name, kw in VARIANTS.items():
                for s in (sp, sp - 1):
                    fns[f"{name}, {s} splits"] = partial(fused, *c, s, d**-0.5, **kw)
            runs = {k: (lambda fn=fn: (fn(), None, 0)) for k, fn in fns.items()}
            contender_rows(f"{shape} | {ctx}", runs, lambda out, _lse, _sp: out)
            torch.cuda.empty_cache()


def compile_sm90() -> None:
    """Compile the fused kernel for sm_90 without a GPU (``tests/support/sm90.py``)."""
    from support.sm90 import install

    install()
    for h, kvh, d in tiles.SHAPES.values():
        c = case(64 + 512 * 4, 32, h, kvh, d, "cpu", torch.bfloat16)
        for kw in VARIANTS.values():
            fused(*c, 16, d**-0.5, **kw)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-cpu", action="store_true", help="interpreted, fp32: fused equals the library")
    ap.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU)")
    args = ap.parse_args()
    check_cpu() if args.check_cpu else compile_sm90() if args.compile else gpu()
