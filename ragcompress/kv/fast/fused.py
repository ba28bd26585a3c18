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

__all__ = ["FusedStep", "default_step", "stack_biases", "stack_weights"]


@dataclass(eq=False)
class FusedStep(DecoderStep):
    """RMSNorm (QK-norms too, where the family has them) and full-width RoPE, on CUDA with Triton.

    ``share_weights``: by default the step stacks each layer's q/k/v weights (and gate/up) into
    tensors of its own, a copy of ~2/3 of the decoder weights, and leaves the model untouched.
    ``True`` costs no memory: it reads the model's weights in place, as one stacked view where
    they already lie back to back in one storage, else as separate GEMMs (three for q/k/v, two
    for gate/up: more launches per step). The model's parameters are never replaced either way.

    ``skinny_rows``: steps of at most this many rows (a question's tokens times the batch) run
    every weight product of a layer (stacked q/k/v with their biases, o_proj, stacked gate/up,
    down_proj) on one Triton launch each (:mod:`~ragcompress.kv.fast._gemm`), in place of
    cuBLAS (whose o_proj and down_proj at these rows are a split-K product plus its reduction);
    0 keeps cuBLAS everywhere. bf16/fp16 weights only: an fp32 model keeps cuBLAS's fp32
    products (Triton's would run in tf32). On an H200, the warm 32K request: Qwen2.5-7B 5.80 →
    5.58 ms, Llama-3-8B 6.22 → 6.14, Mistral-7B 6.03 → 5.94 against cuBLAS for q/k/v and gate/up
    and the earlier skinny kernel for o_proj and down_proj
    (``benchmarks/results/ttft_swap_step_h200/``).

    ``o_splits`` / ``down_splits``: the skinny o_proj's / down_proj's parts of K (1, 2 or 4); the
    residual add after each sums the fp32 parts and rounds once, where the product would have
    rounded. Two halve each program's K loop and double the programs: alone, Qwen2.5-7B's o_proj
    10.4 → 9.4 µs, its down_proj over 39.7 → 35.7 µs; four were slower on both
    (``benchmarks/results/ttft_skinny_swap_h200/``). 1: one rounded output.
    """

    share_weights: bool = False
    skinny_rows: int = 64
    o_splits: int = 2
    down_splits: int = 2
    _qkv: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)
    _qkv_bias: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)
    _gate_up: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        reason = self.unsupported(self.model)
        if reason is not None:
            raise ValueError(f"FusedStep cannot run this model: {reason}; use EagerStep")
        import torch

        from ragcompress.kv.fast._gemm import MAX_ROWS

        if not 0 <= self.skinny_rows <= MAX_ROWS:
            raise ValueError(f"FusedStep.skinny_rows must be in [0, {MAX_ROWS}], got {self.skinny_rows}")
        for name in ("o_splits", "down_splits"):
            if getattr(self, name) not in (1, 2, 4):
                raise ValueError(f"FusedStep.{name} must be 1, 2 or 4, got {getattr(self, name)}")

        parts = self.parts()
        stack_qkv, stack_mlp = _stackable(self.arch, parts)
        with torch.no_grad():
            for p in parts:
                qkv, gate_up = (p.q_proj, p.k_proj, p.v_proj), (p.gate_proj, p.up_proj)
                self._qkv.append(stack_weights(qkv, self.share_weights) if stack_qkv else None)
                # Qwen2's q/k/v biases: one small copy, added by the stacked GEMM
                self._qkv_bias.append(stack_biases(qkv) if self._qkv[-1] is not None else None)
                self._gate_up.append(stack_weights(gate_up, self.share_weights) if stack_mlp else None)

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why the fused kernels cannot run ``model`` here, or None when they can."""
        from ragcompress.kv.fast.write import triton_available
        from ragcompress.models.arch import UnsupportedModelError, arch_for

        try:
            arch = arch_for(model)
            layers = arch.layers(model)
            parts = [arch.parts(layer) for layer in layers]
        except UnsupportedModelError as e:
            return str(e)
        param = next(model.parameters(), None)
        if param is None or not param.is_cuda:
            return "the model is not on a CUDA device"
        if not triton_available():
            return "triton is not installed (pip install 'ragcompress-core[gpu]')"
        if any(r.rot_dim != arch.head_dim for r in arch.rope):
            return "rotary is partial"
        if arch.block_order not in _ORDERS.values():
            return f"{arch.family}: block order {arch.block_order} is neither pre-norm nor Gemma's sandwich"
        # the kernels implement Llama's RMSNorm (weight * normed, rounded as LlamaRMSNorm rounds)
        # and Gemma's ((1 + weight) * normed in fp32)
        norms = [arch.module(model, "final_norm")]
        norms += [n for p in parts for n in (p.input_norm, p.post_attention_norm, p.q_norm, p.k_norm)]
        if arch.norm_placement == "sandwich":
            norms += [getattr(layer, getattr(arch.names, n)) for layer in layers for n in _MLP_NORMS]
        for norm in norms:
            if norm is not None and _norm_kind(norm) is None:
                return f"{type(norm).__name__} is neither Llama's nor Gemma's RMSNorm"
        return None

    def layers(self, x: torch.Tensor, io: StepIO) -> torch.Tensor:
        from ragcompress.kv.fast._triton import add_rmsnorm

        parts = self.parts()
        final = self.arch.module(self.model, "final_norm")
        sandwich = self.arch.norm_placement == "sandwich"
        layers = self.arch.layers(self.model)
        x, hs = add_rmsnorm(x, None, *_norm_args(parts[0].input_norm))
        for li, p in enumerate(parts):
            o = self._attention(p, hs, li, io)
            nxt = parts[li + 1].input_norm if li + 1 < len(parts) else final
            if sandwich:  # each block's output normed again before its residual add (Gemma 3),
                # that norm fused into the add + next norm: one launch each
                pre, post = (getattr(layers[li], getattr(self.arch.names, n)) for n in _MLP_NORMS)
                x, hs = add_rmsnorm(x, o, *_norm_args(pre), delta_norm=_norm_args(p.post_attention_norm)[:2])
                mlp = self._mlp(p, hs, li)
                x, hs = add_rmsnorm(x, mlp, *_norm_args(nxt), delta_norm=_norm_args(post)[:2])
            else:
                x, hs = add_rmsnorm(x, o, *_norm_args(p.post_attention_norm))
                x, hs = add_rmsnorm(x, self._mlp(p, hs, li), *_norm_args(nxt))
        return self.head(hs.index_select(0, io.last))

    def _attention(self, p: LayerParts, hs: torch.Tensor, li: int, io: StepIO) -> torch.Tensor:
        """Layer ``li``'s attention output after o_proj, from its normed input ``hs``: (n, hidden),
        or (o_splits, n, hidden) fp32 partial sums for the residual add to sum; writes this
        step's rotated keys and values into the question regions (a repair's: its context
        rows)."""
        from ragcompress.kv.fast._triton import rope_write

        n, h, kvh, d = hs.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = self._qkv[li]
        if qkv is not None:
            qkv_out = self._product(hs, qkv, self._qkv_bias[li])
            q, k, v = qkv_out.split((h * d, kvh * d, kvh * d), dim=-1)
        else:
            q, k, v = p.q_proj(hs), p.k_proj(hs), p.v_proj(hs)
        qk_norm = None
        if p.q_norm is not None and p.k_norm is not None:  # per head, before RoPE: in rope_write
            (qw, q_eps, gemma), (kw, k_eps, _) = _norm_args(p.q_norm), _norm_args(p.k_norm)
            qk_norm = (qw, q_eps, kw, k_eps, gemma)
        cos, sin = (t.contiguous() for t in io.rope.of(li))
        keys, values = io.kv_out(li)
        q = rope_write(q, k, v, cos, sin, io.slots, keys, values, h, kvh, d, qk_norm)
        o = self.attend(q, li, io)
        return self._project(p.o_proj, o.reshape(n, h * d), self.o_splits)

    def _mlp(self, p: LayerParts, hs: torch.Tensor, li: int) -> torch.Tensor:
        """The gated MLP of layer ``li`` on ``hs`` (n, hidden): one GEMM over the stacked
        gate/up weights and the fused activation·up kernel where they were stacked. (n, hidden),
        or (down_splits, n, hidden) fp32 partial sums for the residual add to sum."""
        from ragcompress.kv.fast._triton import act_mul

        gate_up, down = self._gate_up[li], p.down_proj  # down is set wherever gate/up were stacked
        if gate_up is None or down is None:
            return p.mlp(hs)  # type: ignore[no-any-return]
        act = act_mul(self._product(hs, gate_up), self.arch.mlp_act)
        return self._project(down, act, self.down_splits)

    def _product(
        self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, splits: int = 1
    ) -> torch.Tensor:
        """``x @ w.T + bias`` for x (rows, in), w (out, in): the skinny Triton GEMM where
        ``skinny_rows`` allows, as ``splits`` fp32 partial sums (splits, rows, out) when
        ``splits`` > 1 and there is no bias; else one (rows, out) product, cuBLAS past the
        skinny GEMM's reach (the residual add takes either form)."""
        import torch

        from ragcompress.kv.fast._gemm import skinny_fits, skinny_linear, skinny_partials

        if x.shape[0] <= self.skinny_rows and skinny_fits(x, w):
            if splits > 1 and bias is None:
                return skinny_partials(x, w, splits)
            return skinny_linear(x, w, bias)
        return torch.nn.functional.linear(x, w, bias)

    def _project(self, linear: Any, x: torch.Tensor, splits: int = 1) -> torch.Tensor:
        """``linear(x)``: a plain Linear through :meth:`_product`, any other module as itself."""
        import torch

        if type(linear) is torch.nn.Linear:
            return self._product(x, linear.weight, linear.bias, splits)
        return linear(x)  # type: ignore[no-any-return]


