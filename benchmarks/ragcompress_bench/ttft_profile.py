"""``ragcompress bench ttft --profile``: where the lead column's time goes, each part of the
request beside its own floor.

The request profiled is the lead column's (``ragcompress_paged_ms``): bf16 chunks already in a
paged pool, placed by a block table (host work), then the question's step, batch 1, at each of
``--contexts``. Every GPU kernel of :data:`REQUESTS` such requests under torch's
profiler falls in one part of the step (:data:`PARTS`, by its name). The floors:

* the weight products: every weight the step reads
  (:func:`~ragcompress_bench.ttft_shapes.weight_bytes`) once, at the run's copy bandwidth;
* the context attention: the context K/V read once at that bandwidth, or its matrix FLOPs at
  the run's matmul rate, whichever takes longer;
* the other kernels (the own pass + merge, norms, the RoPE write, act·mul, copies) move a few
  MB a request: no bandwidth floor worth the name. They are launch-bound, so the table gives
  their launches and µs a launch instead.

Beside the parts, from the same context's bench columns, timed earlier in the run and not under
the profiler: the request's wall time (``ragcompress_paged_ms``), its placement's host time
(``paged_load_host_ms``) and the wall time's excess over the kernels'. (A timing of its own in
the profile's pass, after the bench's columns, read 0.1-1.3 ms longer on an H200, host time
included: ``benchmarks/results/ttft_profile_h200/``; the cause was not found.)
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ragcompress_bench.ttft_shapes import context_seen, head_dim, kv_bytes_per_token
from ragcompress_bench.ttft_timing import passage_sizes

__all__ = ["PARTS", "Part", "attribute", "part_floors", "profile_lines", "profile_placed"]

REQUESTS = 5  # requests under the profiler; each part's time is their mean


@dataclass(frozen=True)
class Part:
    """A part of the request: the kernels whose name ``pattern`` matches (``re.search``), and
    the floor they are held to (``"weights"``, ``"context"``; None: launch-bound)."""

    name: str
    pattern: str
    floor: str | None = None


PARTS = (
    Part("weight products", r"_skinny|nvjet|gemm|cutlass|xmma|splitK", "weights"),
    Part("context attention", r"_paged|_context_kernel|_window_kernel", "context"),
    Part("own pass + merge", r"_own_merge|merge"),
    Part("RoPE + K/V write", r"rope_write"),
    Part("act·mul", r"act_mul"),
    Part("norms", r"rmsnorm"),
    Part("other (copies, fills, argmax)", r""),  # every kernel no part above names
)


def part_floors(cfg: Any, ctx: int, qlen: int, wbytes: int, bw: float, rate: float) -> dict[str, float]:
    """The floors in ms: ``weights``: ``wbytes`` at ``bw`` (bytes/s); ``context``: the context
    K/V of ``ctx`` tokens at ``bw``, or the attention's matrix FLOPs of ``qlen`` query tokens at
    ``rate`` (FLOP/s), the longer."""
    kv_s = kv_bytes_per_token(cfg, ctx) * ctx / bw
    flops = 4 * qlen * cfg.num_attention_heads * head_dim(cfg) * sum(context_seen(cfg, ctx))
    return {"weights": wbytes / bw * 1e3, "context": max(kv_s, flops / rate) * 1e3}


def attribute(kernels: Iterable[tuple[str, float, float]], floors: dict[str, float]) -> list[dict[str, Any]]:
    """One row per part of :data:`PARTS` from ``kernels``: (name, µs a request, launches a
    request) each, every kernel in the first part whose pattern it matches. A row: ``part``,
    ``ms``, ``launches``, ``us_a_launch``, ``floor_ms`` and ``x_floor`` (None for a launch-bound
    part, or one with no floor in ``floors``)."""
    totals = {p.name: [0.0, 0.0] for p in PARTS}
    for name, us, launches in kernels:
        part = next(p for p in PARTS if re.search(p.pattern, name))
        totals[part.name][0] += us
        totals[part.name][1] += launches
    rows = []
    for p in PARTS:
        us, n = totals[p.name]
        floor = floors.get(p.floor) if p.floor else None
        rows.append({
            "part": p.name,
            "ms": round(us / 1e3, 4),
            "launches": round(n, 1),
            "us_a_launch": round(us / n, 2) if n else None,
            "floor_ms": None if floor is None else round(floor, 4),
            "x_floor": None if not floor else round(us / 1e3 / floor, 3),
        })  # fmt: skip
    return rows


def profile_placed(
    model: Any, paged: Any, contexts: list[int], args: Any, bw: float, rate: float, wbytes: int
) -> list[dict[str, Any]] | None:
    """The profile of the placed request at each of ``contexts`` (module docstring) on
    ``paged``, the bench's bf16 paged engine (the lead column's), for the report; None (and why
    printed) off CUDA or without that engine (``--no-paged``, or it could not be built). A
    context that fails is left out."""
    import torch

    if model.device.type != "cuda":
        print("--profile: the profile needs a CUDA device (kernel times); none here", flush=True)
        return None
    if paged is None:
        print("--profile: the profile needs the bf16 paged column's engine; none in this run", flush=True)
        return None
    out = []
    for ctx in contexts:
        try:
            out.append(_one_context(model, paged, ctx, args, bw, rate, wbytes))
        except Exception:  # the profile must not lose the run's other results
            traceback.print_exc()
        finally:
            paged.release()  # this context's chunks leave the lease: the next may evict them
            torch.cuda.empty_cache()
    return out


def _one_context(
    model: Any, paged: Any, ctx: int, args: Any, bw: float, rate: float, wbytes: int
) -> dict[str, Any]:
    """The placed request over ``ctx`` tokens of random chunks: its kernels under the profiler,
    by part."""
    import torch

    from ragcompress.kv.fast import PackedChunk

    cfg, qlen = model.config, args.question_tokens
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    def rnd(t: int) -> Any:
        return torch.randn(t, *shape, device=model.device, dtype=model.dtype)

    prefix = PackedChunk(rnd(args.prefix_tokens), rnd(args.prefix_tokens), args.prefix_tokens, 0)
    chunks = [
        PackedChunk(rnd(s), rnd(s), s, args.prefix_tokens)
        for s in passage_sizes(ctx - args.prefix_tokens, args.passage_tokens)
    ]
    question = list(range(100, 100 + qlen))

    def placed() -> int:
        paged.load(prefix, chunks)  # resident after the first: a lease and the block table
        return int(paged.prefill([question])[0])

    for _ in range(3):  # the chunks enter the pool, then the placements are warm
        placed()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(REQUESTS):
            placed()
    kernels = [
        (e.key, e.device_time_total / REQUESTS, e.count / REQUESTS)
        for e in prof.key_averages()
        if e.device_time_total > 0
    ]
    gpu = sum(us for _, us, _ in kernels) / 1e3
    return {
        "context_tokens": ctx,
        "floor_ms": round((wbytes + kv_bytes_per_token(cfg, ctx) * ctx) / bw * 1e3, 3),
        "kernels_ms": round(gpu, 3),
        "parts": attribute(kernels, part_floors(cfg, ctx, qlen, wbytes, bw, rate)),
        "top_kernels": [
            {"kernel": k[:80], "us": round(us, 1), "launches": round(n, 1)}
            for k, us, n in sorted(kernels, key=lambda x: -x[1])[:12]
        ],
    }


def profile_lines(report: dict[str, Any]) -> list[str]:
    """The report's profiles as markdown, one section a context (none when the run had no
    ``--profile``), each beside its context's bench columns where the report has them."""

    def cell(v: Any) -> str:
        return "—" if v is None else str(v)

    rows = {r.get("context_tokens"): r for r in report.get("rows", [])}
    lines: list[str] = []
    for p in report.get("profile") or []:
        row = rows.get(p["context_tokens"], {})
        wall, host = row.get("ragcompress_paged_ms"), row.get("paged_load_host_ms")
        rest = "—" if wall is None else round(wall - p["kernels_ms"], 3)
        lines += [
            "",
            f"## Where the placed request's time goes ({p['context_tokens']} tokens, batch 1, `--profile`)",
            "",
            f"floor {p['floor_ms']} ms; GPU kernels {p['kernels_ms']} ms; the bench's placed request "
            f"{cell(wall)} ms (wall - kernels: {rest} ms; the placement's host time {cell(host)} ms).",
            "",
            "| part | ms a request | launches | µs a launch | its floor ms | x its floor |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['part']} | {r['ms']} | {r['launches']} | {cell(r['us_a_launch'])} | "
            f"{cell(r['floor_ms'])} | {cell(r['x_floor'])} |"
            for r in p["parts"]
        ]
        lines += [
            "",
            "Floors: the weight products, every weight read once at the copy bandwidth; the context "
            "attention, its K/V read once or its FLOPs at the matmul rate (the longer); the other "
            "parts are launch-bound (no floor). Top kernels:",
            "",
            "| kernel | µs a request | launches |",
            "|---|---|---|",
        ]
        lines += [f"| `{k['kernel']}` | {k['us']} | {k['launches']} |" for k in p["top_kernels"]]
    return lines
