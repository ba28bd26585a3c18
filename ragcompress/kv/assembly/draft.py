"""A greedy draft of the answer's first tokens over the stale ``concat`` context.

``blend_question`` ranks the context by where the tokens that start the answer look. The
question's last tokens are the closest such tokens the request has; the answer's own first tokens
are closer still. On the two-hop set's selection probe (1.5B reader, 15% recompute), letting a
4-token draft vote with the question's last 8 tokens lowered the gold answer's loss against a full
prefill from 0.32 to 0.22 nats/token (``benchmarks/results/fidelity_selection_twohop/``), and on
``bench fidelity``'s 30 two-hop questions from 0.22 to 0.02 (``benchmarks/results/fidelity_draft30/``;
on Disfl-QA it lost F1, so ``blend_question`` drafts nothing unless asked).
The draft is decoded over the unrepaired context, so it may differ from the final answer; it only
chooses what is recomputed, and a wrong draft still points at the passage it read from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ragcompress.models.compat import cache_kwargs

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly.base import Context

__all__ = ["draft_answer", "stop_ids", "untouched"]


@contextmanager
def untouched(cache: DynamicCache) -> Iterator[DynamicCache]:
    """``cache`` as it was on entry once the block ends, whatever the block appended. A dynamic
    layer appends by concatenation (new tensors) and a sliding one also counts what it saw, so a
    shallow copy of each layer's state, put back afterwards, restores it without copying K/V."""
    kept = [dict(vars(layer)) for layer in cache.layers]
    try:
        yield cache
    finally:
        for layer, state in zip(cache.layers, kept, strict=True):
            vars(layer).clear()
            vars(layer).update(state)


def stop_ids(model: PreTrainedModel) -> set[int]:
    """The token ids that end an answer: the model's generation config's end-of-sequence ids."""
    eos: Any = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


def draft_answer(model: PreTrainedModel, ctx: Context, question: Sequence[int], n: int) -> list[int]:
    """The first ≤ ``n`` tokens of the greedy answer to ``question`` (token ids) over ``ctx``,
    ending early at an end-of-sequence token (which is not returned): one forward of the question,
    then one of each drafted token. ``ctx.cache`` is left as it was."""
    import torch

    if n < 1:
        return []
    stop, dev = stop_ids(model), model.device
    physical, position, ids = ctx.cache.get_seq_length(), ctx.position, list(question)
    out: list[int] = []
    with untouched(ctx.cache), torch.inference_mode():
        while ids:
            m = len(ids)
            logits = model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
                position_ids=torch.arange(position, position + m, device=dev)[None],
                cache_position=torch.arange(physical, physical + m, device=dev),
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(model, ctx.cache),
                **ctx.step_kwargs(physical, m),
            ).logits
            token = int(logits[0, -1].argmax())
            if token in stop:
                break
            out.append(token)
            physical, position, ids = physical + m, position + m, ([token] if len(out) < n else [])
    return out
