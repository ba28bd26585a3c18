"""The ragged-batch rows of ``ragcompress bench ttft``'s queries/s table: B questions in one step,
each over its own chunk set (``chunk_sets``: "own, paged").

A RAG service batches questions whose retrievers returned different passages. Here a corpus of
passages twice ``--qps-context`` is resident in a :class:`~ragcompress.kv.fast.ChunkPool`;
question ``i`` reads a random ordered selection of them filling ``--qps-context`` (the
passages overlap between questions, as popular passages do). Each timed call places the batch
(:meth:`~ragcompress.kv.fast.PagedFastGenerator.load_batch`: a lease and one block table per
question, no K/V copied) and runs the step; the rows sit beside the shared-context rows of
:func:`~ragcompress_bench.ttft_timing.run_qps`, with the same compute floor (each question
attends to as many keys).
"""

from __future__ import annotations

from typing import Any

from ragcompress_bench.ttft_timing import Clock, ints, qps_rows, random_chunks

__all__ = ["run_ragged_qps"]


def run_ragged_qps(model: Any, fast: Any, args: Any, clock: Clock, rate: float) -> list[dict[str, Any]]:
    """Ragged rows for every ``--batches`` size; [] (the reason printed) where the paged engine
    cannot be built for this model."""
    import random

    from ragcompress.kv.fast import ChunkPool
    from ragcompress_bench.ttft_paged import build_paged

    ctx, block = args.qps_context, 64
    prefix, corpus = random_chunks(model, args, 2 * (ctx - args.prefix_tokens))
    batches = ints(args.batches)
    room = 2 * ctx + (len(corpus) + 1) * block  # every corpus passage, each with a partial block
    paged = build_paged(model, fast, [ctx], args, ChunkPool, block, pool_tokens=room, max_batch=max(batches))
    if paged is None:
        return []
    rng = random.Random(args.seed + 3)
    sets = [_pick(rng, corpus, ctx - args.prefix_tokens) for _ in range(max(batches))]
    requests = [(prefix, s) for s in sets]
    paged.load_batch(requests)  # every passage a question reads enters the pool once, untimed

    def load(b: int) -> None:
        paged.load_batch(requests[:b])

    rows = qps_rows(model, paged, args, clock, rate, load, "own, paged")
    paged.release()
    return rows


def _pick(rng: Any, corpus: list[Any], tokens: int) -> list[Any]:
    """Passages of ``corpus`` in a random order, as many as fit ``tokens``."""
    out, n = [], 0
    for c in rng.sample(corpus, len(corpus)):
        if n + int(c.num_tokens) <= tokens:
            out.append(c)
            n += int(c.num_tokens)
    return out
