"""Where the host tier's time goes at 10K / 32K (issue #16), and where a batch-32 step's goes.

For the streamed kvzip-sized chunks of ``host_ab.py`` (knorm 0.6 + int4/64, pinned):
* ``flush_host_ms``: host wall time of ``HostStream.flush`` (queuing every copy and gather);
* ``copies_ranges_ms`` / ``copies_whole_ms``: GPU time of the copies alone, no step, in the
  streamer's per-range pieces and one copy per chunk; ``copies_issue_ms``: host time to queue
  the per-range pieces; ``foreach_*``: the same pieces through one ``torch._foreach_copy_``
  per range; ``one_copy_ms``: one pinned buffer of the same bytes in one copy;
* then a profile of the batch-32 question step at 10K (dense chunks): top kernels by GPU time.

    python3 benchmarks/results/ttft_host_split_h200/host_diag.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from host_ab import chunks_for, engine
from ragcompress_bench.ttft_shapes import build_model, head_dim
from ragcompress_bench.ttft_timing import Clock, passage_sizes

from ragcompress.kv.fast import FastGenerator, HostChunk, PackedChunk


def issue_ms(fn) -> float:  # type: ignore[no-untyped-def]
    """Host ms to queue ``fn``'s work on an idle device."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    ms = round((time.perf_counter() - t) * 1e3, 3)
    torch.cuda.synchronize()
    return ms


def host_tier(model, base, clock, question, ctx: int) -> dict:
    prefix, chunks = chunks_for(model, ctx)
    host = [HostChunk.from_chunk(c.to("cpu"), model.dtype) for c in chunks]
    del chunks
    eng = engine(model, base)

    def go() -> int:
        eng.load(prefix, host)
        return int(eng.prefill([question])[0])

    row: dict = {"context": ctx, "chunks": len(host), "host_mb": round(sum(h.nbytes for h in host) / 1e6, 1)}
    row["end_to_end_ms"] = round(clock(go), 3)
    hs = eng._host
    times: list[float] = []
    orig = hs.flush

    def timed(join: bool = False) -> None:
        t = time.perf_counter()
        orig(join)
        times.append(time.perf_counter() - t)

    hs.flush = timed  # type: ignore[method-assign]
    load_t = []
    for _ in range(10):
        t = time.perf_counter()
        eng.load(prefix, host)
        load_t.append(time.perf_counter() - t)
        eng.prefill([question])
    row["load_host_ms"] = round(statistics.median(load_t) * 1e3, 3)
    row["flush_host_ms"] = round(statistics.median(times) * 1e3, 3)
    hs.flush = orig  # type: ignore[method-assign]
    stages = hs.stages(host)
    staging = hs.staging

    def copies() -> None:
        for a, b in hs.ranges:
            hs.fetch(host, stages, a, b)

    row["copies_ranges_ms"] = round(clock(copies), 3)
    row["copies_issue_ms"] = issue_ms(copies)

    def whole() -> None:
        for c, s in zip(host, stages, strict=True):
            staging[s : s + c.nbytes].copy_(c.data, non_blocking=True)

    row["copies_whole_ms"] = round(clock(whole), 3)
    pieces = []
    for a, b in hs.ranges:
        bounds = [(s + a * c.layer_bytes, s + b * c.layer_bytes) for c, s in zip(host, stages, strict=True)]
        dst = [staging[lo:hi] for lo, hi in bounds]
        src = [c.data[a * c.layer_bytes : b * c.layer_bytes] for c in host]
        pieces.append((dst, src))

    def foreach() -> None:
        for dst, src in pieces:
            torch._foreach_copy_(dst, src, non_blocking=True)

    row["foreach_ranges_ms"] = round(clock(foreach), 3)
    row["foreach_issue_ms"] = issue_ms(foreach)
    one = torch.empty(sum(h.nbytes for h in host), dtype=torch.uint8, pin_memory=True)
    row["one_copy_ms"] = round(clock(lambda: staging[: one.numel()].copy_(one, non_blocking=True)), 3)
    row["pieces_per_request"] = len(hs.ranges) * len(host)
    return row  # the engine (and its 4 GB buffer) goes with this frame


def batch_profile(model, base, ctx: int = 10240, batch: int = 32) -> str:
    from torch.profiler import ProfilerActivity, profile

    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    def rnd(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, device=model.device, dtype=model.dtype)

    prefix = PackedChunk(rnd(64), rnd(64), 64, 0)
    chunks = [PackedChunk(rnd(s), rnd(s), s, 64) for s in passage_sizes(ctx - 64, 512)]
    qs = [torch.randint(100, cfg.vocab_size, (32,)).tolist() for _ in range(batch)]

    def first() -> None:
        base.load(prefix, chunks)
        base.prefill(qs).tolist()

    for _ in range(3):
        first()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            first()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70)


def main() -> int:
    torch.manual_seed(0)
    model = build_model("llama3-8b", "cuda", torch.bfloat16)
    clock = Clock(torch.device("cuda"), 3, 10)
    base = FastGenerator(
        model, capacity=32768, max_question=32, max_new_tokens=1, max_batch=32, buckets=(32,)
    )
    question = torch.randint(100, model.config.vocab_size, (32,)).tolist()
    for ctx in (10240, 32768):
        print(json.dumps(host_tier(model, base, clock, question, ctx)), flush=True)
    print("batch 32 at 10K, 5 steps (load + question prefill):")
    print(batch_profile(model, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
