"""The context pass alone, one layer: flash 2's varlen kernel over folded query copies (the
library before ``_context.py``) against the Triton context kernel, and the kernel's tile sweep.

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_context_kernel_h200/context_ab.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import triton
from triton.testing import do_bench_cudagraph

from ragcompress.kv.fast._context import _LOG2E, _context_kernel, context_pass
try:  # removed from the library after the first call: its queries folded and copied per segment
    from ragcompress.kv.fast._fold import fold_queries
except ImportError:
    fold_queries = None
from ragcompress.kv.fast._merge import merge_with_own
from ragcompress.kv.fast.attention import _flash
from ragcompress.kv.fast.shapes import context_splits
from ragcompress.kv.fast.step_meta import StepMeta

SWEEP = sys.argv[1].split(",") if len(sys.argv) > 1 else []  # shapes to sweep tiles on (default: all)
SHAPES = {"llama3-8b": (32, 8, 128, 32), "qwen2.5-7b": (28, 4, 128, 28), "gemma3-12b": (16, 8, 256, 48)}


def old_pass(q: Any, ck: Any, cv: Any, meta: StepMeta, scale: float) -> Any:
    n, h, d = q.shape
    kvh = ck.shape[1]
    g = h // kvh
    if fold_queries is None:  # torch's fold and repeat: the same rows, two launches more
        qs = q.view(n, kvh, g, d).permute(0, 2, 1, 3).reshape(n * g, kvh, d).repeat(meta.splits, 1, 1)
    else:
        qs = fold_queries(q, meta.splits, kvh)
    return _flash(qs, ck, cv, meta.cu_q_ctx, meta.cu_k_ctx, n * (h // kvh), meta.max_seg, False, scale, meta.ctx_used)


def tuned(q: Any, ck: Any, cv: Any, meta: StepMeta, scale: float, bm: int, bn: int, warps: int, stages: int) -> Any:
    n, h, d = q.shape
    kvh = ck.shape[1]
    g, ng = h // kvh, n * (h // kvh)
    segs = meta.splits
    o = torch.empty(segs * ng, kvh, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(segs, kvh, ng, device=q.device, dtype=torch.float32)
    _context_kernel[(segs, kvh, triton.cdiv(ng, bm))](
        q, ck, cv, meta.seg_start, meta.ctx_used, o, lse, q.stride(0), q.stride(1), ck.stride(0), cv.stride(0),
        ng, scale * _LOG2E, G=g, KVH=kvh, D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages,
    )
    return o, lse


def merged(o: Any, lse: Any, q: Any, own: Any, meta: StepMeta, scale: float) -> Any:
    return merge_with_own(o, lse, meta.ctx_used, q, own, own, meta, scale)


def main() -> None:
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | context | splits | variant | us / layer | TFLOP/s | max abs err of the merged output vs flash |")
    print("|---|---|---|---|---|---|---|")
    n = 32
    for name, (h, kvh, d, _layers) in SHAPES.items():
        for ctx in (10240, 32768):
            cap = 32768
            ck = torch.randn(cap, 4, kvh, d, device=dev, dtype=torch.bfloat16)[:, 1]
            cv = torch.randn(cap, 4, kvh, d, device=dev, dtype=torch.bfloat16)[:, 2]
            q = torch.randn(n, h, d, device=dev, dtype=torch.bfloat16)
            own = torch.randn(64, kvh, d, device=dev, dtype=torch.bfloat16)
            scale = d**-0.5
            flops = 4 * n * h * ctx * d
            default = context_splits(dev, n, h, kvh, cap)
            for splits in sorted({default, max(1, default // 2), default * 2}):
                meta = StepMeta(1, n, 64, cap, torch.tensor([ctx], dtype=torch.int32, device=dev),
                                torch.tensor([n], dtype=torch.int32, device=dev), splits=splits, group=h // kvh)
                meta.refresh()
                ref = merged(*old_pass(q, ck, cv, meta, scale), q, own, meta, scale).float()

                def row(label: str, fn: Any, check: Any) -> None:
                    try:
                        t = do_bench_cudagraph(fn, rep=40) * 1e3
                        err = float((merged(*check(), q, own, meta, scale).float() - ref).abs().max())
                    except Exception as e:
                        print(f"| {name} | {ctx} | {splits} | {label} | {type(e).__name__} | | |")
                        return
                    print(f"| {name} | {ctx} | {splits} | {label} | {t:.1f} | {flops / t / 1e6:.0f} | {err:.2e} |")

                row("flash 2 + fold (before)", lambda: old_pass(q, ck, cv, meta, scale), lambda: old_pass(q, ck, cv, meta, scale))
                row("context_pass (library default)", lambda: context_pass(q, ck, cv, meta.seg_start, meta.ctx_used, scale),
                    lambda: context_pass(q, ck, cv, meta.seg_start, meta.ctx_used, scale))
                if splits != default or ctx != 32768 or (SWEEP and name not in SWEEP):
                    continue
                for bm in (64, 128):
                    for bn in ((32, 64) if d > 128 else (32, 64, 128)):
                        for warps in (4, 8):
                            for stages in (3, 4):
                                args = (bm, bn, warps, stages)
                                row(f"bm{bm} bn{bn} w{warps} st{stages}", lambda a=args: tuned(q, ck, cv, meta, scale, *a),
                                    lambda a=args: tuned(q, ck, cv, meta, scale, *a))
            del ck, cv
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
