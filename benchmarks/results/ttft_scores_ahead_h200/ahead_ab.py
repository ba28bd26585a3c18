"""The context pass with the next key tile's scores issued before this tile's softmax (software
pipelined across iterations, as FlashAttention-3 overlaps one tile's softmax with the next
tile's ``QK^T`` on the tensor cores), against the library's loop, where each tile's product is
waited for before its softmax, so the tensor cores idle during it. Contiguous pass, one layer,
32 question tokens (``../ttft_paged_tiles_h200/``'s case).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_scores_ahead_h200/ahead_ab.py             # GPU
    TRITON_INTERPRET=1 PYTHONPATH=$PWD:$PWD/benchmarks python3 <this script> --check-cpu                     # CPU
    RAGCOMPRESS_SM90_LOG=/tmp/log PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/tests python3 <this script> --ttgir DIR # sm_90 IR

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl
from ragcompress_bench.records import RESULTS, record_module, shape_rows

from ragcompress.kv.fast._context import _LOG2E, _clamped, context_pass
from ragcompress.kv.fast._online import base2_weights, folded_rows, partials, store_partial
from ragcompress.kv.fast.waves import CONTIGUOUS

tiles = record_module("paged_tiles", RESULTS / "ttft_paged_tiles_h200" / "paged_tiles.py")


@triton.jit
def _finish(s, v, qk_scale, m_i, l_i, acc):
    """Tile scores ``s`` (unscaled) and its values into the running softmax."""
    m_new, l_new, alpha, p = base2_weights(s, qk_scale, m_i, l_i)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_new, acc


@triton.jit
def _ahead_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, used_ptr, o_ptr, lse_ptr,
    q_n, q_h, sk_t, sv_t, NG, qk_scale,
    G: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    seg, kv, rows, rm, tok, head = folded_rows(NG, G, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * q_n + head[:, None] * q_h + d[None, :], mask=rm[:, None], other=0.0)
    start = tl.load(start_ptr + seg).to(tl.int64)
    used = tl.load(used_ptr + seg)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kb, vb = k_ptr + kv * D, v_ptr + kv * D
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    full = used // BLOCK_N * BLOCK_N
    if full > 0:
        # the first full tile's scores, then per iteration: the next tile's scores issued, this
        # tile's softmax and values; the last full tile's after the loop
        s = tl.dot(q, tl.trans(tl.load(kb + (start + n)[:, None] * sk_t + d[None, :])))
        for off in range(0, full - BLOCK_N, BLOCK_N):
            nxt = start + off + BLOCK_N + n
            s_next = tl.dot(q, tl.trans(tl.load(kb + nxt[:, None] * sk_t + d[None, :])))
            v = tl.load(vb + (start + off + n)[:, None] * sv_t + d[None, :])
            m_i, l_i, acc = _finish(s, v, qk_scale, m_i, l_i, acc)
            s = s_next
        v = tl.load(vb + (start + full - BLOCK_N + n)[:, None] * sv_t + d[None, :])
        m_i, l_i, acc = _finish(s, v, qk_scale, m_i, l_i, acc)
    if full < used:
        nn = full + tl.arange(0, BLOCK_N)
        keys = _clamped(start, nn, used)
        s = tl.dot(q, tl.trans(tl.load(kb + keys[:, None] * sk_t + d[None, :])))
        s = tl.where((nn < used)[None, :], s, float("-inf"))
        v = tl.load(vb + keys[:, None] * sv_t + d[None, :])
        m_i, l_i, acc = _finish(s, v, qk_scale, m_i, l_i, acc)
    store_partial(o_ptr, lse_ptr, acc, m_i, l_i, seg, kv, rows, rm, NG, KVH, D)


def segments(c: dict[str, Any], sms: int) -> tuple[int, Any, Any]:
    q, kvh = c["q"], c["kc"].shape[1]
    ng = q.shape[0] * (q.shape[1] // kvh)
    sp = CONTIGUOUS.splits(sms, ng, kvh, 1 << 20)
    per = -(-c["ctx"] // sp // 128) * 128
    start = torch.arange(sp, device=q.device, dtype=torch.int32) * per
    return sp, start, (c["ctx"] - start).clamp(0, per).to(torch.int32)


def ahead(c: dict[str, Any], sms: int, stages: int = 3, block_n: int = 128) -> tuple[Any, Any, int]:
    q, kc, vc = c["q"], c["kc"], c["vc"]
    kvh, d = kc.shape[1], q.shape[2]
    g = q.shape[1] // kvh
    ng = q.shape[0] * g
    sp, start, used = segments(c, sms)
    _, _, o, lse = partials("ahead", q, kc, vc, sp)
    bm = CONTIGUOUS.block_m(ng)
    _ahead_kernel[(sp, kvh, triton.cdiv(ng, bm))](
        q, kc, vc, start, used, o, lse, q.stride(0), q.stride(1), kc.stride(0), vc.stride(0), ng,
        d**-0.5 * _LOG2E, G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=block_n,
        num_warps=CONTIGUOUS.warps(bm), num_stages=stages,
    )  # fmt: skip
    return o, lse, sp


def library(c: dict[str, Any], sms: int) -> tuple[Any, Any, int]:
    sp, start, used = segments(c, sms)
    q = c["q"]
    return (*context_pass(q, c["kc"], c["vc"], start, used, q.shape[2] ** -0.5), sp)


CONTENDERS = {
    "library": library,
    "scores ahead, 128-key tiles, 3 stages": ahead,
    "scores ahead, 128-key tiles, 2 stages": lambda c, sms: ahead(c, sms, 2),
    "scores ahead, 64-key tiles, 3 stages": lambda c, sms: ahead(c, sms, 3, 64),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-cpu", action="store_true")
    ap.add_argument("--ttgir", type=Path, help="compile for sm_90 only and write each kernel's TTGIR here")
    args = ap.parse_args()
    if args.check_cpu:
        h, kvh, d = 4, 2, 16
        for ctx in (64 + 512 * 3 + 100, 64 + 128 * 4, 100):
            c = tiles.case(max(ctx, 128), 3, h, kvh, d, "cpu", torch.float32)
            c["ctx"] = ctx
            want = tiles.merged(*library(c, 4)[:2], library(c, 4)[2], 3, h, kvh, d)
            for name, fn in CONTENDERS.items():
                o, lse, sp = fn(c, 4)
                torch.testing.assert_close(tiles.merged(o, lse, sp, 3, h, kvh, d), want, atol=1e-4, rtol=1e-4)
            print(f"ok {ctx}")
        return
    if args.ttgir:
        from support.sm90 import install
        from triton.runtime.jit import JITFunction

        install()
        run = JITFunction.run

        def keep(self: Any, *a: Any, **k: Any) -> Any:
            kern = run(self, *a, **k)
            args.ttgir.mkdir(parents=True, exist_ok=True)
            (args.ttgir / f"{self.__name__}_{k.get('num_stages')}_{k.get('BLOCK_N')}.ttgir").write_text(kern.asm["ttgir"])
            return kern

        JITFunction.run = keep  # type: ignore[method-assign]
        c = tiles.case(64 + 512 * 4, 32, 32, 8, 128, "cpu", torch.bfloat16)
        for fn in CONTENDERS.values():
            fn(c, 132)
        return
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | keys | kernel | µs | vs library | rel err |\n|---|---|---|---|---|---|")
    shape_rows(tiles, (10240, 32768, 131072), CONTENDERS)

if __name__ == "__main__":
    main()
