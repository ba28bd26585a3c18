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

__all__ = ["SelectiveRecompute", "concat_slots", "stale_context"]


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
        decoded them over the ``concat`` context (else None)."""
        from ragcompress.kv.assemble import assemble
        from ragcompress.models.arch import arch_for

        cache, position = assemble(prefix, chunks, arch_for(model), model.config)
        return self.repair_cache(model, cache, position, concat_slots(model, prefix, chunks), question, draft)

    def repair_cache(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        position: int,
        slots: SlotMap,
        question: Sequence[int],
        draft: Sequence[int] | None = None,
        engine: Any = None,
    ) -> Context:
        """Repair ``cache``, the ``concat`` context of ``slots`` whose question starts at
        ``position``, in place: its tensors are overwritten at the recomputed slots. ``engine``:
        the fast engine whose buffer ``cache`` views: a mode that ranks on it does
        (:meth:`score_fast`), and the recomputed tokens run on its step
        (``engine.recompute``)."""
        import torch

        from ragcompress.kv.assembly.recompute import recompute_slots

        ctx = stale_context(model, cache, position, slots)
        k = min(round(self.recompute * slots.chunk_slots), int(slots.candidates.numel()))
        if k == 0:
            return ctx
        chosen = slots.candidates
        if k < chosen.numel():
            scores = None if engine is None else self.score_fast(engine, question, draft)
            if scores is None:
                scores = self.score(model, cache, slots, question, position, draft)
            scores = self.rerank(model, scores, slots, question)[chosen]
            order = torch.sort(scores, descending=True, stable=True).indices[:k]
            chosen = torch.sort(chosen[order]).values
        if engine is None or not engine.recompute(slots, chosen):
            recompute_slots(model, cache, slots, chosen)
        ctx.recompute = k / slots.chunk_slots
        return ctx

    def load_fast(
        self,
        engine: Any,
        packed_prefix: Any,
        model: PreTrainedModel,
        prefix: PrefixKV,
        chunks: Sequence[KVChunk],
        question: Sequence[int],
    ) -> tuple[int, float]:
        """The engine loads the ``concat`` context as for ``concat`` (its kernels re-rotate the
        chunks), and the repair's partial forward writes into that buffer through views of it
        (:meth:`~ragcompress.kv.fast.engine.FastGenerator.context_views`): nothing is assembled
        on the side and copied in (``blend_question`` at 15%, 10K context on an H200: the
        repair took 143 ms that way, 98 ms this way; ``results/ttft_modes_inbuffer_h200/``).
        Families with local sliding-window layers, whose buffer leaves chunks out of the
        window, repair an assembled cache and write it instead."""
        from transformers import DynamicCache

        from ragcompress.kv.assembly.recompute import ScatterLayer

        position = engine.load_reusing(packed_prefix, chunks)
        draft = self.draft_fast(engine, model, question)
        views = engine.context_views()
        if views is None:
            return self.write_fast(engine, self.repair(model, prefix, chunks, question, draft))
        cache = DynamicCache()
        cache.layers = [ScatterLayer.over(k, v) for k, v in views]  # type: ignore[assignment]
        slots = concat_slots(model, prefix, chunks)
        ctx = self.repair_cache(model, cache, position, slots, question, draft, engine)
        return position, ctx.recompute

    def draft_fast(self, engine: Any, model: PreTrainedModel, question: Sequence[int]) -> list[int] | None:
        """The answer's first tokens that :meth:`score` reads, decoded by the fast engine over the
        ``concat`` context it has just loaded; None when the mode reads none (the default)."""
        return None

    def score_fast(
        self, engine: Any, question: Sequence[int], draft: Sequence[int] | None = None
    ) -> torch.Tensor | None:
        """:meth:`score` of the ``concat`` context the fast engine holds, computed by the engine;
        None where the mode has no such ranking (the default) and :meth:`score` ranks instead."""
        return None

    def rerank(
        self, model: PreTrainedModel, scores: torch.Tensor, slots: SlotMap, question: Sequence[int]
    ) -> torch.Tensor:
        """(slots,) the final ranking from :meth:`score`'s (or :meth:`score_fast`'s) ``scores``
        (slots,), on the eager and the fast path alike; the default keeps them."""
        return scores

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


def concat_slots(model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk]) -> SlotMap:
    """The slots of the ``concat`` context of ``prefix`` + ``chunks`` on ``model``'s device."""
    from ragcompress.kv.assemble import concat_starts
    from ragcompress.kv.assembly.recompute import slot_map

    return slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
