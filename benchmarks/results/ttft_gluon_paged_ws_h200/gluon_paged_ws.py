"""The bf16 paged context pass in Gluon, warp-specialized as FlashAttention-3 is: a producer
warp reads the block table and issues each block's key and value TMA loads into a ring of
``STAGES`` stages, so no table load sits on the tensor cores' path; the consumer warpgroup(s)
run the next block's ``Q K^T`` under this block's softmax (the intra-warpgroup overlap of
``../ttft_gluon_context_h200/``) and hand each stage back (an mbarrier arrive) once its product
is done. Against the library's paged pass (Triton) and the single-partition Gluon kernel of
``../ttft_gluon_context_h200/gluon_paged_ab.py`` (its ring now indexed by its own stage count:
the 3-stage kernel there loaded into stage ``i % 2``, the cause of that call's launch failure). One
layer, 32 question tokens, ``../ttft_paged_tiles_h200/``'s case.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gluon_paged_ws_h200/gluon_paged_ws.py   # GPU
    RAGCOMPRESS_SM90_LOG=/tmp/log PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/tests python3 <the same> --compile     # sm_90

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
from ragcompress.kv.fast.waves import Tiling

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")
spike = record_module("gluon_paged_ab", RESULTS / "ttft_gluon_context_h200" / "gluon_paged_ab.py")
_weights = spike._weights


@gluon.jit
def _producer(k_desc, v_desc, k_smem, v_smem, kready, vready, kfree, vfree, tab, n, col,
              BS: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
    """One warp: block ``j``'s keys and values into stage ``j % STAGES`` once the consumer has
    freed it (keys after their ``Q K^T``, values after their ``P V``); the next block id is
    read one block ahead so its latency is not on the ring's path."""
    blk = gl.load(tab)
    for j in range(n):
        st = j % STAGES
        ph = ((j // STAGES) & 1) ^ 1  # a fresh barrier's "previous phase" counts as complete
        nxt = gl.load(tab + 3 * gl.minimum(j + 1, n - 1))
        mbarrier.wait(kfree.index(st), ph)
        mbarrier.expect(kready.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [blk * BS, col], kready.index(st), k_smem.index(st))
        mbarrier.wait(vfree.index(st), ph)
        mbarrier.expect(vready.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [blk * BS, col], vready.index(st), v_smem.index(st))
        blk = nxt


@gluon.jit
def _consumer(q_ptr, freq_ptr, o_ptr, lse_ptr, k_smem, v_smem, kready, vready, kfree, vfree,
              tab, n, seg, kv, NG, qk_scale,
              G: gl.constexpr, KVH: gl.constexpr, HALF: gl.constexpr, BS: gl.constexpr,
              BLOCK_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    D: gl.constexpr = 2 * HALF
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BS, 16])
    mma_o: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, D, 16])
    a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
    rows_o: gl.constexpr = gl.SliceLayout(1, mma_o)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    r = gl.program_id(2) * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    dl = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    rm = r < NG
    qrow = q_ptr + gl.expand_dims(((r // G) * (KVH * G) + kv * G + r % G) * D, 1)
    freq = gl.load(freq_ptr + dl % HALF)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, mma))
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, mma))
    acc = gl.zeros([BLOCK_M, D], gl.float32, mma_o)
    zero_s = gl.zeros([BLOCK_M, BS], gl.float32, mma)
    cols = gl.arange(0, BS, layout=gl.SliceLayout(0, mma))
    if n > 0:
        delta = gl.load(tab + 2)
        a = spike._rotated(qrow, dl, rm, freq, delta, HALF, D, a_op)
        mbarrier.wait(kready.index(0), 0)
        s = warpgroup_mma(a, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False)
        mbarrier.arrive(kfree.index(0))
        used = gl.load(tab + 1)
        dnx = gl.load(tab + 3 * gl.minimum(1, n - 1) + 2)
        acc = warpgroup_mma_init(acc)
        for j in range(n - 1):  # every iteration has a next block
            nx = j + 1
            if dnx != delta:  # a new chunk: rotate once
                a = spike._rotated(qrow, dl, rm, freq, dnx, HALF, D, a_op)
                delta = dnx
            mbarrier.wait(kready.index(nx % STAGES), (nx // STAGES) & 1)
            s_next = warpgroup_mma(a, k_smem.index(nx % STAGES).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            used_nx = gl.load(tab + 3 * nx + 1)  # next iteration's table cells, read ahead
            dnx = gl.load(tab + 3 * gl.minimum(nx + 1, n - 1) + 2)
            s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
            m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)  # under S_{j+1}
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # P V of block j - 1 done
            mbarrier.arrive(vfree.index((j + STAGES - 1) % STAGES), pred=j > 0)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, rows_o), 1)
            mbarrier.wait(vready.index(j % STAGES), (j // STAGES) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(j % STAGES), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))  # S_{j+1} done, P V_j in flight
            mbarrier.arrive(kfree.index(nx % STAGES))
            used = used_nx
        last = n - 1
        s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
        m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, rows_o), 1)
        mbarrier.wait(vready.index(last % STAGES), (last // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(last % STAGES), acc)
    spike._store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, NG, KVH, D, BLOCK_M, mma_o)


@gluon.jit
def _gl_paged_ws(
    q_ptr, k_desc, v_desc, tab_ptr, freq_ptr, o_ptr, lse_ptr, NG, qk_scale,
    S: gl.constexpr, G: gl.constexpr, KVH: gl.constexpr, HALF: gl.constexpr, BS: gl.constexpr,
    BLOCK_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    D: gl.constexpr = 2 * HALF
    seg = gl.program_id(0)
    kv = gl.program_id(1)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BS, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BS, D], v_desc.layout)
    kready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    vready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kfree = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    vfree = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(kready.index(i), count=1)
        mbarrier.init(vready.index(i), count=1)
        mbarrier.init(kfree.index(i), count=1)
        mbarrier.init(vfree.index(i), count=1)
    fence_async_shared()
    count = gl.load(tab_ptr)
    per = (count + S - 1) // S
    e0 = seg * per
    n = gl.maximum(gl.minimum(e0 + per, count) - e0, 0)
    tab = tab_ptr + 3 * (1 + e0)  # this split's rows [block, used, delta]
    gl.warp_specialize(
        [
            (_consumer, (q_ptr, freq_ptr, o_ptr, lse_ptr, k_smem, v_smem, kready, vready, kfree, vfree,
                         tab, n, seg, kv, NG, qk_scale, G, KVH, HALF, BS, BLOCK_M, STAGES, num_warps)),
            (_producer, (k_desc, v_desc, k_smem, v_smem, kready, vready, kfree, vfree, tab, n, kv * D,
                         BS, STAGES)),
        ],
        [1],
        [40],
    )  # fmt: skip


