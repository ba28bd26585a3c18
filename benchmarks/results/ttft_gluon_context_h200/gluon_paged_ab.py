"""Prepared for the next device call (not yet run): the bf16 paged context pass written in Gluon
with the next block's ``Q K^T`` under this block's softmax, as ``gluon_ab.py`` does for the
contiguous pass. Same grid and partials as the library's ``_paged.py`` (64-row programs of one
warpgroup, two an SM, one split of the table's entries each, the query rows rotated by
``-delta`` once a chunk); each 64-slot block's keys and values arrive by TMA at the table's
block id (the pool is zero-initialized, so a block's rows past its fill are finite and their
masked weights are 0). Against the library's paged pass, one layer, 32 question tokens,
``../ttft_paged_tiles_h200/``'s case.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gluon_context_h200/gluon_paged_ab.py        # GPU
    RAGCOMPRESS_SM90_LOG=/tmp/log PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/tests python3 <the same> --compile   # sm_90

A diagnostic script; not part of the library (it needs Triton's experimental Gluon).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, record_module, shape_rows
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ragcompress.kv.fast._context import _LOG2E
from ragcompress.kv.fast.waves import PAGED

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")
spike = record_module("gluon_ab", RESULTS / "ttft_gluon_context_h200" / "gluon_ab.py")
_weights = spike._weights


@gluon.jit
def _load_tile(desc, bars, smem, i, row, col, ntiles, STAGES: gl.constexpr):
    """Tile ``i`` (rows ``row``..) into ring stage ``i % STAGES``, when it exists. (The first
    device call used ``gluon_ab.py``'s two-stage helper, stage ``i % 2``, for 3 stages too: the
    3-stage kernel waited on stages its loads never filled, its launch failure at 10K.)"""
    st = i % STAGES
    ok = i < ntiles
    mbarrier.expect(bars.index(st), desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(desc, [row, col], bars.index(st), smem.index(st), pred=ok)


@gluon.jit
def _rotated(qrow, dl, rm, freq, delta, HALF: gl.constexpr, D: gl.constexpr, a_op: gl.constexpr):
    """The program's query rows rotated by ``-delta`` (rotate_half pairing), bf16, as the
    ``Q K^T`` product's register operand; read again at each rotation (L1/L2 hits)."""
    m = gl.expand_dims(rm, 1)
    qf = gl.load(qrow + gl.expand_dims(dl, 0), mask=m, other=0.0).to(gl.float32)
    qs = gl.load(qrow + gl.expand_dims((dl + HALF) % D, 0), mask=m, other=0.0).to(gl.float32)
    ang = delta.to(gl.float32) * freq
    sign = gl.where(dl < HALF, 1.0, -1.0)
    a = qf * gl.expand_dims(gl.cos(ang), 0) + qs * gl.expand_dims(sign * gl.sin(ang), 0)
    return gl.convert_layout(a.to(gl.bfloat16), a_op)


@gluon.jit
def _store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, NG, KVH: gl.constexpr, D: gl.constexpr,
                   BLOCK_M: gl.constexpr, mma_o: gl.constexpr):  # fmt: skip
    """The program's partial as the library's ``store_partial`` writes it: o normalized (bf16),
    lse in natural log (``m_i`` is base 2), ``-inf`` and o 0 for a row that saw no key."""
    rows_o: gl.constexpr = gl.SliceLayout(1, mma_o)
    rows = gl.program_id(2) * BLOCK_M + gl.arange(0, BLOCK_M, layout=rows_o)
    d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_o))
    l_o = gl.convert_layout(l_i, rows_o)
    m_o = gl.convert_layout(m_i, rows_o)
    seen = l_o > 0
    out = acc / gl.expand_dims(gl.where(seen, l_o, 1.0), 1)
    lse = gl.where(seen, m_o * 0.6931471805599453 + gl.log(gl.where(seen, l_o, 1.0)), float("-inf"))
    op = o_ptr + gl.expand_dims(((seg * NG + rows) * KVH + kv) * D, 1) + gl.expand_dims(d, 0)
    gl.store(op, out.to(gl.bfloat16), mask=gl.expand_dims(rows < NG, 1))
    gl.store(lse_ptr + (seg * KVH + kv) * NG + rows, lse, mask=rows < NG)


