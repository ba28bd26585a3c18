"""Host µs of the CUDA calls a placement makes (the block table's publish: an event wait, a
pinned-to-device copy, an event record; the context length's fill), each alone, and whether a
Triton kernel can read the pinned staging rows in place (mapped host memory: no copy call).

    PYTHONPATH=$PWD python3 benchmarks/results/ttft_seg_floor_h200/copy_api.py

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import triton
import triton.language as tl


def us(fn: Any, reps: int = 500) -> float:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e6


@triton.jit
def _pull(src, dst, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + i, tl.load(src + i, mask=i < n), mask=i < n)


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    rows = 3 * 64
    stage = torch.arange(rows, dtype=torch.int32).pin_memory()
    dev = torch.zeros(rows, dtype=torch.int32, device="cuda")
    ev = torch.cuda.Event()
    ev.record()
    one = torch.zeros(1, dtype=torch.int32, device="cuda")
    parts = {
        "event.synchronize (done)": ev.synchronize,
        "event.query (done)": ev.query,
        "event.record": ev.record,
        "copy_ pinned -> device, 768 B, non_blocking": lambda: dev.copy_(stage, non_blocking=True),
        "copy_ + record + synchronize (the publish's calls)": lambda: (
            ev.synchronize(), dev.copy_(stage, non_blocking=True), ev.record()),
        "fill_ (a device int from a host int)": lambda: one.fill_(7),
        "torch.cuda.current_stream()": torch.cuda.current_stream,
        "Triton launch, 1 program": lambda: _pull[(1,)](dev, dev, rows, BLOCK=256),
    }  # fmt: skip
    print("\n| call | host µs |\n|---|---|")
    for name, fn in parts.items():
        fn()
        print(f"| {name} | {us(fn):.1f} |")
    try:
        _pull[(1,)](stage, dev, rows, BLOCK=256)
        torch.cuda.synchronize()
        print(f"\nTriton reads pinned host rows in place: {bool((dev.cpu() == stage).all())}")
    except Exception as exc:
        print(f"\nTriton cannot read pinned host rows in place: {type(exc).__name__}: {str(exc)[:200]}")


if __name__ == "__main__":
    main()
