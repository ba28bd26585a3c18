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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly.base import Context

__all__ = ["draft_answer", "untouched"]


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


def draft_answer(model: PreTrainedModel, ctx: Context, question: Sequence[int], n: int) -> list[int]:
    """The first ≤ ``n`` tokens of the greedy answer to ``question`` (token ids) over ``ctx``,
    ending early at an end-of-sequence token (which is not returned): one forward of the question,
    then one of each drafted token (:func:`~ragcompress.generate.decode`, the eager path's own
    loop). ``ctx.cache`` is left as it was."""
    from ragcompress.generate import decode, model_stop_ids

    if n < 1:
        return []
    with untouched(ctx.cache):
        steps = decode(model, question, ctx.cache, n, ctx.position, model_stop_ids(model), ctx.step_kwargs)
        return list(steps)