@gluon.jit
def _gl_paged(
    q_ptr, k_desc, v_desc, tab_ptr, freq_ptr, o_ptr, lse_ptr, NG, qk_scale,
    S: gl.constexpr, G: gl.constexpr, KVH: gl.constexpr, HALF: gl.constexpr, BS: gl.constexpr,
    BLOCK_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    D: gl.constexpr = 2 * HALF
    seg = gl.program_id(0)
    kv = gl.program_id(1)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BS, 16])
    mma_o: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, D, 16])
    a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
    rows_s: gl.constexpr = gl.SliceLayout(1, mma)
    rows_o: gl.constexpr = gl.SliceLayout(1, mma_o)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    r = gl.program_id(2) * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    dl = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    rm = r < NG
    qrow = q_ptr + gl.expand_dims(((r // G) * (KVH * G) + kv * G + r % G) * D, 1)
    freq = gl.load(freq_ptr + dl % HALF)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BS, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BS, D], v_desc.layout)
    kbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    vbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(kbar.index(i), count=1)
        mbarrier.init(vbar.index(i), count=1)
    fence_async_shared()
    count = gl.load(tab_ptr)
    per = (count + S - 1) // S
    e0 = seg * per
    n = gl.maximum(gl.minimum(e0 + per, count) - e0, 0)
    tab = tab_ptr + 3 * (1 + e0)  # this split's rows [block, used, delta]
    col = kv * D
    for i in gl.static_range(STAGES):
        # an entry past the split's end reads the table's last row (in bounds; its load is off)
        blk = gl.load(tab_ptr + 3 * (1 + gl.maximum(gl.minimum(e0 + i, count - 1), 0)))
        _load_tile(k_desc, kbar, k_smem, i, blk * BS, col, n, STAGES)
        _load_tile(v_desc, vbar, v_smem, i, blk * BS, col, n, STAGES)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows_s)
    acc = gl.zeros([BLOCK_M, D], gl.float32, mma_o)
    zero_s = gl.zeros([BLOCK_M, BS], gl.float32, mma)
    cols = gl.arange(0, BS, layout=gl.SliceLayout(0, mma))
    if n > 0:
        delta = gl.load(tab + 2)
        a = _rotated(qrow, dl, rm, freq, delta, HALF, D, a_op)
        mbarrier.wait(kbar.index(0), 0)
        s = warpgroup_mma(a, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False)
        blk = gl.load(tab + 3 * gl.minimum(STAGES, n - 1))
        _load_tile(k_desc, kbar, k_smem, STAGES, blk * BS, col, n, STAGES)
        acc = warpgroup_mma_init(acc)
        for j in range(n - 1):  # every iteration has a next block
            nx = j + 1
            dnx = gl.load(tab + 3 * nx + 2)
            if dnx != delta:  # a new chunk: rotate once
                a = _rotated(qrow, dl, rm, freq, dnx, HALF, D, a_op)
                delta = dnx
            mbarrier.wait(kbar.index(nx % STAGES), (nx // STAGES) & 1)
            s_next = warpgroup_mma(a, k_smem.index(nx % STAGES).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            used = gl.load(tab + 3 * j + 1)
            s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
            m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)  # under S_{j+1}
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # P V of block j - 1 done
            nv = j - 1 + STAGES  # its value stage is free (the first STAGES came in the prologue)
            blk = gl.load(tab + 3 * gl.minimum(nv, n - 1))
            _load_tile(v_desc, vbar, v_smem, nv, blk * BS, col, gl.where(j > 0, n, 0), STAGES)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, rows_o), 1)
            mbarrier.wait(vbar.index(j % STAGES), (j // STAGES) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(j % STAGES), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))  # S_{j+1} done, P V_j in flight
            nk = j + 1 + STAGES  # block j + 1's key stage is free
            blk = gl.load(tab + 3 * gl.minimum(nk, n - 1))
            _load_tile(k_desc, kbar, k_smem, nk, blk * BS, col, n, STAGES)
        last = n - 1
        used = gl.load(tab + 3 * last + 1)
        s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
        m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, rows_o), 1)
        mbarrier.wait(vbar.index(last % STAGES), (last // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(last % STAGES), acc)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(kbar.index(i))
        mbarrier.invalidate(vbar.index(i))
    _store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, NG, KVH, D, BLOCK_M, mma_o)


def gluon_paged(c: dict[str, Any], sms: int, stages: int = 2) -> tuple[Any, Any, int]:
    q, pk, pv, table = c["q"], c["pk"], c["pv"], c["blocks"]
    slots, kvh, d = pk.shape
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    sp = PAGED.splits(sms, ng, kvh, int(table.shape[0]) - 1)
    o = torch.empty(sp * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(sp, kvh, ng, device=q.device, dtype=torch.float32)
    layout = gl.NVMMASharedLayout.get_default_for([64, d], gl.bfloat16)
    descs = [TensorDescriptor(t, [slots, kvh * d], [t.stride(0), 1], [64, d], layout) for t in (pk, pv)]
    _gl_paged[(sp, kvh, triton.cdiv(ng, 64))](
        q.contiguous(), *descs, table, c["inv"], o, lse, ng, d**-0.5 * _LOG2E,
        S=sp, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=64, STAGES=stages, num_warps=4,
    )  # fmt: skip
    return o, lse, sp


CONTENDERS = {
    "library paged (Triton)": lambda c, sms: tiles.library(c),
    "Gluon paged, next QK^T under the softmax, 2 stages": lambda c, sms: gluon_paged(c, sms, 2),
    "Gluon paged, next QK^T under the softmax, 3 stages": lambda c, sms: gluon_paged(c, sms, 3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU)")
    args = ap.parse_args()
    if args.compile:
        from support.sm90 import install

        install()
        for shape in ((32, 8, 128), (28, 4, 128)):
            c = tiles.case(64 + 512 * 4, 32, *shape, "cpu", torch.bfloat16)
            for st in (2, 3):
                gluon_paged(c, 132, st)
        return
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | kernel | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    shape_rows(tiles, (1024, 10240, 32768, 131072), CONTENDERS)

if __name__ == "__main__":
    main()
