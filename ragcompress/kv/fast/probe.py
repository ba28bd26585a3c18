"""``blend_question``'s question probe on the fast engine: one prefill of the question on the
engine's own step (its CUDA graph), whose attention also ranks the context.

The ranking is the eager probe's (:func:`~ragcompress.kv.assembly.blend_question.question_attention`):
per layer, the largest softmax weight any head of the question's last tokens (the *voters*) gives
each context slot, summed over layers. :class:`ProbingAttention` wraps the engine's cascade: the
step's output is the cascade's as in any prefill, and on the side the voters' rows are scored
against the whole context in fp32, normalised over the context and their own question slots
(causally), as the softmax of a full prefill would be.

Why on the engine: the eager probe is a transformers forward of the question, bound by the host
(28–51 ms at 10K context on an H200 for a 32-token question, of which 18 ms GPU work); a replayed
graph costs the GPU work only. Everything a request changes (the voters' rows, the context
length) lives in device tensors, so one captured graph serves every request of its bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.attention import CascadeAttention

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import LocalWindow, StepMeta

__all__ = ["ProbingAttention"]


@dataclass(eq=False)
class ProbingAttention(CascadeAttention):
    """``inner``'s attention; on the side, ``total`` (capacity,) fp32 += per layer, the largest
    softmax weight any head of the query rows ``rows`` (V,) int64 gives each context slot
    (batch 1; a row may repeat: the maximum is the same). Local sliding-window layers and
    soft-capped logits are refused (the engine repairs those families on the eager model)."""

    inner: CascadeAttention
    total: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def over(
        cls, inner: CascadeAttention, capacity: int, max_rows: int, device: torch.device
    ) -> ProbingAttention:
        """``inner`` wrapped, over a context of up to ``capacity`` slots, with ≤ ``max_rows`` voters."""
        import torch

        total = torch.zeros(capacity, dtype=torch.float32, device=device)
        return cls(inner, total, torch.zeros(max_rows, dtype=torch.long, device=device))

    def voters(self, length: int, voters: int | None) -> None:
        """Set the rows for a question of ``length`` tokens whose last ``voters`` vote (None:
        all), and clear ``total``: before the step runs."""
        import torch

        first = 0 if voters is None else max(0, length - voters)
        rows = torch.full((self.rows.numel(),), length - 1, dtype=torch.long)
        rows[: length - first] = torch.arange(first, length)
        self.rows.copy_(rows)
        self.total.zero_()

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
        """(T, heads, head_dim) as ``inner`` gives it; ``q`` (T, heads, head_dim) is one question."""
        if window is not None or softcap is not None:
            raise ValueError("the engine's question probe takes no sliding window or soft-capping")
        out = self.inner(q, ctx_k, ctx_v, own_k, own_v, meta, scale)
        self.total += self.votes(q, ctx_k, own_k, meta, scale)
        return out

    def votes(
        self, q: torch.Tensor, ctx_k: torch.Tensor, own_k: torch.Tensor, meta: StepMeta, scale: float
    ) -> torch.Tensor:
        """(capacity,) fp32: the voters' largest weight per context slot at this layer (0 past
        the filled context). ``ctx_k`` (capacity, kv_heads, d), ``own_k`` (region, kv_heads, d)."""
        import torch

        heads, d = q.shape[1], q.shape[2]
        kvh = ctx_k.shape[1]
        g, v, t = heads // kvh, self.rows.numel(), meta.qlen
        # (kv_heads, g * V, d): query head j = kv_head * g + i reads KV head j // g
        qv = q[self.rows].float().view(v, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * v, d) * scale
        ctx = torch.matmul(qv, ctx_k.float().permute(1, 2, 0))  # (kv_heads, g * V, capacity)
        filled = torch.arange(ctx_k.shape[0], device=q.device) < meta.ctx_len
        ctx = ctx.masked_fill(~filled, float("-inf"))
        own = torch.matmul(qv, own_k[:t].float().permute(1, 2, 0))  # (kv_heads, g * V, T)
        later = torch.arange(t, device=q.device)[None, :] > self.rows.repeat(g)[:, None]
        own = own.masked_fill(later, float("-inf"))
        lse = torch.logaddexp(ctx.logsumexp(dim=-1), own.logsumexp(dim=-1)).unsqueeze(-1)
        return (ctx - lse).exp().amax(dim=(0, 1))
