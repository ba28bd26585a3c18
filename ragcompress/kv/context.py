"""Prefix KV + chunks → ready context for one model: what ``Generator.generate_from_chunks`` calls.

:func:`prepare_context` is the one place where an assembly mode turns chunks into a
:class:`~ragcompress.kv.assembly.Context`; answering, streaming and teacher forcing all go through it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.encode.encoder import prefix_kv
from ragcompress.models.load import cache_kwargs
from ragcompress.models.rope import Rotary
from ragcompress.prompt import PromptLayout

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly import Assembly, Context

__all__ = ["chunk_context", "prepare_context", "rotary_of", "teacher_forced"]

_ROTARY: weakref.WeakKeyDictionary[Any, Rotary] = weakref.WeakKeyDictionary()


def rotary_of(model: PreTrainedModel) -> Rotary:
    rot = _ROTARY.get(model)
    if rot is None:
        rot = _ROTARY[model] = Rotary.from_model(model)
    return rot


def prepare_context(
    model: PreTrainedModel,
    layout: PromptLayout,
    chunks: Sequence[KVChunk],
    question: Sequence[int],
    assembly: Assembly | Mapping[str, Any] | None = None,
) -> Context:
    """The context the question ``question`` (token ids) is prefilled after, under ``assembly``
    (an object, a spec, or None: ``concat``); ``ctx.mode`` is the mode's name."""
    from ragcompress.kv.assembly import build_assembly

    mode = build_assembly(assembly)
    ctx = mode.prepare(model, prefix_kv(model, layout), chunks, question)
    ctx.mode = mode.name
    return ctx


def chunk_context(
    model: PreTrainedModel, layout: PromptLayout, chunks: Sequence[KVChunk]
) -> tuple[DynamicCache, int]:
    """``(cache, next_position)``: the shared prefix then ``chunks`` in order, re-positioned (``concat``)."""
    ctx = prepare_context(model, layout, chunks, ())
    return ctx.cache, ctx.position


def teacher_forced(
    model: PreTrainedModel, ctx: Context, question: Sequence[int], targets: Sequence[int]
) -> torch.Tensor:
    """(len(targets), vocab) fp32 log-probabilities of each target token given the context, the
    question and the previous targets: one forward of ``question + targets[:-1]`` after ``ctx``."""
    import torch

    ids = [*question, *targets[:-1]]
    physical, n = ctx.cache.get_seq_length(), len(ids)
    if not targets:
        return torch.zeros(0, model.config.vocab_size)
    dev = model.device
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=dev),
            position_ids=torch.arange(ctx.position, ctx.position + n, device=dev)[None],
            cache_position=torch.arange(physical, physical + n, device=dev),
            use_cache=True,
            logits_to_keep=len(targets),
            **cache_kwargs(model, ctx.cache),
            **ctx.step_kwargs(physical, n),
        )
    return out.logits[0].float().log_softmax(dim=-1)