def ws_paged(c: dict[str, Any], sms: int, stages: int, rows: int, per_sm: int) -> tuple[Any, Any, int]:
    q, pk, pv, table = c["q"], c["pk"], c["pv"], c["blocks"]
    slots, kvh, d = pk.shape
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    tiling = Tiling(rows=rows, per_sm=per_sm, stages=stages)
    bm = tiling.block_m(ng)
    sp = tiling.splits(sms, ng, kvh, int(table.shape[0]) - 1)
    o = torch.empty(sp * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(sp, kvh, ng, device=q.device, dtype=torch.float32)
    layout = gl.NVMMASharedLayout.get_default_for([64, d], gl.bfloat16)
    descs = [TensorDescriptor(t, [slots, kvh * d], [t.stride(0), 1], [64, d], layout) for t in (pk, pv)]
    _gl_paged_ws[(sp, kvh, triton.cdiv(ng, bm))](
        q.contiguous(), *descs, table, c["inv"], o, lse, ng, d**-0.5 * _LOG2E,
        S=sp, G=g, KVH=kvh, HALF=d // 2, BS=64, BLOCK_M=bm, STAGES=stages, num_warps=Tiling.warps(bm),
    )  # fmt: skip
    return o, lse, sp


CONTENDERS = {
    "library paged (Triton)": lambda c, sms: tiles.library(c),
    "Gluon, one partition, 2 stages": lambda c, sms: spike.gluon_paged(c, sms, 2),
    "Gluon, one partition, 3 stages": lambda c, sms: spike.gluon_paged(c, sms, 3),
}
for _rows, _per_sm, _stages in ((64, 2, 2), (64, 2, 3), (64, 2, 4), (128, 1, 3), (128, 1, 4), (128, 2, 2), (128, 2, 3)):
    CONTENDERS[f"Gluon WS, {_rows} rows, {_per_sm}/SM, {_stages} stages"] = (
        lambda c, sms, r=_rows, p=_per_sm, s=_stages: ws_paged(c, sms, s, r, p)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU)")
    ap.add_argument("--contexts", default="1024,10240,32768,131072")
    ap.add_argument("--only", default="", help="comma-separated name substrings (the library always runs)")
    args = ap.parse_args()
    names = [n for n in CONTENDERS if n.startswith("library") or not args.only
             or any(s in n for s in args.only.split(","))]  # fmt: skip
    if args.compile:
        from support.sm90 import install

        install()
        for shape in ((32, 8, 128), (28, 4, 128)):
            c = tiles.case(64 + 512 * 4, 32, *shape, "cpu", torch.bfloat16)
            for name in names[1:]:
                CONTENDERS[name](c, 132)
                print("compiled", shape, name, flush=True)
        return
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | kernel | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    shape_rows(tiles, (int(x) for x in args.contexts.split(",")), {n: CONTENDERS[n] for n in names})


if __name__ == "__main__":
    main()
