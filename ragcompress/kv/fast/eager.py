"""The decoder step through the model's own modules, op by op (any device, any dtype)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.step import DecoderStep
from ragcompress.models.rope import rotate_half

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.step import StepIO

__all__ = ["EagerStep"]


@dataclass(eq=False)
class EagerStep(DecoderStep):
    """Projections, norms (QK-norms too, where the family has them), MLP and RoPE are the
    model's own modules and formula (so numerics are the eager generator's); the only
    difference is that keys/values go to the buffer. Runs on the CPU in tests and wherever
    :class:`~ragcompress.kv.fast.fused.FusedStep` does not."""

    def layers(self, x: torch.Tensor, io: StepIO) -> torch.Tensor:
        n = x.shape[0]
        for li, p in enumerate(self.parts()):
            q, k, v = self.arch.project(p, p.input_norm(x))  # pre-RoPE, QK-normed
            # the rotation in the model dtype, as apply_rotary_pos_emb does: the fp32
            # re-rotation of ragcompress.models.rope.rotate would round differently and can
            # flip a token
            cos, sin = (t.unsqueeze(1) for t in io.rope.of(li))  # (N, 1, d): one angle per token
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            io.buffer.q_keys[li].index_copy_(0, io.slots, k)
            io.buffer.q_values[li].index_copy_(0, io.slots, v)
            o = self.attend(q, li, io)
            x = x + p.o_proj(o.reshape(n, self.heads * self.head_dim))
            x = x + p.mlp(p.post_attention_norm(x))
        h = self.arch.module(self.model, "final_norm")(x.index_select(0, io.last))
        return self.arch.module(self.model, "lm_head")(h).float()  # type: ignore[no-any-return]
