"""``ragcompress bench ttft``: time to first token from cached chunks, side by side.

On one model with random weights built from an inline config (``--shape``: Llama-3-8B by default,
Qwen2.5-7B, Mistral-7B, Gemma-3-12B, see ``ttft_shapes``; bf16, on the GPU; no hub), for each
context length, in one process and on the same inputs:

* ``full_prefill_ms`` — prefill prefix + passages + question from scratch (SDPA);
* ``hf_reuse_ms`` — a ready ``DynamicCache`` of the context, the question prefilled against it;
* ``hf_static_ms`` — the context prefilled once into a ``StaticCache``, the question
  prefilled against it by the forward compiled as ``--static-compile`` says (``hf_static_compile``;
  the anchor: ``torch.compile(mode="reduce-overhead")``, CUDA graphs, the default on CUDA);
  ``hf_static_compile_s``: the compile, timed on its own (see ``ttft_static``);
* ``ragcompress_ms`` — the fast path: bf16 chunks written into the static buffer, question
  prefill from a captured CUDA graph (:class:`ragcompress.kv.fast.FastGenerator`);
* ``ragcompress_compressed_ms`` — the same with knorm (0.5) + int4 chunks (fused dequantize +
  re-rotate);
* ``floor_ms`` — non-embedding weight bytes (a tied output layer counted) + the context KV bytes
  a question must read (a local sliding-window layer: its window's only) over the
  device-to-device copy bandwidth measured in the same run (bytes read + written per second);
* ``kvzip_*`` — kvzip 0.6 + int4/64 chunks on the GPU, in pinned host memory (streamed under the
  question's compute, ``--stream-group``) and on disk, and the host-to-device bandwidths of the
  run (:mod:`ragcompress_bench.ttft_host`; ``--no-host`` skips them);
* ``ragcompress_paged_ms`` — zero-copy placement: the same chunks already resident in a paged
  pool, placed by a block-table write and read in place (:mod:`ragcompress_bench.ttft_paged`;
  ``--no-paged`` skips it; ``paged_load_host_ms``: the placement's host share of it), and
  ``ragcompress_paged_int4_ms`` / ``ragcompress_paged_int8_ms``, the same from an int4 / int8
  pool (dequantized in the attention kernel; ``--no-paged-int4`` / ``--no-paged-int8`` skip
  them);
* ``ragcompress_stored_ms`` — the same chunks as the chunk cache stores them (layer by layer;
  Gemma 3's local layers skip chunks out of their window; :mod:`ragcompress_bench.ttft_stored`);
* ``ragcompress_warm_ms`` — a separate, warm case: the request repeats the previous one's
  chunks, which :meth:`FastGenerator.load_reusing` finds resident in the buffer and does not
  rewrite (question prefill + first token only). The cold ``ragcompress_ms`` always writes.

Each time runs from chunks already on the GPU to the first token on the host; median of
``--repeats`` after ``--warmup``, with CUDA events. Queries/s at several batch sizes (questions
sharing the chunks) close the report. Writes ``ttft_gpu.json``, ``ttft_gpu.md`` and
``ttft_gpu.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragcompress.models.compat import cache_kwargs
from ragcompress_bench.ttft_paged import add_paged_args
from ragcompress_bench.ttft_report import device_name, markdown, write_report
from ragcompress_bench.ttft_shapes import SHAPES, build_model, kv_bytes_per_token, weight_bytes
from ragcompress_bench.ttft_static import COMPILE_CHOICES, static_cache_row
from ragcompress_bench.ttft_timing import (
    Clock,
    copy_bandwidth,
    ints,
    matmul_rate,
    passage_sizes,
    run_qps,
)

__all__ = ["SHAPES", "build_model", "main"]

#: Question slots beyond ``--question-tokens`` in the engine: a draft of the answer (``blend_question``).
DRAFT_ROOM = 16


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragcompress bench ttft", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--contexts", default="1024,4096,10240,32768", help="context lengths (tokens, prefix included)"
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for ttft_gpu.json / .md")
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--question-tokens", type=int, default=32)
    p.add_argument("--prefix-tokens", type=int, default=64)
    p.add_argument(
        "--passage-tokens", type=int, default=512, help="tokens per passage (the last one takes the rest)"
    )
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prefill-repeats", type=int, default=5, help="repeats of the (slow) full prefill")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for queries/s")
    p.add_argument("--qps-context", type=int, default=10240)
    p.add_argument("--new-tokens", type=int, default=16, help="answer length for the queries/s with decoding")
    p.add_argument("--press-ratio", type=float, default=0.5)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--static-compile",
        choices=COMPILE_CHOICES,
        default=None,
        help="how the StaticCache anchor's forward is compiled (default: reduce-overhead on "
        "CUDA, none on CPU)",
    )
    p.add_argument(
        "--no-modes",
        dest="modes",
        action="store_false",
        help="skip the assembly-mode rows (ape, blend at 5%% and 15%% and blend_question at 15%% recompute)",
    )
    p.add_argument("--stream-group", type=int, default=8, help="layers per host-to-device copy (host tier)")
    p.add_argument(
        "--no-host",
        dest="host_tiers",
        action="store_false",
        help="skip the host/disk tier columns (kvzip 0.6 + int4/64 chunks, ttft_host)",
    )
    add_paged_args(p)
    p.add_argument(
        "--no-stored",
        dest="stored",
        action="store_false",
        help="skip the stored-chunk columns (chunks as the chunk cache holds them, ttft_stored)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile the placed (paged) request at each context: each part's GPU time against its "
        "own floor, launches, host time (CUDA; ttft_profile)",
    )
    return p


def _compressed_chunks(
    kv: list[tuple[Any, Any]], starts: list[int], sizes: list[int], args: Any
) -> list[Any]:
    """knorm + quantize through the presses, each passage as the chunk cache would store it."""
    from ragcompress.kv.fast import QuantizedPackedChunk
    from ragcompress.kv.presses.knorm import KnormPress
    from ragcompress.kv.presses.quantize import QuantizePress
    from ragcompress_bench.ttft_stored import stored_chunks

    presses = (KnormPress(ratio=args.press_ratio), QuantizePress(bits=args.bits, group_size=32))
    return [QuantizedPackedChunk.from_chunk(c) for c in stored_chunks(kv, starts, sizes, presses)]


def run_context(
    model: Any, fast: Any, ctx: int, args: Any, clock: Clock, bw: float, wbytes: int, paged: Any = ()
) -> dict[str, Any]:
    """One context's row; ``paged``: ``(tag, PagedFastGenerator)`` pairs (ttft_paged's columns)."""
    import torch
    from transformers import DynamicCache

    from ragcompress.kv.fast import PackedChunk

    dev = model.device
    g = torch.Generator(device="cpu").manual_seed(args.seed + ctx)
    vocab = model.config.vocab_size
    p = args.prefix_tokens
    sizes = passage_sizes(ctx - p, args.passage_tokens)
    ids = torch.randint(100, vocab, (ctx,), generator=g)
    question = torch.randint(100, vocab, (args.question_tokens,), generator=g).tolist()
    row: dict[str, Any] = {"context_tokens": ctx, "passages": len(sizes), "question_tokens": len(question)}
    with torch.inference_mode():
        # no config: a sliding-window family's local layers would keep only their last window
        # slots; chunks keep every token (the fast engine applies the window by position)
        cache = DynamicCache()
        model(input_ids=ids[None].to(dev), **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        # per layer (kv_heads, ctx, d)
        kv = [(layer.keys[0], layer.values[0]) for layer in cache.layers]  # type: ignore[union-attr,index]
        del cache
        full = torch.tensor([[*ids.tolist(), *question]], device=dev)

        def full_prefill() -> int:
            return int(model(input_ids=full, use_cache=False, logits_to_keep=1).logits[0, -1].argmax())

        qids = torch.tensor([question], device=dev)
        qpos = torch.arange(ctx, ctx + len(question), device=dev)

        def hf_reuse() -> int:
            c = DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in kv], config=model.config)
            out = model(
                input_ids=qids,
                **cache_kwargs(model, c),
                use_cache=True,
                position_ids=qpos[None],
                cache_position=qpos,
                logits_to_keep=1,
            )
            return int(out.logits[0, -1].argmax())

        starts = [p + sum(sizes[:i]) for i in range(len(sizes))]
        prefix = PackedChunk.from_layers([k[:, :p] for k, _ in kv], [v[:, :p] for _, v in kv], p, 0)
        # Chunks keep the positions of the joint prefill (delta 0 at assembly, same kernel work),
        # so all methods must agree on the first token.
        dense = [
            PackedChunk.from_layers([k[:, s : s + n] for k, _ in kv], [v[:, s : s + n] for _, v in kv], n, s)
            for s, n in zip(starts, sizes, strict=True)
        ]

        def fast_path(chunks: list[Any]) -> Callable[[], int]:
            def run() -> int:
                fast.load(prefix, chunks)
                return int(fast.prefill([question])[0])

            return run

        def warm(chunks: list[Any] = dense) -> int:
            # the same chunk objects as the previous request: already in the buffer, not rewritten
            fast.load_reusing(prefix, chunks)
            return int(fast.prefill([question])[0])

        methods: dict[str, Callable[[], int]] = {
            "full_prefill": full_prefill,
            "hf_reuse": hf_reuse,
            "ragcompress": fast_path(dense),
            "ragcompress_warm": warm,
        }
        tokens: dict[str, int] = {}
        fast_logits = None
        for name, fn in methods.items():
            try:
                reps = args.prefill_repeats if name == "full_prefill" else args.repeats
                row[f"{name}_ms"] = round(
                    clock(fn, repeats=reps, warmup=1 if name == "full_prefill" else None), 3
                )
                tokens[name] = fn()
                if name == "ragcompress" and fast.last_logits is not None:
                    fast_logits = fast.last_logits[0].clone()
            except Exception as exc:  # one failing method must not lose the others' numbers
                traceback.print_exc()
                row[f"{name}_ms"] = None
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if fast_logits is not None:
            # random weights give flat logits: the agreement in numbers says whether a differing
            # first token is a near-tie (bf16 rounding) or an error
            ref = model(input_ids=full, use_cache=False, logits_to_keep=1).logits[0, -1].float()
            top = ref.topk(2).values
            row["fast_logits_rel_err"] = round(float((fast_logits - ref).norm() / ref.norm()), 5)
            row["full_prefill_top2_margin"] = round(float(top[0] - top[1]), 5)
            row["fast_logits_max_abs_diff"] = round(float((fast_logits - ref).abs().max()), 5)
        if args.stored:
            from ragcompress_bench.ttft_stored import stored_rows

            row.update(stored_rows(fast, prefix, kv, starts, sizes, question, clock, tokens))
        for tag, engine in paged:
            from ragcompress_bench.ttft_paged import paged_row

            row.update(paged_row(engine, prefix, dense, question, clock, fast_logits, tokens, tag))
        del dense
        if args.modes:
            from ragcompress_bench.ttft_modes import mode_rows

            row.update(mode_rows(model, fast, kv, p, sizes, question, clock))
        try:
            comp = _compressed_chunks(kv, starts, sizes, args)
            row["compressed_chunk_bytes"] = sum(c.nbytes for c in comp)
            run = fast_path(comp)
            row["ragcompress_compressed_ms"] = round(clock(run), 3)
            tokens["ragcompress_compressed"] = run()
            del comp
        except Exception as exc:
            traceback.print_exc()
            row["ragcompress_compressed_ms"] = None
            row["ragcompress_compressed_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if args.host_tiers:
            from ragcompress_bench.ttft_host import host_rows

            try:
                row.update(host_rows(model, fast, kv, p, sizes, ids, question, clock, args.stream_group))
            except Exception as exc:
                traceback.print_exc()
                row["kvzip_host_error"] = f"{type(exc).__name__}: {exc}"[:300]
    static = static_cache_row(model, ids, question, clock, args.static_compile)
    if "hf_static_first_token" in static:
        tokens["hf_static"] = static.pop("hf_static_first_token")
    row.update(static)
    kv_bytes = ctx * kv_bytes_per_token(model.config, ctx)
    row["floor_ms"] = round((wbytes + kv_bytes) / bw * 1e3, 3)
    row["first_tokens"] = tokens
    ref = tokens.get("full_prefill")
    row["fast_matches_full_prefill"] = ref is not None and (
        tokens.get("ragcompress") == ref == tokens.get("ragcompress_warm")
    )
    row["hf_static_matches_full_prefill"] = ref is not None and tokens.get("hf_static") == ref
    row["device"] = device_name(dev)
    return row


def main(argv: list[str]) -> int:
    import torch

    from ragcompress.kv.fast import EagerStep, FastGenerator, ReferenceCascade, default_step

    args = _parser().parse_args(argv)
    dev = torch.device(args.device)
    if args.static_compile is None:
        args.static_compile = "reduce-overhead" if dev.type == "cuda" else "none"
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(
            "ragcompress bench ttft: no CUDA device; pass --device cpu --shape tiny for a smoke run",
            file=sys.stderr,
        )
        return 2
    dtype = getattr(torch, args.dtype)
    contexts = ints(args.contexts)
    batches = ints(args.batches)
    clock = Clock(dev, args.warmup, args.repeats)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the random weights: the same model run to run
    model = build_model(args.shape, args.device, dtype)
    wbytes = weight_bytes(model)
    bw = copy_bandwidth(dev, clock)
    rate = matmul_rate(dev, dtype, clock)
    print(
        f"model built in {time.perf_counter() - t0:.1f}s; copy bandwidth {bw / 1e9:.0f} GB/s; "
        f"matmul {rate / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    from ragcompress_bench.ttft_host import host_bandwidths

    extra = {
        "host_bandwidths": host_bandwidths(dev, clock),
        "stream_group": args.stream_group,
        "matmul_tflops": float(f"{rate / 1e12:.4g}"),  # 4 digits: a CPU smoke run is ~0.01
    }
    print(f"host-to-device bandwidth (GB/s): {extra['host_bandwidths']}", flush=True)
    fast = None
    # Fall back (and say so in the report) rather than lose the run if flash or graphs fail here.
    plans = (
        (None, True, True),
        (None, True, False),
        (ReferenceCascade(), True, False),
        (ReferenceCascade(), False, False),
    )
    for attention, graphs, fused in plans:
        try:
            fast = FastGenerator(
                model,
                capacity=max([*contexts, args.qps_context]),
                # room for a draft after the question: blend_question's probe of question +
                # draft runs on the engine (its own bucket) only where they fit
                max_question=args.question_tokens + DRAFT_ROOM,
                max_new_tokens=args.new_tokens,
                max_batch=max(batches),
                buckets=(args.question_tokens, args.question_tokens + DRAFT_ROOM),
                graphs=graphs,
                attention=attention,
                step=default_step(model) if fused else EagerStep(model),
                stream_group=args.stream_group,
            )
            fast.warmup(batches, (args.question_tokens,))
            break
        except Exception:
            traceback.print_exc()
            fast = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if fast is None:
        return 1
    print(
        f"fast path ready ({type(fast.attention).__name__}, graphs={fast.graphs}) "
        f"at {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    from ragcompress.kv.fast import ChunkPool, Int4ChunkPool, Int8ChunkPool
    from ragcompress_bench.ttft_paged import build_paged

    kinds = [("paged", ChunkPool)] if args.paged else []
    kinds += [("paged_int4", Int4ChunkPool)] if args.paged and args.paged_int4 else []
    kinds += [("paged_int8", Int8ChunkPool)] if args.paged and args.paged_int8 else []
    built = [(tag, build_paged(model, fast, contexts, args, storage)) for tag, storage in kinds]
    paged = [(tag, engine) for tag, engine in built if engine is not None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    qps: list[dict[str, Any]] = []
    for ctx in contexts:
        rows.append(run_context(model, fast, ctx, args, clock, bw, wbytes, paged))
        print(json.dumps(rows[-1]), flush=True)
        write_report(
            out, argv, args, dev, fast, bw, wbytes, rows, qps, extra
        )  # partial results survive a timeout
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    qps = run_qps(model, fast, args, clock, rate)
    if args.profile:  # on the lead column's own engine, while it is alive
        from ragcompress_bench.ttft_profile import profile_placed

        extra["profile"] = profile_placed(model, dict(paged).get("paged"), contexts, args, bw, rate, wbytes)
    if args.paged and args.ragged:
        from ragcompress_bench.ttft_ragged import run_ragged_qps

        del paged, built  # the column pools' memory, for the ragged engine's pool
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        qps += run_ragged_qps(model, fast, args, clock, rate)
    print(markdown(write_report(out, argv, args, dev, fast, bw, wbytes, rows, qps, extra)))
    return 0
