"""The decoder step through the model's own modules, op by op (any device, any dtype)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.step import DecoderStep
from ragcompress.models.rope import rotate_half

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.step import StepIO
    from ragcompress.models.arch import LayerParts

__all__ = ["EagerStep"]


@dataclass(eq=False)
class EagerStep(DecoderStep):
    """Projections, norms (QK-norms too, where the family has them), MLP and RoPE are the
    model's own modules and formula (so numerics are the eager generator's); the only
    difference is that keys/values go to the buffer. A layer runs the family's
    ``block_order`` (pre-norm: norm, attention, add, norm, MLP, add; Gemma 3's sandwich: each
    block's output normed again before its add), so every family with an adapter runs here.
    Runs on the CPU in tests and wherever :class:`~ragcompress.kv.fast.fused.FusedStep` does not."""

    def layers(self, x: torch.Tensor, io: StepIO) -> torch.Tensor:
        names = self.arch.names
        for li, layer in enumerate(self.arch.layers(self.model)):
            p = self.arch.parts(layer)
            h = x
            for op in self.arch.block_order:
                if op == "attention":
                    h = self._attention(p, h, li, io)
                elif op == "mlp":
                    h = p.mlp(h)
                elif op == "residual":
                    x = h = x + h
                else:  # a norm: the module the adapter names for it
                    h = getattr(layer, getattr(names, op))(h)
        h = self.arch.module(self.model, "final_norm")(x.index_select(0, io.last))
        return self.head(h)

    def _attention(self, p: LayerParts, h: torch.Tensor, li: int, io: StepIO) -> Any:
        """Layer ``li``'s attention output (N, hidden) for its normed input ``h``; writes this
        step's keys/values into the question regions (a repair's: its context rows)."""
        n = h.shape[0]
        q, k, v = self.arch.project(p, h)  # pre-RoPE, QK-normed
        # the rotation in the model dtype, as apply_rotary_pos_emb does: the fp32
        # re-rotation of ragcompress.models.rope.rotate would round differently and can
        # flip a token
        cos, sin = (t.unsqueeze(1) for t in io.rope.of(li))  # (N, 1, d): one angle per token
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        keys, values = io.kv_out(li)
        keys.index_copy_(0, io.slots, k)
        values.index_copy_(0, io.slots, v)
        o = self.attend(q, li, io)
        return p.o_proj(o.reshape(n, self.heads * self.head_dim))
