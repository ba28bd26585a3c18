"""One forward step of a Llama-family decoder over the static buffer, with static shapes.

:class:`DecoderStep` is what every step shares: it checks the model family, embeds the tokens
and computes their rotary cos/sin, and attends over the buffer (the cascade over the shared
context + each question's own slots). What differs is how a layer is computed, so that is a
subclass each, and the caller picks one (:func:`default_step` picks for it):

* :class:`~ragcompress.kv.fast.eager.EagerStep` runs the model's own modules op by op: any
  device and dtype, the eager generator's numerics; the reference the fused step is held to;
* :class:`~ragcompress.kv.fast.fused.FusedStep` fuses the residual add into the next RMSNorm
  and RoPE into the KV write (Triton, CUDA), and runs q/k/v and gate/up as one GEMM each.

Only the cache handling differs from the eager forward: this step's keys/values are
scattered into the question regions and attention reads the buffer. Nothing here
synchronizes with the host, so a step can be captured as a CUDA graph. A step never changes
the model it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import CascadeAttention, StepMeta
    from ragcompress.kv.fast.buffer import StaticKVBuffer

__all__ = ["DecoderStep", "StepIO"]


@dataclass(frozen=True, eq=False)
class StepIO:
    """What one step reads and writes besides the tokens: ``slots`` (N,) int64 question-region
    slots its keys/values go to, ``last`` (B,) int64 rows whose logits it returns, the buffer,
    the attention metadata and the cascade attention."""

    slots: torch.Tensor
    last: torch.Tensor
    buffer: StaticKVBuffer
    meta: StepMeta
    attention: CascadeAttention


@dataclass(eq=False)
class DecoderStep(ABC):
    """A Llama-family ``*ForCausalLM`` (embed_tokens, layers with self_attn.{q,k,v,o}_proj and
    optional q_norm/k_norm, mlp, norms, rotary_emb, lm_head) seen as a step function."""

    model: Any

    def __post_init__(self) -> None:
        base = getattr(self.model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, a) for a in needed) or not hasattr(self.model, "lm_head"):
            raise ValueError(
                f"{type(self.model).__name__} is not a Llama-family causal LM (model.model.embed_tokens/"
                "layers/norm/rotary_emb + lm_head); the fast path supports that family"
            )
        attn = base.layers[0].self_attn
        for a in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, a):
                raise ValueError(
                    f"{type(attn).__name__} has no {a}; the fast path supports Llama-style attention"
                )
        cfg = self.model.config
        if any("sliding" in str(t) for t in (getattr(cfg, "layer_types", None) or ())):
            raise ValueError("sliding-window layers are not supported by the fast path")
        self.base = base
        self.head_dim = int(getattr(attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.scale = float(getattr(attn, "scaling", self.head_dim**-0.5))

    @property
    def num_layers(self) -> int:
        return len(self.base.layers)

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        last: torch.Tensor,
        buffer: StaticKVBuffer,
        meta: StepMeta,
        attention: CascadeAttention,
    ) -> torch.Tensor:
        """Run B*T tokens; returns the fp32 logits (B, vocab) of the rows ``last`` (B,).

        ids, positions (B, T) int64; slots (B*T,) int64: question-region slots to write.
        """
        n = ids.numel()
        x = self.base.embed_tokens(ids.reshape(1, n))  # (1, N, hidden)
        cos, sin = self.base.rotary_emb(x, positions.reshape(1, n))  # (1, N, head_dim) each
        return self.layers(x[0], cos[0], sin[0], StepIO(slots, last, buffer, meta, attention))

    @abstractmethod
    def layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, io: StepIO) -> torch.Tensor:
        """Every decoder layer, the final norm and the head over embedded tokens x (N, hidden)
        with their rotary cos/sin (N, head_dim); returns the fp32 logits (B, vocab) of the
        rows ``io.last``."""

    def attend(self, q: torch.Tensor, li: int, io: StepIO) -> torch.Tensor:
        """Layer ``li``'s rotated queries (N, heads, head_dim) over the buffer (this step's
        keys/values already written): (N, heads, head_dim)."""
        buf = io.buffer
        k, v = buf.ctx_keys[:, li], buf.ctx_values[:, li]
        return io.attention(q, k, v, buf.q_keys[li], buf.q_values[li], io.meta, self.scale)
