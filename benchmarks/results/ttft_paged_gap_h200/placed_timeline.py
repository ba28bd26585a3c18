"""One request on one clock, placed (paged) against in the buffer: where the ~0.2 ms at 32K
that ``paged_gap.py`` could not put in kernels or in ``load`` goes. Per request (median of 30,
from an idle device), CUDA events recorded before ``load``, after it, after the prefill is
queued, and the host times at which each call returns.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_paged_gap_h200/placed_timeline.py \
        --shape llama3-8b --contexts 10240,32768,131072

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch
from ragcompress_bench.ttft_paged import build_paged
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast.pool import ChunkPool

COLUMNS = ("host: load returns", "host: prefill returns", "device: after load", "device: step ends")


def request(load: Any, prefill: Any) -> dict[str, float]:
    """ms from the request's start: host returns and device events."""
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    t0 = time.perf_counter()
    ev[0].record()
    load()
    t1 = time.perf_counter()
    ev[1].record()
    tok = prefill()
    t2 = time.perf_counter()
    ev[2].record()
    int(tok[0])
    times = ((t1 - t0) * 1e3, (t2 - t0) * 1e3, ev[0].elapsed_time(ev[1]), ev[0].elapsed_time(ev[2]))
    return dict(zip(COLUMNS, times, strict=True))


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in COLUMNS}


def one_context(model: Any, ctx: int, qlen: int) -> None:
    args = SimpleNamespace(passage_tokens=512, question_tokens=qlen, new_tokens=4)
    r = resident(model, ctx, qlen)
    paged = build_paged(model, r.fast, [ctx], args, ChunkPool)
    paged.load(r.prefix, r.chunks)
    kinds = {
        "in buffer": (lambda: r.fast.load_reusing(r.prefix, r.chunks), lambda: r.fast.prefill([r.question])),
        "placed": (lambda: paged.load(r.prefix, r.chunks), lambda: paged.prefill([r.question])),
    }
    for _ in range(5):
        for load, prefill in kinds.values():
            request(load, prefill)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(30):  # alternating, so both see the same machine
        for k, (load, prefill) in kinds.items():
            runs[k].append(request(load, prefill))
    print(f"\n## {ctx} tokens ({len(r.chunks)} chunks), ms from the request's start\n")
    print("| request | " + " | ".join(COLUMNS) + " | step (device) |\n|---|---|---|---|---|---|")
    for k, rs in runs.items():
        m = medians(rs)
        step = statistics.median(x[COLUMNS[3]] - x[COLUMNS[2]] for x in rs)
        print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + f" | {step:.3f} |")
    paged.release()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="10240,32768,131072")
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    for ctx in (int(c) for c in a.contexts.split(",")):
        one_context(model, ctx, a.question_tokens)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
