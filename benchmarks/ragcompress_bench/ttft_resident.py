"""A fast engine holding a random context, for the diagnostic scripts under ``results/``: the
warm request that ``bench ttft``'s ``ragcompress_warm_ms`` column times (the previous request's
chunks again, then the question's prefill), without the bench's other columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragcompress_bench.ttft_shapes import head_dim
from ragcompress_bench.ttft_timing import passage_sizes


@dataclass
class Resident:
    """``fast`` (a :class:`~ragcompress.kv.fast.FastGenerator`) with ``prefix`` + ``chunks``
    loaded; ``warm()`` reloads them (nothing written) and prefills ``question``, returning
    the first token (a host sync)."""

    fast: Any
    prefix: Any
    chunks: list[Any]
    question: list[int]

    def warm(self) -> int:
        self.fast.load_reusing(self.prefix, self.chunks)
        return int(self.fast.prefill([self.question])[0])


def resident(
    model: Any, ctx: int, qlen: int, step: Any = None, passage: int = 512, seed: int = 0
) -> Resident:
    """A graph-captured engine over ``ctx`` tokens of random bf16 chunks (a 64-token prefix, then
    ``passage``-token chunks) on CUDA, for questions of ``qlen`` tokens. ``step``: the decoder
    step (the model's default when None). The chunks are drawn from their own generator seeded
    with ``seed``, so engines built with the same seed hold the same context and an A/B of two
    steps compares answers to the same request."""
    import torch

    from ragcompress.kv.fast import FastGenerator, PackedChunk, default_step

    cfg = model.config
    fast = FastGenerator(
        model, capacity=ctx, max_question=qlen, max_new_tokens=4, max_batch=1, buckets=(qlen,),
        graphs=True, step=default_step(model) if step is None else step,
    )  # fmt: skip
    fast.warmup((1,), (qlen,))
    kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(t: int) -> Any:
        return torch.randn(t, *kv_shape, device="cuda", dtype=torch.bfloat16, generator=gen)

    prefix = PackedChunk(rnd(64), rnd(64), 64, 0)
    chunks = [PackedChunk(rnd(s), rnd(s), s, 64) for s in passage_sizes(ctx - 64, passage)]
    fast.load(prefix, chunks)
    return Resident(fast, prefix, chunks, list(range(100, 100 + qlen)))
