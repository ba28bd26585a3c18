"""Where a placed request's host work goes between real requests (``load`` took 1.5-4x its
back-to-back time there, ``../ttft_paged_gap_h200/placed_timeline.txt``), and whether Python's
cyclic garbage collector is in it. Per request (median and p90 of 40, placed requests after a
full step each): host µs of each phase of ``PagedFastGenerator.load_reusing`` (the pool lease
and the table rows, the table's upload, the previous lease's release, the buffer's counters),
and how many collections ran inside ``load``. Three settings of the collector: as Python starts
(on), ``gc.freeze()`` after the engines are built (everything alive then moves to a permanent
generation that no collection scans), and off during the requests.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/results/ttft_placed_host_h200/placed_phases.py \
        --shape llama3-8b --contexts 10240,32768,131072

A diagnostic script kept as the record of one device call; not part of the library.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch
from ragcompress_bench.ttft_paged import build_paged
from ragcompress_bench.ttft_resident import resident
from ragcompress_bench.ttft_shapes import build_model

from ragcompress.kv.fast.pool import ChunkPool

PHASES = ("place (lease + rows)", "table upload", "release previous", "buffer counters", "load total")
_collections = [0]


def _count(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _collections[0] += 1


def placed_load(paged: Any, prefix: Any, chunks: Any) -> list[float]:
    """``load_reusing``'s body with a clock between its phases (the same calls, in order)."""
    t0 = time.perf_counter()
    ((lease, rows, pos),) = paged._place([(prefix, chunks)])
    t1 = time.perf_counter()
    for table, group in zip(paged.tables, rows, strict=True):
        table.write(group)
    t2 = time.perf_counter()
    paged._swap([lease], None)
    t3 = time.perf_counter()
    buf = paged.buffer
    if hasattr(buf, "place"):  # the tree since this session's trims: one launch
        buf.place(pos[0], pos[1])
    else:
        buf.reset()
        buf.ctx_len, buf.next_position = pos[0], pos[1]
        buf.commit()
    t4 = time.perf_counter()
    return [(t1 - t0) * 1e6, (t2 - t1) * 1e6, (t3 - t2) * 1e6, (t4 - t3) * 1e6, (t4 - t0) * 1e6]


def requests(paged: Any, r: Any, n: int) -> tuple[list[list[float]], int]:
    """``n`` placed requests, each load after the previous step's first token."""
    out, before = [], _collections[0]
    gcs = 0
    for _ in range(n):
        torch.cuda.synchronize()
        c0 = _collections[0]
        out.append(placed_load(paged, r.prefix, r.chunks))
        gcs += _collections[0] - c0
        int(paged.prefill([r.question])[0])
    del before
    return out, gcs


def report(label: str, runs: list[list[float]], gcs: int) -> None:
    med = [statistics.median(x[i] for x in runs) for i in range(len(PHASES))]
    p90 = [sorted(x[i] for x in runs)[int(0.9 * len(runs))] for i in range(len(PHASES))]
    cells = " | ".join(f"{m:.0f} / {p:.0f}" for m, p in zip(med, p90, strict=True))
    print(f"| {label} | {cells} | {gcs} |", flush=True)


def one_context(model: Any, ctx: int, qlen: int) -> None:
    args = SimpleNamespace(passage_tokens=512, question_tokens=qlen, new_tokens=4)
    r = resident(model, ctx, qlen)
    paged = build_paged(model, r.fast, [ctx], args, ChunkPool)
    paged.load(r.prefix, r.chunks)
    for _ in range(5):
        requests(paged, r, 1)
    print(f"\n## {ctx} tokens ({len(r.chunks)} chunks): host µs, median / p90 of 40 placed requests\n")
    print("| collector | " + " | ".join(PHASES) + " | collections inside load |")
    print("|---|" + "---|" * (len(PHASES) + 1))
    back = [placed_load(paged, r.prefix, r.chunks) for _ in range(40)]
    report("on, back to back (no step between)", back, 0)
    report("on", *requests(paged, r, 40))
    gc.freeze()
    report("frozen (gc.freeze after build)", *requests(paged, r, 40))
    gc.unfreeze()
    gc.disable()
    report("off during the requests", *requests(paged, r, 40))
    gc.enable()
    paged.release()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--contexts", default="10240,32768,131072")
    ap.add_argument("--question-tokens", type=int, default=32)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, "gc thresholds", gc.get_threshold())
    gc.callbacks.append(_count)
    torch.manual_seed(0)
    model = build_model(a.shape, "cuda", torch.bfloat16)
    print("objects tracked by the collector after the model:", len(gc.get_objects()))
    for ctx in (int(c) for c in a.contexts.split(",")):
        one_context(model, ctx, a.question_tokens)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
