"""``blend``: selective recompute at query time (after CacheBlend, Yao et al., EuroSys 2025),
choosing the tokens by what the question needs (after ProphetKV).

The chunks are assembled as in ``concat``. A cheap first pass runs the question over that stale
cache and reads, at every layer, how much the question's queries attend to each context token
(its attention computes those weights from the cached keys in one grouped matmul per layer, see
:mod:`ragcompress.kv.assembly.blend_attention`). The share ``recompute`` of the chunks' kept tokens with the
highest attention (largest over heads and question tokens, averaged over layers) is then recomputed
by a real partial forward (see :mod:`ragcompress.kv.assembly.recompute`), and the question is
prefilled over the repaired cache. ``recompute = 1`` is exactly a full prefill of the prompt;
``recompute = 0`` is exactly ``concat`` (no first pass either).

CacheBlend picks the tokens whose K/V deviate most from a fresh computation at a check layer; that
needs every token's fresh K/V at that layer, the question-driven choice needs only the question's
pass. Subclasses choose differently by overriding :meth:`Blend.score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.assembly.base import Assembly, Context, number, register_assembly
from ragcompress.models.compat import cache_kwargs

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk

__all__ = ["Blend"]


@register_assembly("blend")
@dataclass
class Blend(Assembly):
    """``recompute`` in [0, 1]: share of the chunks' kept tokens recomputed per request."""

    recompute: float = 0.15

    def __post_init__(self) -> None:
        self.recompute = number("blend", "recompute", self.recompute, 0.0, 1.0)

    def check(self, model: PreTrainedModel) -> None:
        from ragcompress.models.arch import UnsupportedModelError, arch_for

        super().check(model)
        arch = arch_for(model)
        if arch.local_window is not None:
            # the probe and the partial forward mask all layers alike; local layers need their own
            raise UnsupportedModelError(
                f"blend does not run {arch.family} (local sliding-window layers) yet; use concat or ape"
            )

    def prepare(
        self, model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk], question: Sequence[int]
    ) -> Context:
        import torch

        from ragcompress.kv.assemble import assemble, concat_starts
        from ragcompress.kv.assembly.recompute import recompute_slots, slot_map
        from ragcompress.models.arch import arch_for

        cache, position = assemble(prefix, chunks, arch_for(model), model.config)
        n_slots = cache.get_seq_length()
        slots = slot_map(prefix.length, chunks, concat_starts(prefix.length, chunks), model.device)
        k = min(round(self.recompute * slots.chunk_slots), int(slots.candidates.numel()))
        if k == 0:
            return Context(cache, position, slots=n_slots)
        chosen = slots.candidates
        if k < chosen.numel():
            scores = self.score(model, cache, question, position)[chosen]
            order = torch.sort(scores, descending=True, stable=True).indices[:k]
            chosen = torch.sort(chosen[order]).values
        recompute_slots(model, cache, slots, chosen)
        return Context(cache, position, slots=n_slots, recompute=k / slots.chunk_slots)

    def score(
        self, model: PreTrainedModel, cache: DynamicCache, question: Sequence[int], position: int
    ) -> torch.Tensor:
        """(slots,) float: how much the question needs each context slot (higher = recompute first)."""
        return question_attention(model, cache, question, position)


def question_attention(
    model: PreTrainedModel, cache: DynamicCache, question: Sequence[int], position: int
) -> torch.Tensor:
    """(slots,): per layer, the largest softmax weight any head of any question token gives each
    context slot, averaged over layers. One forward of the question whose attention computes these
    weights from the cached keys as it goes (:class:`~ragcompress.kv.assembly.blend_attention.Probe`);
    the question's K/V are removed from ``cache`` afterwards."""
    import torch

    from ragcompress.kv.assembly.blend_attention import Probe, blend_attention
    from ragcompress.models.arch import arch_for

    arch = arch_for(model)
    dev, n, slots = model.device, len(question), cache.get_seq_length()
    # A dynamic layer appends by concatenation (new tensors), so the context tensors kept here
    # are untouched by the probe and put back afterwards.
    kept = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
    probe = Probe(model.config, slots, torch.zeros(slots, dtype=torch.float32, device=dev))
    # A 4D mask is handed to the attention as is (transformers builds none); the probe applies
    # the same causal rule itself while it computes the weights.
    cols = torch.arange(slots + n, device=dev)[None, :]
    mask = torch.where(
        cols <= torch.arange(slots, slots + n, device=dev)[:, None], 0.0, torch.finfo(model.dtype).min
    )
    with torch.inference_mode(), blend_attention(model, probe) as runner:
        runner(
            input_ids=torch.tensor([list(question)], device=dev),
            position_ids=torch.arange(position, position + n, device=dev)[None],
            attention_mask=mask.to(model.dtype)[None, None],
            cache_position=torch.arange(slots, slots + n, device=dev),
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(model, cache),
        )
    for layer, (k, v) in zip(cache.layers, kept, strict=True):  # drop the question's K/V
        layer.keys, layer.values = k, v  # type: ignore[union-attr]
    return probe.total / arch.num_layers
