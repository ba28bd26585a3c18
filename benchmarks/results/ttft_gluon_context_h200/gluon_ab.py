"""A Gluon spike: the contiguous context pass written with explicit warpgroup products and waits,
so that the next key tile's ``Q K^T`` runs on the tensor cores while this tile's softmax runs
(FlashAttention-3's intra-warpgroup overlap, which Triton's compiler does not emit:
``../ttft_scores_ahead_h200/``). Keys and values arrive by TMA into two-stage rings, one
barrier a stage. Against the library's Triton pass and the same Gluon kernel without the
overlap (each tile's product waited for before its softmax). One layer, 32 question tokens,
the 128-row / 128-key / 8-warp split of the library's pass, ``../ttft_paged_tiles_h200/``'s case.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_gluon_context_h200/gluon_ab.py          # GPU
    RAGCOMPRESS_SM90_LOG=/tmp/log PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/tests python3 <this> --compile   # sm_90

A diagnostic script kept as the record of one device call; not part of the library (it needs
Triton's experimental Gluon, 3.6 here).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
from ragcompress_bench.records import RESULTS, contender_rows, record_module
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

from ragcompress.kv.fast._context import _LOG2E, context_pass
from ragcompress.kv.fast.waves import CONTIGUOUS

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")


@gluon.jit
def _load_tile(desc, bars, smem, i, row, col, ntiles):
    """Tile ``i`` (rows ``row``..) into ring stage ``i % 2``, when it exists."""
    st = i % 2
    ok = i < ntiles
    mbarrier.expect(bars.index(st), desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(desc, [row, col], bars.index(st), smem.index(st), pred=ok)


@gluon.jit
def _weights(s, m_i, l_i, qk_scale):
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(gl.fma(s, qk_scale, -gl.expand_dims(m_safe, 1)))
    return m_new, l_i * alpha + gl.sum(p, axis=1), alpha, p


@gluon.jit
def _gl_context(
    q_ptr, k_desc, v_desc, start_ptr, used_ptr, o_ptr, lse_ptr, q_n, q_h, NG, qk_scale,
    G: gl.constexpr, KVH: gl.constexpr, D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    OVERLAP: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    seg = gl.program_id(0)
    kv = gl.program_id(1)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    rows_l: gl.constexpr = gl.SliceLayout(1, mma)
    cols_l: gl.constexpr = gl.SliceLayout(0, mma)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    # the folded query rows of this program: row t*G + j is head kv*G + j of token t
    r = gl.program_id(2) * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    dl = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    qp = q_ptr + gl.expand_dims((r // G) * q_n + (kv * G + r % G) * q_h, 1) + gl.expand_dims(dl, 0)
    q = gl.load(qp, mask=gl.expand_dims(r < NG, 1), other=0.0)
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], gl.bfloat16), q)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_N, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_N, D], v_desc.layout)
    kbar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    vbar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(kbar.index(i), count=1)
        mbarrier.init(vbar.index(i), count=1)
    fence_async_shared()
    start = gl.load(start_ptr + seg)
    used = gl.load(used_ptr + seg)
    ntiles = gl.cdiv(used, BLOCK_N)
    col = kv * D
    for i in gl.static_range(2):
        _load_tile(k_desc, kbar, k_smem, i, start + i * BLOCK_N, col, ntiles)
        _load_tile(v_desc, vbar, v_smem, i, start + i * BLOCK_N, col, ntiles)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_l)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows_l)
    acc = gl.zeros([BLOCK_M, D], gl.float32, mma)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma)
    if OVERLAP:
        if ntiles > 0:
            mbarrier.wait(kbar.index(0), 0)
            s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False)
            _load_tile(k_desc, kbar, k_smem, 2, start + 2 * BLOCK_N, col, ntiles)
            acc = warpgroup_mma_init(acc)  # carried as an in-flight product from here on
            for j in range(ntiles - 1):  # every iteration has a next tile
                nx = j + 1
                mbarrier.wait(kbar.index(nx % 2), (nx // 2) & 1)
                s_next = warpgroup_mma(q_smem, k_smem.index(nx % 2).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)  # under S_{j+1}
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # P V of tile j - 1 done
                # its value stage is free: tile j + 1's values (tile 1's came in the prologue)
                _load_tile(v_desc, vbar, v_smem, nx, start + nx * BLOCK_N, col, gl.where(j > 0, ntiles, 0))
                acc = acc * gl.expand_dims(alpha, 1)
                mbarrier.wait(vbar.index(j % 2), (j // 2) & 1)
                acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(j % 2), acc, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))  # S_{j+1} done, P V_j in flight
                _load_tile(k_desc, kbar, k_smem, j + 3, start + (j + 3) * BLOCK_N, col, ntiles)
            last = ntiles - 1
            cols = last * BLOCK_N + gl.arange(0, BLOCK_N, layout=cols_l)
            s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
            m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            acc = acc * gl.expand_dims(alpha, 1)
            mbarrier.wait(vbar.index(last % 2), (last // 2) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(last % 2), acc)
    else:
        for j in range(ntiles):
            mbarrier.wait(kbar.index(j % 2), (j // 2) & 1)
            s = warpgroup_mma(q_smem, k_smem.index(j % 2).permute((1, 0)), zero_s, use_acc=False)
            cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=cols_l)
            s = gl.where(gl.expand_dims(cols < used, 0), s, float("-inf"))
            m_i, l_i, alpha, p = _weights(s, m_i, l_i, qk_scale)
            acc = acc * gl.expand_dims(alpha, 1)
            mbarrier.wait(vbar.index(j % 2), (j // 2) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_op), v_smem.index(j % 2), acc)
            _load_tile(k_desc, kbar, k_smem, j + 2, start + (j + 2) * BLOCK_N, col, ntiles)
            _load_tile(v_desc, vbar, v_smem, j + 2, start + (j + 2) * BLOCK_N, col, ntiles)
    for i in gl.static_range(2):
        mbarrier.invalidate(kbar.index(i))
        mbarrier.invalidate(vbar.index(i))
    # the partial, as store_partial writes it: o normalized, lse in natural log
    rows = gl.program_id(2) * BLOCK_M + gl.arange(0, BLOCK_M, layout=rows_l)
    d = gl.arange(0, D, layout=cols_l)
    seen = l_i > 0
    out = acc / gl.expand_dims(gl.where(seen, l_i, 1.0), 1)
    lse = gl.where(seen, m_i * 0.6931471805599453 + gl.log(gl.where(seen, l_i, 1.0)), float("-inf"))
    op = o_ptr + gl.expand_dims(((seg * NG + rows) * KVH + kv) * D, 1) + gl.expand_dims(d, 0)
    gl.store(op, out.to(gl.bfloat16), mask=gl.expand_dims(rows < NG, 1))
    gl.store(lse_ptr + (seg * KVH + kv) * NG + rows, lse, mask=rows < NG)


def gluon_pass(c: dict[str, Any], sms: int, overlap: bool) -> tuple[Any, Any, int]:
    q, kc, vc = c["q"], c["kc"], c["vc"]
    cap, kvh, d = kc.shape
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    sp = CONTIGUOUS.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    o = torch.empty(sp * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(sp, kvh, ng, device=q.device, dtype=torch.float32)
    layout = gl.NVMMASharedLayout.get_default_for([128, d], gl.bfloat16)
    descs = [TensorDescriptor(t, [cap, kvh * d], [t.stride(0), 1], [128, d], layout) for t in (kc, vc)]
    _gl_context[(sp, kvh, triton.cdiv(ng, 128))](
        q, *descs, start, used, o, lse, q.stride(0), q.stride(1), ng, d**-0.5 * _LOG2E,
        G=g, KVH=kvh, D=d, BLOCK_M=128, BLOCK_N=128, OVERLAP=overlap, num_warps=8,
    )  # fmt: skip
    return o, lse, sp


def library(c: dict[str, Any], sms: int) -> tuple[Any, Any, int]:
    q = c["q"]
    kvh = c["kc"].shape[1]
    ng = q.shape[0] * (q.shape[1] // kvh)
    sp = CONTIGUOUS.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    used = (c["ctx"] - start).clamp(0, per).to(torch.int32)
    return (*context_pass(q, c["kc"], c["vc"], start, used, q.shape[2] ** -0.5), sp)


CONTENDERS = {
    "library (Triton)": library,
    "Gluon, no overlap": lambda c, sms: gluon_pass(c, sms, False),
    "Gluon, next QK^T under the softmax": lambda c, sms: gluon_pass(c, sms, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="compile for sm_90 only (no GPU)")
    args = ap.parse_args()
    if args.compile:
        from support.sm90 import install

        install()
        c = tiles.case(64 + 512 * 4, 32, 32, 8, 128, "cpu", torch.bfloat16)
        for name, fn in CONTENDERS.items():
            if name.startswith("Gluon"):
                try:
                    fn(c, 132)
                except Exception as exc:  # the compile-only launcher raises after compiling
                    print(name, type(exc).__name__, str(exc)[:300])
        return
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | kernel | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    for ctx in (10240, 32768, 131072, 1000):
        for shape, (h, kvh, d) in tiles.SHAPES.items():
            c = tiles.case(max(ctx, 1100), 32, h, kvh, d, "cuda", torch.bfloat16)
            c["ctx"] = ctx
            runs = {name: (lambda fn=fn, c=c: fn(c, sms)) for name, fn in CONTENDERS.items()}

            def merged(o: Any, lse: Any, sp: int, h: int = h, kvh: int = kvh, d: int = d) -> Any:
                return tiles.merged(o, lse, sp, 32, h, kvh, d)

            contender_rows(f"{shape} | {ctx}", runs, merged)
            del c, runs
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
