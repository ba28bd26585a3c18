"""Selective recompute at query time: the shared frame of the ``blend`` modes.

The chunks are assembled as in ``concat``; a mode's :meth:`SelectiveRecompute.score` ranks the
recomputable context slots, the share ``recompute`` of the chunks' kept tokens ranked highest is
recomputed by a real partial forward (:func:`~ragcompress.kv.assembly.recompute.recompute_slots`),
and the question is prefilled over the repaired cache. ``recompute = 1`` is exactly a full prefill
of the prompt; ``recompute = 0`` is exactly ``concat`` (no scoring pass either). Modes differ only
in how they rank: ``blend`` by how far a token's values at a check layer are from a fresh
prefill's (CacheBlend), ``blend_question`` by how much the question's last tokens attend to it
(after ProphetKV).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.base import Assembly, Context, number

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.assembly.recompute import SlotMap
    from ragcompress.kv.chunk import KVChunk

__all__ = ["SelectiveRecompute", "stale_context"]


@dataclass
class SelectiveRecompute(Assembly):
    """``recompute`` in [0, 1]: share of the chunks' kept tokens recomputed per request."""

    recompute: float = 0.15

    def __post_init__(self) -> None:
        self.recompute = number(self.name, "recompute", self.recompute, 0.0, 1.0)

    def prepare(
        self, model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk], question: Sequence[int]
    ) -> Context:
        return self.repair(model, prefix, chunks, question)

    def repair(
        self,
        model: PreTrainedModel,
        prefix: PrefixKV,
        chunks: Sequence[KVChunk],
        question: Sequence[int],
        draft: Sequence[int] | None = None,
    ) -> Context:
        """:meth:`prepare`, with the answer's first tokens ``draft`` when the caller has already
        decoded them over the ``concat`` context (the fast engine does, see ``blend_question``)."""
        import torch

        from ragcompress.kv.assemble import assemble, concat_starts
        from ragcompress.kv.assembly.recompute import recompute_slots, slot_map
        from ragcompress.models.arch import arch_for

        cache, position = assemble(prefix, chunks, arch_for(model), model.config)
        slots = slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
        ctx = stale_context(model, cache, position, slots)
        k = min(round(self.recompute * slots.chunk_slots), int(slots.candidates.numel()))
        if k == 0:
            return ctx
        chosen = slots.candidates
        if k < chosen.numel():
            scores = self.score(model, cache, slots, question, position, draft)[chosen]
            order = torch.sort(scores, descending=True, stable=True).indices[:k]
            chosen = torch.sort(chosen[order]).values
        recompute_slots(model, cache, slots, chosen)
        ctx.recompute = k / slots.chunk_slots
        return ctx

    @abstractmethod
    def score(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        slots: SlotMap,
        question: Sequence[int],
        position: int,
        draft: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(slots,) float: how much recomputing each context slot is worth (higher first); only
        ``slots.candidates`` are read. ``cache`` (the ``concat`` cache) must be left as it was.
        ``draft``: the answer's first tokens over that cache, when already decoded (else None)."""


def stale_context(model: PreTrainedModel, cache: DynamicCache, position: int, slots: SlotMap) -> Context:
    """The ``concat`` context over ``cache`` (nothing recomputed): with local sliding-window
    layers, the question reads the context by the slots' logical positions."""
    from ragcompress.models.arch import arch_for

    window = arch_for(model).local_window
    local: dict[str, Any] = {} if window is None else {"window": window, "positions": slots.positions}
    return Context(cache, position, slots=cache.get_seq_length(), **local)