# the block orders the fused layers implement: pre-norm (Llama-shaped) and sandwich (Gemma 3)
_ORDERS = {
    "pre": ("input_norm", "attention", "residual", "post_attention_norm", "mlp", "residual"),
    "sandwich": (
        "input_norm", "attention", "post_attention_norm", "residual",
        "pre_mlp_norm", "mlp", "post_mlp_norm", "residual",
    ),
}  # fmt: skip
_MLP_NORMS = ("pre_mlp_norm", "post_mlp_norm")


def _norm_kind(norm: Any) -> str | None:
    """``"gemma"`` for Gemma's RMSNorm ((1 + w) * normed, in fp32), ``"llama"`` for Llama's
    (w * normed rounded to the model dtype first), None for any other norm."""
    name = type(norm).__name__
    if name.startswith("Gemma") and name.endswith("RMSNorm") and hasattr(norm, "eps"):
        return "gemma"
    if name.endswith("RMSNorm") and hasattr(norm, "variance_epsilon"):
        return "llama"
    return None


def _norm_args(norm: Any) -> tuple[Any, float, bool]:
    """``(weight, eps, gemma)`` of an RMSNorm module, as ``add_rmsnorm`` takes them."""
    gemma = _norm_kind(norm) == "gemma"
    return norm.weight, float(norm.eps if gemma else norm.variance_epsilon), gemma


