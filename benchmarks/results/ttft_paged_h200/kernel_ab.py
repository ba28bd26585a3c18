"""One layer's attention, Llama-3-8B heads (32 query / 8 KV heads of 128), bf16: the copy path's
flash cascade over a contiguous context vs the paged cascade over the same keys scattered in
64-token pool blocks (a delta per 512-token chunk), and paged-kernel variants. Run on the GPU:
``python3 benchmarks/results/ttft_paged_h200/kernel_ab.py`` (prints a table; GB/s = the
layer's K+V bytes over the median time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton

from ragcompress.kv.fast import StepMeta
from ragcompress.kv.fast._paged import paged_context
from ragcompress.kv.fast.attention import FlashCascade
from ragcompress.kv.fast.paged import BlockTable, PagedCascade

DEV, DT, KVH, G, D, BS, REGION = "cuda", torch.bfloat16, 8, 4, 128, 64, 64


def cases(ctx: int, t: int, pool_k: Any, pool_v: Any, inv: Any) -> dict[str, Callable[[], Any]]:
    """The timed calls for one context length and question length ``t``."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    blocks = ctx // BS
    q = torch.randn(t, KVH * G, D, device=DEV, dtype=DT)
    own_k, own_v = (torch.randn(REGION, KVH, D, device=DEV, dtype=DT) for _ in range(2))
    rows = t * G
    splits = max(1, min(-(-2 * sms // (KVH * -(-rows // 128))), ctx // 256))
    ctx_len = torch.tensor([ctx], dtype=torch.int32, device=DEV)
    used = torch.tensor([t], dtype=torch.int32, device=DEV)
    meta = StepMeta(1, t, REGION, ctx, ctx_len, used, splits=splits, group=G)
    meta.refresh()
    table = BlockTable(blocks, DEV)
    table.write([(i, BS, 0) for i in range(blocks)])  # the contiguous context, delta 0: must agree
    paged = PagedCascade(table, inv, BS)
    flash = FlashCascade()(q, pool_k, pool_v, own_k, own_v, meta, D**-0.5).float()
    got = paged(q, pool_k, pool_v, own_k, own_v, meta, D**-0.5).float()
    err = float((got - flash).norm() / flash.norm())
    order = torch.randperm(blocks).tolist()  # now scattered blocks, a delta per 8-block chunk
    table.write([(b, BS, 1000 * (i // 8)) for i, b in enumerate(order)])
    out: dict[str, Callable[[], Any]] = {
        "flash cascade (copy path)": lambda: FlashCascade()(q, pool_k, pool_v, own_k, own_v, meta, D**-0.5),
        f"paged cascade (rel err vs flash {err:.1e})": lambda: paged(
            q, pool_k, pool_v, own_k, own_v, meta, D**-0.5
        ),
    }
    auto = paged._auto_splits(q.device, rows, KVH)
    variants = [(None, 4, auto), (None, 8, auto), (None, 4, 2 * auto), (None, 4, max(1, auto // 2))]
    if rows >= 128:
        variants.append((128, 8, auto))
    for bm, warps, sp in variants:
        name = f"paged context only: block_m={bm or 'auto'} warps={warps} splits={sp}"
        out[name] = lambda bm=bm, warps=warps, sp=sp: paged_context(
            q, pool_k, pool_v, table.rows, inv, BS, sp, D**-0.5, bm, warps
        )
    return out


def main() -> None:
    inv = (1.0 / (5e5 ** (torch.arange(0, D, 2, device=DEV).float() / D))).contiguous()
    print("| context | queries | variant | ms | GB/s |\n|---|---|---|---|---|")
    for ctx in (32768, 131072):
        pool_k, pool_v = (torch.randn(ctx, 2, KVH, D, device=DEV, dtype=DT)[:, 1] for _ in range(2))
        gb = 2 * ctx * KVH * D * 2 / 1e9
        for t in (32, 1):
            for name, fn in cases(ctx, t, pool_k, pool_v, inv).items():
                ms = float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
                print(f"| {ctx} | {t} | {name} | {ms:.4f} | {gb / ms * 1e3:.0f} |", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
