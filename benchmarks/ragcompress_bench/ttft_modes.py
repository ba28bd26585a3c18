"""Time to first token of each assembly mode on the fast engine, for ``ragcompress bench ttft``.

Every mode goes through the same entry the :class:`~ragcompress.kv.fast.answer.FastKVAnswerer`
uses, :meth:`Assembly.load_fast` followed by the question prefill, from the same dense chunks
(each passage's slice of one joint prefill, stored as a chunk encoded after the shared prefix).
``blend`` runs its check pass (``blend_question``: its question probe) and
the partial forward of the recomputed tokens on the eager model, then writes the repaired context
into the buffer; ``ape`` assembles at shared positions and writes likewise. The model has random
weights: these rows measure time only (the first tokens of ``blend``/``ape`` are not compared with
a full prefill, whose context the chunks do not reproduce here).
"""

from __future__ import annotations

import traceback
from typing import Any

__all__ = ["DEFAULT_MODES", "RandomTextTokenizer", "mode_rows", "random_request"]

# (column, assembly spec): the modes timed at every context length
# (``concat`` is the table's ``ragcompress_ms``/``ragcompress_warm_ms`` columns already)
DEFAULT_MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ape", {"name": "ape"}),
    ("blend_05", {"name": "blend", "recompute": 0.05}),
    ("blend_15", {"name": "blend", "recompute": 0.15}),
    ("blend_question_15", {"name": "blend_question", "recompute": 0.15}),
    ("blend_question_draft4_15", {"name": "blend_question", "recompute": 0.15, "draft_tokens": 4}),
    # the share that recovers most two-hop answers on the 1.5B reader (results/fidelity_twohop50_30)
    ("blend_question_30", {"name": "blend_question", "recompute": 0.3}),
    ("blend_link_15", {"name": "blend_link", "recompute": 0.15}),
    ("blend_link_draft4_15", {"name": "blend_link", "recompute": 0.15, "draft_tokens": 4}),
)


class RandomTextTokenizer:
    """What ``Assembly.bind`` reads of a tokenizer, for the random token ids this benchmark uses:
    one id in 16 ends a sentence (English runs ~15-20 tokens a sentence), so a mode that ranks by
    sentences (``blend_link``) does its real work. Random passages share no bigram, so its links
    are empty and the timing is its ranking's cost over ``blend_question``'s."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return ["." if i % 16 == 0 else "x" for i in ids]


def _chunks(kv: list[tuple[Any, Any]], p: int, sizes: list[int]) -> tuple[Any, list[Any]]:
    """The shared prefix and one dense chunk per passage, as the chunk cache would hold them."""
    import torch

    from ragcompress.kv.chunk import DenseLayer, KVChunk
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.prefix import PrefixKV

    prefix = PrefixKV(
        tuple(range(p)), [k[:, :p] for k, _ in kv], [v[:, :p] for _, v in kv], model="bench", layout="bench"
    )
    chunks, start = [], p
    for i, n in enumerate(sizes):
        layers = []
        for k, v in kv:
            pos = torch.arange(p, p + n, device=k.device).expand(k.shape[0], n).contiguous()
            layers.append(
                DenseLayer(k[:, start : start + n].contiguous(), v[:, start : start + n].contiguous(), pos)
            )
        key = ChunkKey(model="bench", layout="bench", presses="", tokens=f"passage-{i}")
        # token ids on the device too: a chunk on the CPU is a host-tier chunk, streamed
        ids = torch.zeros(n, dtype=torch.long, device=kv[0][0].device)
        chunks.append(KVChunk(layers, ids, p, n, key, "bench"))
        start += n
    return prefix, chunks


def random_request(
    model: Any, ctx: int, prefix_tokens: int = 64, passage_tokens: int = 512, question_tokens: int = 32
) -> tuple[Any, list[Any], list[int]]:
    """``(prefix, chunks, question)`` for diagnostic scripts: ``ctx`` random token ids (seed
    ``ctx``, ids in [100, 32000)) prefilled jointly on ``model``, cut into the shared prefix and one
    dense chunk per passage (:func:`_chunks`), and a random question of ``question_tokens`` ids."""
    import torch
    from transformers import DynamicCache

    from ragcompress.models.compat import cache_kwargs
    from ragcompress_bench.ttft import passage_sizes

    g = torch.Generator().manual_seed(ctx)
    ids = torch.randint(100, 32000, (ctx,), generator=g)
    question = torch.randint(100, 32000, (question_tokens,), generator=g).tolist()
    with torch.inference_mode():
        cache = DynamicCache()
        model(
            input_ids=ids[None].to(model.device),
            **cache_kwargs(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        kv = [(layer.keys[0], layer.values[0]) for layer in cache.layers]  # type: ignore[union-attr,index]
    prefix, chunks = _chunks(kv, prefix_tokens, passage_sizes(ctx - prefix_tokens, passage_tokens))
    return prefix, chunks, question


def mode_rows(
    model: Any,
    fast: Any,
    kv: list[tuple[Any, Any]],
    p: int,
    sizes: list[int],
    question: list[int],
    clock: Any,
    modes: tuple[tuple[str, dict[str, Any]], ...] = DEFAULT_MODES,
) -> dict[str, Any]:
    """``{"<mode>_ms": median TTFT, "<mode>_recompute": share}`` for each mode (errors kept by name).

    ``kv``: per layer (kv_heads, ctx, head_dim) keys and values of the joint prefill; ``p``: prefix
    tokens; ``sizes``: tokens per passage; ``question``: the question's token ids.
    """
    from ragcompress.kv.assembly import build_assembly
    from ragcompress.kv.fast import PackedChunk

    prefix, chunks = _chunks(kv, p, sizes)
    packed_prefix = PackedChunk.from_prefix(prefix)
    row: dict[str, Any] = {}
    stand_in = RandomTextTokenizer(int(model.config.vocab_size))
    for label, spec in modes:
        mode = build_assembly(spec)
        share = [0.0]

        def run(mode: Any = mode, share: list[float] = share) -> int:
            position, share[0] = mode.load_fast(fast, packed_prefix, model, prefix, chunks, question)
            del position
            return int(fast.prefill([question])[0])

        try:
            mode.check(model)
            mode.check_fast()
            mode.bind(model, stand_in)
            row[f"{label}_ms"] = round(clock(run), 3)
            row[f"{label}_recompute"] = round(share[0], 4)
        except Exception as exc:  # one failing mode must not lose the others' numbers
            traceback.print_exc()
            row[f"{label}_ms"] = None
            row[f"{label}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row