def _stackable(arch: Any, parts: Sequence[LayerParts]) -> tuple[bool, bool]:
    """Whether q/k/v can run as one GEMM (all three present; biases, as Qwen2 has, are stacked
    too) and whether gate/up can: a gated MLP without biases whose gate activation the act·mul
    kernel computes (SiLU, Gemma's tanh GELU)."""
    from ragcompress.kv.fast._triton import ACTS

    qkv = all(m is not None for p in parts for m in (p.q_proj, p.k_proj, p.v_proj))
    mlp = arch.mlp_act in ACTS
    for p in parts:
        linears = [p.gate_proj, p.up_proj, p.down_proj]
        if any(m is None or getattr(m, "bias", None) is not None for m in linears):
            mlp = False
    return qkv, mlp


def stack_biases(linears: Sequence[Any]) -> torch.Tensor | None:
    """The modules' biases as one (sum out_i,) tensor (a copy; zeros for a module without one),
    or None when none has a bias."""
    import torch

    if all(getattr(m, "bias", None) is None for m in linears):
        return None
    return torch.cat(
        [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in linears]
    )


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
    (pre-norm Llama-shaped families and Gemma 3's sandwich norms).

    ``share_weights``: passed to the fused step (see there: extra memory against GEMM count).
    """
    if FusedStep.unsupported(model) is None:
        return FusedStep(model, share_weights=share_weights)
    return EagerStep(model)
