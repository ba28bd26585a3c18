"""The zero-copy columns of ``ragcompress bench ttft``: chunks read in place from a paged pool.

* ``ragcompress_paged_ms`` — the same bf16 chunks as ``ragcompress_ms``, already resident in a
  :class:`~ragcompress.kv.fast.ChunkPool` (they entered it once, before timing): placing them is
  leasing them and writing the block table, then the question prefill (captured CUDA graph,
  paged attention: queries rotated by each chunk's ``-delta``, keys never rewritten) and the
  first token on the host (:class:`~ragcompress.kv.fast.PagedFastGenerator`);
* ``paged_insert_ms`` — a cold load, which copies every chunk into the pool: the median of
  ``INSERTS`` loads, each of the chunks as new objects (a packed chunk is known by identity, so
  each load misses and inserts them all, evicting the previous copy), the last of the very
  chunks the other columns place;
* ``paged_load_host_ms`` — of ``ragcompress_paged_ms``, the placement's host time (leasing the
  resident chunks, the block table's rows and upload): the median over ``--repeats`` loads, each
  after a full request's step, with the GPU idle while it runs;
* ``paged_vs_copy_logits_rel_err`` / ``paged_same_token_as_copy`` — the paged first-token
  logits against the copy engine's on the same request;
* ``ragcompress_paged_int4_ms``, ``paged_int4_*`` — the same with an
  :class:`~ragcompress.kv.fast.Int4ChunkPool`: the chunks are quantized to int4 when they enter
  (``paged_int4_insert_ms``) and dequantized inside the attention kernel; its logits differ from
  the copy engine's by the int4 error (on random weights, not a quality measure);
* ``ragcompress_paged_int8_ms``, ``paged_int8_*`` — the same with an
  :class:`~ragcompress.kv.fast.Int8ChunkPool` (one code byte a channel, the same kernel).

The paged engine shares the copy engine's decoder step (its fused weights too), so the two
differ only in placement and attention.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import traceback
from typing import Any

from ragcompress_bench.ttft_timing import Clock

__all__ = ["add_paged_args", "build_paged", "paged_row"]

INSERTS = 3  # cold loads a paged column's insert time is the median of


def add_paged_args(p: argparse.ArgumentParser) -> None:
    """``bench ttft``'s switches for the zero-copy columns and the ragged-batch rows."""
    p.add_argument(
        "--no-paged",
        dest="paged",
        action="store_false",
        help="skip the zero-copy columns (chunks read in place from a paged pool, ttft_paged)",
    )
    p.add_argument(
        "--no-paged-int4",
        dest="paged_int4",
        action="store_false",
        help="skip the int4 paged pool's column (chunks quantized on entry, dequantized in the kernel)",
    )
    p.add_argument(
        "--no-paged-int8",
        dest="paged_int8",
        action="store_false",
        help="skip the int8 paged pool's column (chunks int8 on entry, dequantized in the kernel)",
    )
    p.add_argument(
        "--no-ragged",
        dest="ragged",
        action="store_false",
        help="skip the ragged-batch queries/s rows (each question its own chunks, paged; ttft_ragged)",
    )


def build_paged(
    model: Any,
    fast: Any,
    contexts: list[int],
    args: Any,
    storage: Any,
    block_size: int = 64,
    *,
    pool_tokens: int | None = None,
    max_batch: int = 1,
) -> Any:
    """A :class:`~ragcompress.kv.fast.PagedFastGenerator` beside ``fast`` (its step and question
    bucket, ``max_batch`` questions), its pool (``storage``: the pool class, ChunkPool,
    Int4ChunkPool or Int8ChunkPool) of ``pool_tokens`` slots (default: the longest context with
    one partly filled block per passage), graphs captured; None (and the reason printed) when
    it cannot be built."""
    import torch

    from ragcompress.kv.fast import PagedFastGenerator
    from ragcompress.models.arch import UnsupportedModelError

    try:
        cap = max(contexts)
        passages = -(-cap // args.passage_tokens) + 1
        pool = storage.for_model(model, pool_tokens or cap + passages * block_size, block_size)
        paged = PagedFastGenerator(
            model,
            capacity=cap,
            max_question=args.question_tokens,
            max_new_tokens=args.new_tokens,
            max_batch=max_batch,
            buckets=(args.question_tokens,),
            graphs=fast.graphs,
            step=fast.step,
            pool=pool,
        )
        paged.warmup((1,), (args.question_tokens,))
        return paged
    except UnsupportedModelError as exc:  # a family the paged engine refuses: no column, said once
        print(f"no paged columns or rows: {exc}", flush=True)
        return None
    except Exception:
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def paged_row(
    paged: Any,
    prefix: Any,
    chunks: list[Any],
    question: list[int],
    clock: Clock,
    copy_logits: Any,
    tokens: dict[str, int],
    tag: str = "paged",
) -> dict[str, Any]:
    """The paged columns for one context, named after ``tag`` (``ragcompress_{tag}_ms``,
    ``{tag}_insert_ms``, ..; ``chunks`` the copy path's dense chunks; ``tokens`` gets the paged
    first token); the chunks leave the pool's lease after, so the next context may evict them."""
    import torch

    row: dict[str, Any] = {}
    try:
        dev = paged.device
        inserts = []
        for i in range(INSERTS):  # the last: the very chunks, resident for the columns below
            last = i == INSERTS - 1
            items = (prefix, chunks) if last else (copy.copy(prefix), [copy.copy(c) for c in chunks])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            paged.load(*items)  # the chunks enter the pool: a copy (or quantization) each
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            inserts.append((time.perf_counter() - t0) * 1e3)
            if not last:
                paged.release()
        row[f"{tag}_insert_ms"] = round(statistics.median(inserts), 3)

        def run() -> int:
            paged.load(prefix, chunks)  # resident: lease + block table write
            return int(paged.prefill([question])[0])

        row[f"ragcompress_{tag}_ms"] = round(clock(run), 3)
        row[f"{tag}_load_host_ms"] = round(load_host_ms(paged, prefix, chunks, question, clock.repeats), 3)
        tokens[f"ragcompress_{tag}"] = run()
        if copy_logits is not None and paged.last_logits is not None:
            got = paged.last_logits[0].float()
            err = (got - copy_logits.float()).norm() / copy_logits.float().norm()
            row[f"{tag}_vs_copy_logits_rel_err"] = round(float(err), 5)
        row[f"{tag}_same_token_as_copy"] = tokens.get("ragcompress") == tokens[f"ragcompress_{tag}"]
    except Exception as exc:  # the other columns must survive
        traceback.print_exc()
        row[f"ragcompress_{tag}_ms"] = None
        row[f"ragcompress_{tag}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        paged.release()
    return row


def load_host_ms(paged: Any, prefix: Any, chunks: list[Any], question: list[int], repeats: int) -> float:
    """Median host ms of ``paged.load`` over ``repeats`` requests, each load after the previous
    request's first token (as a request meets it: the placement's objects cold after a step)."""
    import torch

    cuda = paged.device.type == "cuda"
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(paged.device)
        t0 = time.perf_counter()
        paged.load(prefix, chunks)
        times.append((time.perf_counter() - t0) * 1e3)
        int(paged.prefill([question])[0])
    return statistics.median(times)
