"""The partial forward's attention alone, one layer × 32, on the 8B shape: the packed SDPA blocks
(the library before this change, and what runs without Triton) against the position-masked flash
kernel (at a few launch settings), at 10K / 32K context and 15% / 30% of the slots recomputed;
and how far the outputs are apart. Run on the GPU from the repository root:

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_flash_recompute_h200/attn_ab.py
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import torch

from ragcompress.kv.assembly._position_flash import position_flash
from ragcompress.kv.assembly.blend_attention import Packed, packed_blocks
from ragcompress.kv.assembly.flash_packed import BLOCK_M, BLOCK_N, FlashPacked, flash_bounds

HEADS, KV, D, LAYERS = 32, 8, 128, 32
LAUNCHES = [(8, 3), (8, 2), (4, 3), (8, 4)]  # (num_warps, num_stages)


def timed(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median ms of ``LAYERS`` calls."""
    times = []
    for _ in range(repeats + 1):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(LAYERS):
            fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times[1:])


def once(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, ms) of one call, synchronized."""
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    stop.record()
    torch.cuda.synchronize()
    return out, start.elapsed_time(stop)


def case(slots: int, share: float, g: torch.Generator) -> str:
    k = int(share * slots)
    positions = torch.arange(slots, device="cuda")
    chosen = torch.randperm(slots - 64, device="cuda", generator=g)[:k].add(64).sort().values

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=g, dtype=torch.bfloat16)

    # a buffer layer (slots, kv_heads, D) viewed head-major, and the queries as transformers has them
    key, value = rand(slots, KV, D).transpose(0, 1)[None], rand(slots, KV, D).transpose(0, 1)[None]
    query = rand(1, k, HEADS, D).transpose(1, 2)
    group = HEADS // KV
    packed, blocks_ms = once(lambda: Packed(None, packed_blocks(positions, chosen, group, torch.bfloat16)))
    bounds, bounds_ms = once(lambda: flash_bounds(positions, chosen, group, BLOCK_M, BLOCK_N))
    assert isinstance(packed, Packed) and isinstance(bounds, torch.Tensor)
    scale = D**-0.5
    a = packed.attend(query, key, value, scale, 0).float()
    ms_sdpa = timed(lambda: packed.attend(query, key, value, scale, 0))
    flash_ms, apart = [], 0.0
    for warps, stages in LAUNCHES:
        kernel = functools.partial(position_flash, num_warps=warps, num_stages=stages)
        flash = FlashPacked(None, positions, positions[chosen], bounds, kernel)
        b = flash.attend(query, key, value, scale, 0).float()
        apart = max(apart, ((a - b).norm() / a.norm()).item())
        flash_ms.append(timed(lambda flash=flash: flash.attend(query, key, value, scale, 0)))
    best = min(flash_ms)
    seen = (positions[chosen] + 1).double().sum().item()  # keys the recomputed tokens see
    tflops = 4 * D * HEADS * seen * LAYERS / (best * 1e-3) / 1e12
    launches = " / ".join(f"{ms:.1f}" for ms in flash_ms)
    return (
        f"| {slots} | {share:.0%} | {k} | {ms_sdpa:.1f} | {launches} | {ms_sdpa / best:.2f}× | {tflops:.0f} "
        f"| {apart:.4f} | {blocks_ms:.1f} | {bounds_ms:.2f} |"
    )


def main() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}; flash launches (warps, stages): {LAUNCHES}")
    print(
        "| context | recomputed | tokens | SDPA blocks, ms per 32 layers | flash kernel, each launch | "
        "speed-up (best) | kernel TFLOP/s (best) | rel. L2 apart | blocks built, ms | bounds built, ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for slots in (10240, 32768):
        for share in (0.15, 0.30):
            print(case(slots, share, g), flush=True)


if __name__ == "__main__":
    main()
