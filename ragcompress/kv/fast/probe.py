"""``blend_question``'s question probe on the fast engine: one prefill of the question on the
engine's own step (its CUDA graph) keeps every layer's queries, and the ranking is computed from
them afterwards, over the filled context only, all layers in a few batched launches.

The ranking is the eager probe's (:func:`~ragcompress.kv.assembly.blend_question.question_attention`):
per layer, the largest softmax weight any head of the question's last tokens (the *voters*) gives
each context slot, averaged over layers, the softmax normalised over the context and the voter's
own question slots (causally), as in a full prefill.

Why on the engine: the eager probe is a transformers forward of the question, bound by the host
(28–51 ms at 10K context on an H200 for a 32-token question, of which 18 ms GPU work). Here the
step is a replayed graph, and :class:`QueryTap` only copies each layer's rotated queries aside
inside it (its shapes are static; the context length and the voters change per request, so the
scores are computed after the replay, outside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.attention import CascadeAttention

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import LocalWindow, StepMeta
    from ragcompress.kv.fast.buffer import StaticKVBuffer

__all__ = ["QueryTap"]

#: Bytes of fp32 context keys one batched pass of :meth:`QueryTap.scores` converts (the layers
#: per pass follow: 6 at 10K context on an 8B model, 1 at 32K).
PASS_BYTES = 256 << 20


@dataclass(eq=False)
class QueryTap(CascadeAttention):
    """``inner``'s attention, keeping each layer's rotated queries in ``queries`` (layers, T,
    heads, head_dim) for one question of ``T`` (padded) tokens; ``scale`` is the attention's
    (set by the step). Local sliding-window layers and soft-capped logits are refused (the engine
    repairs those families on the eager model)."""

    inner: CascadeAttention
    buffer: StaticKVBuffer
    queries: torch.Tensor
    scale: float = 1.0

    @classmethod
    def over(cls, inner: CascadeAttention, buffer: StaticKVBuffer, qlen: int, heads: int) -> QueryTap:
        import torch

        shape = (buffer.layers, qlen, heads, buffer.head_dim)
        return cls(
            inner, buffer, torch.zeros(shape, dtype=buffer.ctx_keys.dtype, device=buffer.ctx_keys.device)
        )

    def __call__(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        own_k: torch.Tensor,
        own_v: torch.Tensor,
        meta: StepMeta,
        scale: float,
        *,
        window: LocalWindow | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """(T, heads, head_dim) as ``inner`` gives it; ``q`` (T, heads, head_dim), one question."""
        if window is not None or softcap is not None:
            raise ValueError("the engine's question probe takes no sliding window or soft-capping")
        self.queries[self.buffer.layer_of(ctx_k)].copy_(q)
        self.scale = scale
        return self.inner(q, ctx_k, ctx_v, own_k, own_v, meta, scale)

    def scores(self, length: int, voters: int | None) -> torch.Tensor:
        """(ctx_len,) fp32 after the step ran a question of ``length`` tokens: per layer, the
        largest softmax weight any head of its last ``voters`` tokens (None: all) gives each
        context slot, averaged over layers."""
        import torch

        buf = self.buffer
        n, kvh, d = buf.ctx_len, buf.kv_heads, buf.head_dim
        first = 0 if voters is None else max(0, length - voters)
        v = length - first
        q = self.queries[:, first:length]  # (layers, V, heads, d)
        g = q.shape[2] // kvh
        # (layers, kv_heads, g * V, d): query head j = kv_head * g + i reads KV head j // g
        q = q.float().view(-1, v, kvh, g, d).permute(0, 2, 3, 1, 4).reshape(-1, kvh, g * v, d) * self.scale
        rows = torch.arange(first, length, device=q.device).repeat(g)  # each row's token
        later = torch.arange(length, device=q.device)[None, :] > rows[:, None]  # (g * V, length)
        total = torch.zeros(n, dtype=torch.float32, device=q.device)
        per = max(1, PASS_BYTES // max(1, n * kvh * d * 4))
        for a in range(0, buf.layers, per):
            b = min(a + per, buf.layers)
            ctx = torch.matmul(q[a:b], buf.ctx_keys[:n, a:b].float().permute(1, 2, 3, 0))
            own = torch.matmul(q[a:b], buf.q_keys[a:b, :length].float().permute(0, 2, 3, 1))
            own = own.masked_fill(later, float("-inf"))
            lse = torch.logaddexp(ctx.logsumexp(dim=-1), own.logsumexp(dim=-1)).unsqueeze(-1)
            # exp is monotone: the largest weight is exp of the largest log-weight
            total += (ctx - lse).amax(dim=(1, 2)).exp().sum(dim=0)
        return total / buf.layers
