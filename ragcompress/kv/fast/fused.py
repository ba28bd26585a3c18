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
    from ragcompress.models.arch import LayerParts

__all__ = ["FusedStep", "default_step", "stack_weights"]


@dataclass(eq=False)
class FusedStep(DecoderStep):
    """RMSNorm (QK-norms too, where the family has them) and full-width RoPE, on CUDA with Triton.

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

        parts = self.parts()
        stackable = _stackable(self.arch, parts)
        with torch.no_grad():
            for p in parts:
                qkv, gate_up = (p.q_proj, p.k_proj, p.v_proj), (p.gate_proj, p.up_proj)
                self._qkv.append(stack_weights(qkv, self.share_weights) if stackable else None)
                self._gate_up.append(stack_weights(gate_up, self.share_weights) if stackable else None)

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why the fused kernels cannot run ``model`` here, or None when they can."""
        from ragcompress.kv.fast.write import triton_available
        from ragcompress.models.arch import UnsupportedModelError, arch_for

        try:
            arch = arch_for(model)
            parts = [arch.parts(layer) for layer in arch.layers(model)]
        except UnsupportedModelError as e:
            return str(e)
        param = next(model.parameters(), None)
        if param is None or not param.is_cuda:
            return "the model is not on a CUDA device"
        if not triton_available():
            return "triton is not installed (pip install 'ragcompress-core[gpu]')"
        if any(r.rot_dim != arch.head_dim for r in arch.rope):
            return "rotary is partial"
        if arch.norm_placement != "pre":
            # Gemma 3: sandwich norms, (1 + w) RMSNorm rounded in fp32 (EagerStep runs it)
            return (
                f"{arch.family} has {arch.norm_placement} norms; the fused kernels implement "
                "pre-norm layers with Llama's RMSNorm"
            )
        # the kernels implement Llama's RMSNorm (weight * normed, rounded as LlamaRMSNorm rounds)
        norms = [arch.module(model, "final_norm")]
        norms += [n for p in parts for n in (p.input_norm, p.post_attention_norm, p.q_norm, p.k_norm)]
        for norm in norms:
            if norm is not None and not _rms_norm(norm):
                return f"{type(norm).__name__} is not Llama's RMSNorm"
        return None

    def layers(self, x: torch.Tensor, io: StepIO) -> torch.Tensor:
        import torch

        from ragcompress.kv.fast._triton import add_rmsnorm, rope_write, silu_mul

        n, h, kvh, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        linear = torch.nn.functional.linear
        parts = self.parts()
        final = self.arch.module(self.model, "final_norm")
        norm0 = parts[0].input_norm
        x, hs = add_rmsnorm(x, None, norm0.weight, norm0.variance_epsilon)
        for li, p in enumerate(parts):
            qkv, gate_up = self._qkv[li], self._gate_up[li]
            if qkv is not None:
                q, k, v = linear(hs, qkv).split((h * d, kvh * d, kvh * d), dim=-1)
            else:
                q, k, v = p.q_proj(hs), p.k_proj(hs), p.v_proj(hs)
            if p.q_norm is not None and p.k_norm is not None:  # per head, before RoPE
                q, k = _head_norm(q, p.q_norm, n * h, d), _head_norm(k, p.k_norm, n * kvh, d)
            cos, sin = (t.contiguous() for t in io.rope.of(li))
            q = rope_write(
                q, k, v, cos, sin, io.slots, io.buffer.q_keys[li], io.buffer.q_values[li], h, kvh, d
            )
            o = self.attend(q, li, io)
            post = p.post_attention_norm
            x, hs = add_rmsnorm(x, p.o_proj(o.reshape(n, h * d)), post.weight, post.variance_epsilon)
            nxt = parts[li + 1].input_norm if li + 1 < len(parts) else final
            down = p.down_proj  # set wherever gate/up were stacked (_stackable)
            mlp = p.mlp(hs) if gate_up is None or down is None else down(silu_mul(linear(hs, gate_up)))
            x, hs = add_rmsnorm(x, mlp, nxt.weight, nxt.variance_epsilon)
        return self.head(hs.index_select(0, io.last))


_GATES = ("silu", "swish")  # what silu_mul computes


def _rms_norm(norm: Any) -> bool:
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon")


def _head_norm(x: torch.Tensor, norm: Any, rows: int, head_dim: int) -> torch.Tensor:
    """``norm`` (an RMSNorm over ``head_dim``) of every head of x (n, heads * head_dim), rows =
    n * heads; returns (n, heads * head_dim) contiguous (the kernel reads whole rows)."""
    from ragcompress.kv.fast._triton import add_rmsnorm

    out = add_rmsnorm(x.contiguous().view(rows, head_dim), None, norm.weight, norm.variance_epsilon)[1]
    return out.view(x.shape[0], -1)


def _stackable(arch: Any, parts: Sequence[LayerParts]) -> bool:
    """Attention and a gated MLP without biases and with a SiLU gate: what the stacked GEMMs and
    the SiLU·mul kernel compute."""
    if arch.mlp_act not in _GATES:
        return False
    for p in parts:
        linears = [p.q_proj, p.k_proj, p.v_proj, p.gate_proj, p.up_proj, p.down_proj]
        if any(m is None or getattr(m, "bias", None) is not None for m in linears):
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
    """:class:`FusedStep` where it runs (a CUDA model of a supported family with Llama's
    RMSNorm and full-width rotary, and Triton), else :class:`~ragcompress.kv.fast.eager.EagerStep`
    (Gemma 3 always: see :meth:`FusedStep.unsupported`).

    ``share_weights``: passed to the fused step (see there: extra memory against GEMM count).
    """
    if FusedStep.unsupported(model) is None:
        return FusedStep(model, share_weights=share_weights)
    return EagerStep(model)
