"""One forward step of a Llama-family decoder over the static buffer, with static shapes.

The model's own modules do the projections, norms and MLP (so weights are shared, not copied,
and numerics match the eager path); only the cache handling differs: this step's keys/values
are scattered into the question regions (``index_copy_``) and attention is the cascade over
the shared context + own question slots. Nothing here synchronizes with the host, so a step
can be captured as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import CascadeAttention, StepMeta
    from ragcompress.kv.fast.buffer import StaticKVBuffer

__all__ = ["DecoderStep"]


@dataclass(eq=False)
class DecoderStep:
    """A Llama-family ``*ForCausalLM`` (embed_tokens, layers with self_attn.{q,k,v,o}_proj and
    optional q_norm/k_norm, mlp, norms, rotary_emb, lm_head) seen as a step function."""

    model: Any
    fused: bool = True  # on CUDA: Triton add+RMSNorm and RoPE+KV-write kernels (same rounding)

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
        norm = base.layers[0].input_layernorm
        # the fused kernels implement LlamaRMSNorm and full-width rotary without q/k norms
        self.fusable = (
            type(norm).__name__.endswith("RMSNorm")
            and hasattr(norm, "variance_epsilon")
            and not hasattr(attn, "q_norm")
            and not getattr(base.rotary_emb, "partial_rotary_factor", None)
        )
        self._qkv: list[Any] = []
        self._gate_up: list[Any] = []
        if self.fused and self.fusable and next(self.model.parameters()).is_cuda and _regroupable(base, cfg):
            self._regroup()

    def _regroup(self) -> None:
        """Stack each layer's q/k/v weights into one tensor and gate/up into another, so that
        a step runs one GEMM for q/k/v and one for gate/up (fewer, larger weight reads and
        fewer launches). The modules' parameters become views into the stacked tensors: the
        same values and no extra memory, and the eager modules keep working."""
        import torch

        with torch.no_grad():
            for layer in self.base.layers:
                a, mlp = layer.self_attn, layer.mlp
                self._qkv.append(_stack(a.q_proj, a.k_proj, a.v_proj))
                self._gate_up.append(_stack(mlp.gate_proj, mlp.up_proj))

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
        from transformers.models.llama.modeling_llama import rotate_half

        n = ids.numel()
        x = self.base.embed_tokens(ids.reshape(1, n))  # (1, N, hidden)
        cos, sin = self.base.rotary_emb(x, positions.reshape(1, n))
        if self.fused and self.fusable and x.is_cuda:
            return self._fused(
                x[0], cos[0].contiguous(), sin[0].contiguous(), slots, last, buffer, meta, attention
            )
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # (N, 1, d)
        x = x[0]
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
            buffer.q_keys[li].index_copy_(0, slots, k)
            buffer.q_values[li].index_copy_(0, slots, v)
            o = attention(
                q,
                buffer.ctx_keys[:, li],
                buffer.ctx_values[:, li],
                buffer.q_keys[li],
                buffer.q_values[li],
                meta,
                self.scale,
            )
            x = x + attn.o_proj(o.reshape(n, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        h = self.base.norm(x.index_select(0, last))
        return self.model.lm_head(h).float()  # type: ignore[no-any-return]

    def _fused(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slots: torch.Tensor,
        last: torch.Tensor,
        buffer: StaticKVBuffer,
        meta: StepMeta,
        attention: CascadeAttention,
    ) -> torch.Tensor:
        """The same step with the residual add fused into the next RMSNorm and RoPE fused with
        the KV write: ~3x fewer launches (what a graph of small steps is bound by)."""
        import torch

        from ragcompress.kv.fast._triton import add_rmsnorm, rope_write, silu_mul

        n, h, kvh, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        linear = torch.nn.functional.linear
        layers = self.base.layers
        norm0 = layers[0].input_layernorm
        x, hs = add_rmsnorm(x, None, norm0.weight, norm0.variance_epsilon)
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            if self._qkv:
                q, k, v = linear(hs, self._qkv[li]).split((h * d, kvh * d, kvh * d), dim=-1)
            else:
                q, k, v = attn.q_proj(hs), attn.k_proj(hs), attn.v_proj(hs)
            q = rope_write(
                q,
                k,
                v,
                cos,
                sin,
                slots,
                buffer.q_keys[li],
                buffer.q_values[li],
                h,
                kvh,
                d,
            )
            o = attention(
                q,
                buffer.ctx_keys[:, li],
                buffer.ctx_values[:, li],
                buffer.q_keys[li],
                buffer.q_values[li],
                meta,
                self.scale,
            )
            post = layer.post_attention_layernorm
            x, hs = add_rmsnorm(x, attn.o_proj(o.reshape(n, h * d)), post.weight, post.variance_epsilon)
            nxt = layers[li + 1].input_layernorm if li + 1 < len(layers) else self.base.norm
            if self._gate_up:
                mlp = layer.mlp.down_proj(silu_mul(linear(hs, self._gate_up[li])))
            else:
                mlp = layer.mlp(hs)
            x, hs = add_rmsnorm(x, mlp, nxt.weight, nxt.variance_epsilon)
        return self.model.lm_head(hs.index_select(0, last)).float()  # type: ignore[no-any-return]


def _regroupable(base: Any, cfg: Any) -> bool:
    """Llama attention/MLP without biases and with a SiLU gate: what the stacked GEMMs and the
    SiLU·mul kernel compute."""
    if getattr(cfg, "hidden_act", None) not in ("silu", "swish"):
        return False
    for layer in base.layers:
        a, mlp = layer.self_attn, layer.mlp
        parts = [a.q_proj, a.k_proj, a.v_proj]
        parts += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(p is None or getattr(p, "bias", None) is not None for p in parts):
            return False
    return True


def _stack(*linears: Any) -> Any:
    """One (sum of out_features, in_features) weight; each module's weight becomes a view."""
    import torch

    w = torch.cat([m.weight for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = w[start : start + rows]
        start += rows
    return w
