"""The decoder step through the model's own modules, op by op (any device, any dtype)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.step import DecoderStep

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.step import StepIO

__all__ = ["EagerStep"]


@dataclass(eq=False)
class EagerStep(DecoderStep):
    """Projections, norms, MLP and RoPE are the model's own (so numerics are the eager
    generator's); the only difference is that keys/values go to the buffer. Runs on the CPU
    in tests and wherever :class:`~ragcompress.kv.fast.fused.FusedStep` does not."""

    def layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, io: StepIO) -> torch.Tensor:
        # Llama's own rotate_half, in the model dtype: the eager forward's rounding (the fp32
        # re-rotation of ragcompress.models.rope would round differently and can flip a token)
        from transformers.models.llama.modeling_llama import rotate_half

        n = x.shape[0]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (N, 1, d): one angle per token
        for li, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(n, self.heads, self.head_dim)
            k = attn.k_proj(h).view(n, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(n, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            io.buffer.q_keys[li].index_copy_(0, io.slots, k)
            io.buffer.q_values[li].index_copy_(0, io.slots, v)
            o = self.attend(q, li, io)
            x = x + attn.o_proj(o.reshape(n, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        h = self.base.norm(x.index_select(0, io.last))
        return self.model.lm_head(h).float()  # type: ignore[no-any-return]
