"""The decoder step with fused Triton kernels and stacked GEMMs (CUDA).

A captured graph of small steps is bound by launches, not bytes: fusing the residual add into
the next RMSNorm and RoPE into the KV write cuts them ~3x, and one GEMM over q/k/v (one over
gate/up) reads the same weights in fewer, larger launches. Rounding follows the eager
modules (see :mod:`ragcompress.kv.fast._triton`), so tokens match
:class:`~ragcompress.kv.fast.eager.EagerStep` up to bf16 ulps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.eager import EagerStep
from ragcompress.kv.fast.step import DecoderStep

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.step import StepIO

__all__ = ["FusedStep", "default_step", "stack_weights"]


@dataclass(eq=False)
class FusedStep(DecoderStep):
    """Llama with RMSNorm, full-width rotary and no q/k norms, on CUDA with Triton.

    ``share_weights``: by default the step stacks each layer's q/k/v weights (and gate/up) into
    tensors of its own, a copy of ~2/3 of the decoder weights, and leaves the model untouched.
    ``True`` costs no memory: it reads the model's weights in place, as one stacked view where
    they already lie back to back in one storage, else as separate GEMMs (three for q/k/v, two
    for gate/up: more launches per step). The model's parameters are never replaced either way.
    """

    share_weights: bool = False
    _qkv: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)
    _gate_up: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        reason = self.unsupported(self.model)
        if reason is not None:
            raise ValueError(f"FusedStep cannot run this model: {reason}; use EagerStep")
        import torch

        stackable = _stackable(self.base, self.model.config)
        with torch.no_grad():
            for layer in self.base.layers:
                a, mlp = layer.self_attn, layer.mlp
                qkv = (a.q_proj, a.k_proj, a.v_proj)
                gate_up = (mlp.gate_proj, mlp.up_proj)
                self._qkv.append(stack_weights(qkv, self.share_weights) if stackable else None)
                self._gate_up.append(stack_weights(gate_up, self.share_weights) if stackable else None)

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why the fused kernels cannot run ``model`` here, or None when they can."""
        from ragcompress.kv.fast.write import triton_available

        base = getattr(model, "model", None)
        layers = getattr(base, "layers", None)
        if not layers:
            return f"{type(model).__name__} has no model.layers"
        param = next(model.parameters(), None)
        if param is None or not param.is_cuda:
            return "the model is not on a CUDA device"
        if not triton_available():
            return "triton is not installed (pip install 'ragcompress-core[gpu]')"
        norm, attn = getattr(layers[0], "input_layernorm", None), getattr(layers[0], "self_attn", None)
        if attn is None:
            return "the layers have no self_attn"
        # the kernels implement LlamaRMSNorm and full-width rotary without q/k norms
        if not (type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon")):
            return f"{type(norm).__name__} is not Llama's RMSNorm"
        if hasattr(attn, "q_norm"):
            return "attention has q/k norms"
        if getattr(getattr(base, "rotary_emb", None), "partial_rotary_factor", None):
            return "rotary is partial"
        return None

    def layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, io: StepIO) -> torch.Tensor:
        import torch

        from ragcompress.kv.fast._triton import add_rmsnorm, rope_write, silu_mul

        n, h, kvh, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        cos, sin = cos.contiguous(), sin.contiguous()
        linear = torch.nn.functional.linear
        layers = self.base.layers
        norm0 = layers[0].input_layernorm
        x, hs = add_rmsnorm(x, None, norm0.weight, norm0.variance_epsilon)
        for li, layer in enumerate(layers):
            attn, qkv, gate_up = layer.self_attn, self._qkv[li], self._gate_up[li]
            if qkv is not None:
                q, k, v = linear(hs, qkv).split((h * d, kvh * d, kvh * d), dim=-1)
            else:
                q, k, v = attn.q_proj(hs), attn.k_proj(hs), attn.v_proj(hs)
            q = rope_write(
                q, k, v, cos, sin, io.slots, io.buffer.q_keys[li], io.buffer.q_values[li], h, kvh, d
            )
            o = self.attend(q, li, io)
            post = layer.post_attention_layernorm
            x, hs = add_rmsnorm(x, attn.o_proj(o.reshape(n, h * d)), post.weight, post.variance_epsilon)
            nxt = layers[li + 1].input_layernorm if li + 1 < len(layers) else self.base.norm
            mlp = layer.mlp(hs) if gate_up is None else layer.mlp.down_proj(silu_mul(linear(hs, gate_up)))
            x, hs = add_rmsnorm(x, mlp, nxt.weight, nxt.variance_epsilon)
        return self.model.lm_head(hs.index_select(0, io.last)).float()  # type: ignore[no-any-return]


def _stackable(base: Any, cfg: Any) -> bool:
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


def stack_weights(linears: Sequence[Any], share: bool = False) -> torch.Tensor | None:
    """The modules' weights (out_i, in) as one (sum out_i, in) tensor; the modules and their
    parameters are left as they are.

    ``share=False``: a new tensor (a copy). ``share=True``: a view of the weights' own storage
    when they lie back to back in it (same dtype and device, contiguous, each starting where
    the previous ends), else ``None`` (the caller runs the modules one by one).
    """
    import torch

    ws = [m.weight.detach() for m in linears]
    if not share:
        return torch.cat(ws)
    first = ws[0]
    offset = first.storage_offset()
    for w in ws:
        same = w.dtype == first.dtype and w.device == first.device and w.is_contiguous()
        same = same and w.dim() == 2 and w.shape[1] == first.shape[1]
        if not same or w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
            return None
        if w.storage_offset() != offset:
            return None
        offset += w.numel()
    rows = sum(int(w.shape[0]) for w in ws)
    return first.as_strided((rows, first.shape[1]), first.stride(), first.storage_offset())


def default_step(model: Any, share_weights: bool = False) -> DecoderStep:
    """:class:`FusedStep` where it runs (a CUDA model with Llama's
    RMSNorm and full-width rotary, and Triton), else :class:`~ragcompress.kv.fast.eager.EagerStep`.

    ``share_weights``: passed to the fused step (see there: extra memory against GEMM count).
    """
    if FusedStep.unsupported(model) is None:
        return FusedStep(model, share_weights=share_weights)
    return EagerStep(model)
