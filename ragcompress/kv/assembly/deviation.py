"""How far each cached context token's values are from a fresh prefill's, at one check layer
(CacheBlend's selection signal, Yao et al., EuroSys 2025).

A chunk's K/V at layer 0 do not depend on context at all (they are projections of the token's own
embedding), so layer 1 is the first where independent encoding leaves a trace: a token whose
layer-1 values move most when it can see the earlier passages is one whose representation the
missing cross-passage attention changes most. Computing that needs every recomputable token run
through layers 0..``check_layer`` with full attention: ``check_layer + 1`` layers of a full
prefill, a small share of it. The forward stops inside the check layer, as soon as its fresh
values exist, and the assembled cache is left untouched (layers below the check layer are
recomputed in copies).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from transformers.cache_utils import DynamicLayer

from ragcompress.kv.assembly.blend_attention import blend_attention
from ragcompress.kv.assembly.flash_packed import packed_job
from ragcompress.kv.assembly.recompute import ScatterLayer
from ragcompress.models.compat import cache_kwargs

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly.recompute import SlotMap

__all__ = ["value_deviation"]


class _Measured(Exception):
    """Raised by :class:`_CheckLayer` to end the forward once the check layer's values exist."""

    def __init__(self, deviation: torch.Tensor) -> None:
        super().__init__("check layer reached")
        self.deviation = deviation


class _CheckLayer(DynamicLayer):
    """Stands in for the check layer: compares the fresh values (1, kv_heads, k, head_dim) of the
    tokens at ``slots`` (k,) with the cached ones there, and stops the forward."""

    def __init__(self, cached: Any, slots: torch.Tensor) -> None:
        super().__init__()
        self.cached, self.slots = cached, slots

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stale = self.cached.values.index_select(2, self.slots).float()
        # L2 distance per KV head, summed over heads: (k,)
        raise _Measured((value_states.float() - stale).norm(dim=-1).sum(dim=(0, 1)))


def value_deviation(
    model: PreTrainedModel, cache: DynamicCache, slots: SlotMap, check_layer: int
) -> torch.Tensor:
    """(slots,) float32: for each recomputable context slot (``slots.candidates``), the L2
    distance between its cached values at layer ``check_layer`` and a fresh prefill's (summed
    over KV heads); 0 for the others. ``cache`` is not modified."""
    import torch

    n_layers = len(cache.layers)
    if not 0 < check_layer < n_layers:
        raise ValueError(f"check_layer must be in [1, {n_layers - 1}] for this model, got {check_layer}")
    cand = slots.candidates
    out = torch.zeros(int(slots.positions.numel()), dtype=torch.float32, device=cand.device)
    if cand.numel() == 0:
        return out
    below = [ScatterLayer.of(layer) for layer in cache.layers[:check_layer]]  # copies
    for layer in below:
        layer.slots = cand
    trial = copy.copy(cache)  # a shallow copy: its own layer list, the same untouched tensors
    trial.layers = [*below, _CheckLayer(cache.layers[check_layer], cand), *cache.layers[check_layer + 1 :]]  # type: ignore[list-item]
    dtype = below[0].keys.dtype if below[0].keys is not None else torch.float32
    job = packed_job(model, slots.positions, cand, dtype)
    try:
        with torch.inference_mode(), blend_attention(model, job) as runner:
            runner(
                input_ids=slots.tokens[cand][None],
                position_ids=slots.positions[cand][None],
                attention_mask=job.mask,
                cache_position=cand,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(model, trial),
            )
    except _Measured as done:
        out[cand] = done.deviation.to(out.device)
        return out
    raise RuntimeError("the forward never reached the check layer's cache update")
