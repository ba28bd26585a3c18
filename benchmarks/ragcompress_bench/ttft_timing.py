"""Timing helpers of ``ragcompress bench ttft``: a CUDA-event clock, the copy-bandwidth probe,
passage sizes, and the queries/s pass."""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

from ragcompress_bench.ttft_shapes import head_dim, step_flops

__all__ = [
    "Clock", "alternating", "best_of", "copy_bandwidth", "graph_ms", "ints", "matmul_rate", "passage_sizes",
    "run_qps",
]  # fmt: skip


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Clock:
    """Median milliseconds of a callable: CUDA events on the GPU, perf_counter elsewhere."""

    def __init__(self, device: Any, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def __call__(self, fn: Callable[[], Any], repeats: int | None = None, warmup: int | None = None) -> float:
        import torch

        cuda = self.device.type == "cuda"
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        times = []
        for _ in range(self.repeats if repeats is None else repeats):
            if cuda:
                torch.cuda.synchronize(self.device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def alternating(runs: dict[Any, Callable[[], Any]], clock: Clock, rounds: int) -> dict[Any, float]:
    """Median over ``rounds`` of each ``clock(run)``, the runs taking turns within a round, so that
    a drift of the device over the rounds (clocks, heat) reaches every run alike: the A/B of the
    diagnostic scripts under ``results/``."""
    times: dict[Any, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            times[k].append(clock(run))
    return {k: statistics.median(v) for k, v in times.items()}


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """``(ms, result)``: the fastest of ``repeats`` calls of ``fn`` after one warm-up call, each
    timed to a CUDA synchronisation (wall clock, launches included: what a host-bound path costs).
    For the GPU diagnostic scripts under ``results/``."""
    import torch

    fn()
    torch.cuda.synchronize()
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3, result


def graph_ms(fn: Callable[[], Any], reps: int = 20) -> float:
    """Median ms of one replay of ``fn`` captured in a CUDA graph (two eager calls on a side
    stream first, as capture needs), over ``reps`` replays after three: a kernel chain's device
    time without launch overheads. For the GPU diagnostic scripts under ``results/``."""
    import torch

    from ragcompress.kv.fast.shapes import graph_of

    graph, _ = graph_of(fn, torch.device("cuda", torch.cuda.current_device()))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(device: Any, clock: Clock) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read + written: the best of
    three medians of 10. One median moved by 6% between runs of one session on an H200 (3.96
    to 4.20 TB/s), and the floor with it; the best is the strictest floor and the steadiest."""
    import torch

    n = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.randn(n // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = min(clock(lambda: dst.copy_(src), repeats=10, warmup=3) for _ in range(3))
    return 2 * n / (ms / 1e3)


def matmul_rate(device: Any, dtype: Any, clock: Clock) -> float:
    """FLOP/s of a large square matrix product in ``dtype`` (8192 on the GPU): the most matrix
    work per second this device gives a step, so ``step_flops`` over it is a lower bound of a
    step's time (its GEMMs are smaller and its attention slower than this)."""
    import torch

    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = clock(lambda: torch.mm(a, b), repeats=10, warmup=3)
    return 2 * n**3 / (ms / 1e3)


def passage_sizes(total: int, size: int) -> list[int]:
    sizes = [size] * (total // size)
    if total % size:
        sizes.append(total % size)
    return sizes


def run_qps(model: Any, fast: Any, args: Any, clock: Clock, rate: float) -> list[dict[str, Any]]:
    """Queries/s with B questions over one shared context (chunks loaded once per batch), and
    the queries/s no step could beat: ``compute_floor_ms`` is the step's matrix FLOPs
    (:func:`~ragcompress_bench.ttft_shapes.step_flops`) at ``rate``, the FLOP/s of
    :func:`matmul_rate` in the same run."""
    prefix, chunks = random_chunks(model, args, args.qps_context - args.prefix_tokens)

    def load(b: int) -> None:
        fast.load(prefix, chunks)

    return qps_rows(model, fast, args, clock, rate, load, "one, shared")


def random_chunks(model: Any, args: Any, tokens: int) -> tuple[Any, list[Any]]:
    """A random bf16 prefix (``--prefix-tokens``) and passages of ``--passage-tokens`` filling
    ``tokens``, as :class:`~ragcompress.kv.fast.PackedChunk` on the model's device."""
    import torch

    from ragcompress.kv.fast import PackedChunk

    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    def rnd(n: int) -> Any:
        return torch.randn(n, *shape, device=model.device, dtype=model.dtype)

    prefix = PackedChunk(rnd(args.prefix_tokens), rnd(args.prefix_tokens), args.prefix_tokens, 0)
    sizes = passage_sizes(tokens, args.passage_tokens)
    return prefix, [PackedChunk(rnd(s), rnd(s), s, args.prefix_tokens) for s in sizes]


def qps_rows(
    model: Any, engine: Any, args: Any, clock: Clock, rate: float, load: Callable[[int], Any], sets: str
) -> list[dict[str, Any]]:
    """One row per ``--batches`` size: ``load(b)`` places the batch's context(s), then the
    first tokens (and, for ``answer_ms``, ``--new-tokens`` each) reach the host; ``sets``
    says whose chunks each question reads."""
    import torch

    cfg = model.config
    ctx = args.qps_context
    g = torch.Generator(device="cpu").manual_seed(args.seed + 2)
    rows = []
    for b in ints(args.batches):
        qs = [
            torch.randint(100, cfg.vocab_size, (args.question_tokens,), generator=g).tolist()
            for _ in range(b)
        ]

        def first(qs: list[list[int]] = qs, b: int = b) -> None:
            load(b)
            engine.prefill(qs).tolist()

        def answers(qs: list[list[int]] = qs, b: int = b) -> None:
            load(b)
            tok = engine.prefill(qs)
            for _ in range(args.new_tokens - 1):
                tok = engine.decode_step(tok)
            tok.tolist()

        try:
            t1 = clock(first)
            t2 = clock(answers, repeats=max(3, args.repeats // 4))
            floor = step_flops(cfg, b, args.question_tokens, ctx) / rate * 1e3
            rows.append(
                {
                    "batch": b,
                    "context_tokens": ctx,
                    "chunk_sets": sets,
                    "first_token_ms": round(t1, 3),
                    "qps_first_token": round(b / t1 * 1e3, 1),
                    "compute_floor_ms": float(f"{floor:.4g}"),  # 4 digits: tiny on a smoke run
                    "qps_compute_ceiling": float(f"{b / floor * 1e3:.4g}"),
                    "new_tokens": args.new_tokens,
                    "answer_ms": round(t2, 3),
                    "qps_answers": round(b / t2 * 1e3, 1),
                }
            )
        except Exception as exc:
            traceback.print_exc()
            rows.append({"batch": b, "chunk_sets": sets, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows
