"""``blend_question``: selective recompute at query time, choosing the tokens by what the question
needs (after ProphetKV, ICML 2026) instead of by their deviation (``blend``).

A cheap first pass runs the question over the stale ``concat`` cache and reads, at every layer,
how much the question's queries attend to each context token (its attention computes those weights
from the cached keys in one grouped matmul per layer, see
:mod:`ragcompress.kv.assembly.blend_attention`). The ``recompute`` share of the chunks' kept tokens
with the highest attention is then recomputed (see :mod:`ragcompress.kv.assembly.selective`). The
attention is the largest over heads and over the question's last ``last_tokens`` tokens, averaged
over layers. Those tokens (the question's end and the template's assistant header) start the
answer; the question's first tokens attend mostly to the context's structure. Needs only the
question's pass, no layer of a full prefill. On ``bench fidelity`` (1.5B reader, k = 5) it is the
closest repair to a full prefill at 15%: KL 0.016 on Disfl-QA and 0.083 on two-hop, against
0.052 and 0.090 for ``blend`` (``benchmarks/README.md``). With ``draft_tokens``, the first tokens of
a greedy draft of the answer over the stale context vote too (:mod:`~ragcompress.kv.assembly.draft`);
the fast engine decodes that draft with its own graphs (:meth:`QuestionBlend.draft_fast`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.base import register_assembly
from ragcompress.kv.assembly.selective import SelectiveRecompute, stale_context
from ragcompress.models.compat import cache_kwargs

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from ragcompress.kv.assembly.recompute import SlotMap

__all__ = ["QuestionBlend", "question_attention"]


@register_assembly("blend_question")
@dataclass
class QuestionBlend(SelectiveRecompute):
    """``recompute`` in [0, 1]: share of the chunks' kept tokens recomputed per request;
    ``last_tokens`` ≥ 1: how many of the question's last tokens rank the context by their
    attention (None: every question token); ``draft_tokens`` ≥ 0: how many tokens of a greedy
    draft of the answer over the stale context vote with them (:mod:`~ragcompress.kv.assembly.draft`)."""

    last_tokens: int | None = 8
    draft_tokens: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.last_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"blend_question.last_tokens must be an integer ≥ 1 or None, got {n!r}")
        d = self.draft_tokens
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"blend_question.draft_tokens must be an integer ≥ 0, got {d!r}")

    def score(
        self,
        model: PreTrainedModel,
        cache: DynamicCache,
        slots: SlotMap,
        question: Sequence[int],
        position: int,
        draft: Sequence[int] | None = None,
    ) -> torch.Tensor:
        from ragcompress.kv.assembly.draft import draft_answer

        if draft is None:
            stale = stale_context(model, cache, position, slots)
            draft = draft_answer(model, stale, question, self.draft_tokens)
        draft = list(draft)[: self.draft_tokens]
        voters = None if self.last_tokens is None else self.last_tokens + len(draft)
        return question_attention(model, cache, [*question, *draft], position, slots.positions, voters)

    def score_fast(
        self, engine: Any, question: Sequence[int], draft: Sequence[int] | None = None
    ) -> torch.Tensor | None:
        """The same ranking from the fast engine's own step in its CUDA graph
        (:meth:`~ragcompress.kv.fast.engine.FastGenerator.probe`): the eager probe is a
        transformers forward, bound by the host. None when the question and draft are longer
        than the engine's question buffer (the eager probe ranks then)."""
        draft = list(draft or [])[: self.draft_tokens]
        tokens = [*question, *draft]
        if len(tokens) > engine.max_question:
            return None
        voters = None if self.last_tokens is None else self.last_tokens + len(draft)
        return engine.probe(tokens, voters)  # type: ignore[no-any-return]

    def draft_fast(self, engine: Any, model: PreTrainedModel, question: Sequence[int]) -> list[int] | None:
        """The draft, decoded by the fast engine over the ``concat`` context it has loaded (its
        CUDA graphs: a few ms a token, where the eager model takes tens)."""
        from ragcompress.generate import model_stop_ids

        if not self.draft_tokens:
            return None
        limit = min(self.draft_tokens, engine.max_new_tokens)
        return engine.generate([list(question)], limit, model_stop_ids(model))[0]  # type: ignore[no-any-return]


def question_attention(
    model: PreTrainedModel,
    cache: DynamicCache,
    question: Sequence[int],
    position: int,
    positions: torch.Tensor | None = None,
    voters: int | None = None,
) -> torch.Tensor:
    """(slots,): per layer, the largest softmax weight any head of the question's last ``voters``
    tokens (None: of every question token) gives each context slot, averaged over layers. One
    forward of the question whose attention computes these weights from the cached keys as it
    goes (:class:`~ragcompress.kv.assembly.blend_attention.Probe`); the question's K/V are
    removed from ``cache`` afterwards. ``positions`` (slots,) int64, the slots' logical
    positions, is required for a family with local sliding-window layers (a local layer's
    question token sees only the slots within its window)."""
    import torch

    from ragcompress.kv.assembly.blend_attention import Probe, blend_attention
    from ragcompress.kv.assembly.draft import untouched
    from ragcompress.models.arch import arch_for

    arch = arch_for(model)
    dev, n, slots = model.device, len(question), cache.get_seq_length()
    window = arch.local_window
    far = None
    if window is not None:
        if positions is None:
            raise ValueError(f"{arch.family} has local sliding-window layers: pass the slots' positions")
        q_pos = torch.arange(position, position + n, device=dev)
        keys = torch.cat([positions.to(dev), q_pos])
        # (group * n, slots + n), the probe's group-major query rows
        far = (q_pos[:, None] - keys[None, :] >= window).repeat(arch.group_size, 1)
    probe = Probe(
        model.config,
        slots,
        torch.zeros(slots, dtype=torch.float32, device=dev),
        arch.sliding_window if window else (),
        far,
        voters,
    )
    # A 4D mask is handed to the attention as is (transformers builds none); the probe applies
    # the same causal rule itself while it computes the weights.
    cols = torch.arange(slots + n, device=dev)[None, :]
    mask = torch.where(
        cols <= torch.arange(slots, slots + n, device=dev)[:, None], 0.0, torch.finfo(model.dtype).min
    )
    # the question's K/V are dropped from the cache afterwards
    with untouched(cache), torch.inference_mode(), blend_attention(model, probe) as runner:
        runner(
            input_ids=torch.tensor([list(question)], device=dev),
            position_ids=torch.arange(position, position + n, device=dev)[None],
            attention_mask=mask.to(model.dtype)[None, None],
            cache_position=torch.arange(slots, slots + n, device=dev),
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(model, cache),
        )
    return probe.total / arch.num_layers
