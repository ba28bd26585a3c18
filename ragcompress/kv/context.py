"""Prefix KV + chunks → ready cache for one model: what ``Generator.generate_from_chunks`` calls."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assemble import assemble
from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.encode import prefix_kv
from ragcompress.kv.rotary import Rotary
from ragcompress.prompt import PromptLayout

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

__all__ = ["chunk_context", "rotary_of"]

_ROTARY: weakref.WeakKeyDictionary[Any, Rotary] = weakref.WeakKeyDictionary()


def rotary_of(model: PreTrainedModel) -> Rotary:
    rot = _ROTARY.get(model)
    if rot is None:
        rot = _ROTARY[model] = Rotary.from_model(model)
    return rot


def chunk_context(
    model: PreTrainedModel, layout: PromptLayout, chunks: Sequence[KVChunk]
) -> tuple[DynamicCache, int]:
    """``(cache, next_position)``: the shared prefix then ``chunks`` in order, re-positioned."""
    return assemble(prefix_kv(model, layout), chunks, rotary_of(model), model.config)
