"""``blend``: selective recompute at query time, choosing the tokens as CacheBlend does (Yao et
al., EuroSys 2025): those whose cached values deviate most from a fresh prefill's at a check layer.

Independent encoding leaves no trace at layer 0 (K/V there are projections of each token's own
embedding); from layer 1 on, a token whose values move most once it can see the earlier passages
is one the missing cross-passage attention changes most. The check pass runs every recomputable
token through layers 0..``check_layer`` with full attention (``check_layer + 1`` layers of a full
prefill, :func:`~ragcompress.kv.assembly.deviation.value_deviation`); the ``recompute`` share with
the largest deviation is then recomputed through every layer (see
:mod:`ragcompress.kv.assembly.selective`). On ``bench fidelity`` it repaired less than choosing by
the attention of the question's last tokens (``blend_question``), see ``benchmarks/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.selective import SelectiveRecompute

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly.recompute import SlotMap

__all__ = ["Blend"]


@register_assembly("blend")
@dataclass
class Blend(SelectiveRecompute):
    """``recompute`` in [0, 1]: share of the chunks' kept tokens recomputed per request;
    ``check_layer`` ≥ 1: the layer whose value deviation ranks the tokens (below the model's
    layer count; checked when the answerer is built)."""

    check_layer: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.check_layer, bool) or not isinstance(self.check_layer, int):
            raise ValueError(f"blend.check_layer must be an integer, got {self.check_layer!r}")
        if self.check_layer < 1:
            raise ValueError(
                "blend.check_layer must be ≥ 1 (layer 0's K/V do not depend on context), "
                f"got {self.check_layer}"
            )

    def check(self, model: PreTrainedModel) -> None:
        from ragcompress.models.arch import arch_for

        super().check(model)
        layers = arch_for(model).num_layers
        if self.check_layer >= layers:
            raise ValueError(
                f"blend.check_layer must be below the model's {layers} layers, got {self.check_layer}"
            )

    def score(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        slots: SlotMap,
        question: Sequence[int],
        position: int,
        draft: Sequence[int] | None = None,
    ) -> torch.Tensor:
        from ragcompress.kv.assembly.deviation import value_deviation

        return value_deviation(model, cache, slots, self.check_layer)
