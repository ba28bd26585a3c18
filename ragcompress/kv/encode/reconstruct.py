"""The reconstruction pass of KVzip-style presses: how much the model looks at each passage
token while it repeats the passage.

Run once per encoding batch, right after the passages' own forward pass, on top of the KV that
pass produced: the input is ``prompt + passage`` per row, positions continuing after the
passage, through the model's eager view (:mod:`ragcompress.kv.encode.eager`). A tap on every
attention module reduces that layer's weights to a per-head maximum over the reconstruction
queries as soon as they exist, so only (batch, heads, n) per layer is kept, never the
(batch, heads, queries, keys) weights of all layers at once. One
layer's weights still exist for a moment: batch × heads × (len(prompt) + n) × (prefix + 2n +
len(prompt)) floats — sized for retrieval passages (hundreds to a few thousand tokens); the
encoder's ``max_batch_tokens`` bounds the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.encode.eager import eager_view, tap_attention
from ragcompress.models.arch import arch_for
from ragcompress.models.compat import cache_kwargs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["reconstruction_prompt", "reconstruction_scores"]


def reconstruction_prompt(presses: Sequence[Any]) -> str | None:
    """The prompt of the press (or chained press) that needs a reconstruction pass, if any.

    Raises when a chain asks for two different prompts, or mixes a reconstruction press with
    one that observes the passage's own attention (the encoder passes one ``attn``)."""
    flat: list[Any] = []
    todo = list(presses)
    while todo:  # chains may nest
        p = todo.pop()
        inner = getattr(p, "presses", None)
        todo += list(inner) if inner is not None else []
        flat += [] if inner is not None else [p]
    prompts = {p.prompt for p in flat if getattr(p, "needs_reconstruction", False)}
    if not prompts:
        return None
    if len(prompts) > 1:
        raise ValueError(f"presses ask for different reconstruction prompts: {sorted(prompts)}")
    if any(getattr(p, "needs_attention", False) for p in flat):
        raise ValueError(
            "a press chain cannot mix a reconstruction press (kvzip) with one that observes the "
            "passage's own attention (observed): the encoder passes one attention to the chain"
        )
    return prompts.pop()


def reconstruction_scores(
    model: PreTrainedModel,
    cache: Any,
    passages: Sequence[Sequence[int]],
    prompt: Sequence[int],
    prefix_len: int,
    width: int,
    pad_id: int,
) -> list[torch.Tensor]:
    """Per layer, (batch, num_attention_heads, width): the largest weight any reconstruction
    query of a row pays each of its passage slots (0 past the row's passage).

    ``cache`` holds the prefix (``prefix_len`` tokens) then the passages, right-padded to
    ``width``; it is extended by the reconstruction tokens (callers slice chunks from the
    passage slots, which do not change).
    """
    import torch

    dev = model.device
    b, r = len(passages), len(prompt) + width
    ids = torch.full((b, r), int(pad_id), dtype=torch.long, device=dev)
    mask = torch.zeros((b, prefix_len + width + r), dtype=torch.long, device=dev)
    rows = torch.zeros((b, r), dtype=torch.bool, device=dev)  # real reconstruction queries
    pos = torch.zeros((b, r), dtype=torch.long, device=dev)
    mask[:, :prefix_len] = 1
    for i, p in enumerate(passages):
        m, q = len(p), len(prompt) + len(p)
        ids[i, :q] = torch.tensor([*prompt, *p], device=dev)
        mask[i, prefix_len : prefix_len + m] = 1
        mask[i, prefix_len + width : prefix_len + width + q] = 1
        rows[i, :q] = True
        # positions continue right after this row's passage, as if the padding were not there
        pos[i] = torch.arange(prefix_len + m, prefix_len + m + r, device=dev)
    view = eager_view(model)  # the model's tensors with eager attention; the model is untouched
    scores: list[torch.Tensor | None] = [None] * arch_for(model).num_layers

    def reduce(idx: int, output: Any) -> Any:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("attention weights are missing: kvzip needs eager attention")
        w = weights[..., prefix_len : prefix_len + width].float()  # (b, heads, r, width)
        w = w.masked_fill(~rows[:, None, :, None], 0.0)
        scores[idx] = w.amax(dim=2)
        return (output[0], None, *output[2:])  # drop the weights: nothing keeps them

    # the tap sees only this thread's forward: other requests may run the same view meanwhile
    with torch.inference_mode(), tap_attention(view, reduce):
        view(
            input_ids=ids,
            attention_mask=mask,
            **cache_kwargs(view, cache),
            position_ids=pos,
            cache_position=torch.arange(prefix_len + width, prefix_len + width + r, device=dev),
            use_cache=True,
            logits_to_keep=1,
        )
    if any(s is None for s in scores):
        raise RuntimeError("the reconstruction pass did not reach every attention layer")
    return [s for s in scores if s is not None]
