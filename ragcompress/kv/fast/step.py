"""One forward step of a decoder over the static buffer, with static shapes.

:class:`DecoderStep` is what every step shares: it asks the model-family adapter
(:func:`~ragcompress.models.arch.arch_for`) for the modules, head counts, attention scale and
RoPE tables, embeds the tokens and computes their cos/sin, and attends over the buffer (the
cascade over the shared context + each question's own slots). What differs is how a layer is
computed, so that is a subclass each, and the caller picks one (:func:`default_step` picks
for it):

* :class:`~ragcompress.kv.fast.eager.EagerStep` runs the model's own modules op by op: any
  device and dtype, the eager generator's numerics; the reference the fused step is held to;
* :class:`~ragcompress.kv.fast.fused.FusedStep` fuses the residual add into the next RMSNorm
  and RoPE into the KV write (Triton, CUDA), and runs q/k/v and gate/up as one GEMM each.

Only the cache handling differs from the eager forward: this step's keys/values are
scattered into the question regions and attention reads the buffer. Local (sliding-window)
layers (Gemma 3) attend through a :class:`~ragcompress.kv.fast.attention.LocalWindow` built
from the step's query positions and the buffer's slot positions (tensors, so a captured graph
serves any request); each layer rotates with its own RoPE table. Nothing here
synchronizes with the host, so a step can be captured as a CUDA graph. A step never changes
the model it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragcompress.models.arch import ModelArch, UnsupportedModelError, arch_for
from ragcompress.models.rope import cos_sin

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import CascadeAttention, StepMeta
    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.repair import RepairTarget
    from ragcompress.models.arch import LayerParts

__all__ = ["DecoderStep", "StepIO", "StepRope"]


@dataclass(frozen=True, eq=False)
class StepRope:
    """The RoPE cos/sin of one step's tokens: ``tables`` one (cos, sin) pair (N, rot_dim), in the
    model dtype, per distinct frequency table; ``index[li]`` is layer ``li``'s (families with
    per-layer-type tables have several)."""

    tables: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    index: tuple[int, ...]

    def of(self, li: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tables[self.index[li]]


@dataclass(frozen=True, eq=False)
class StepIO:
    """What one step reads and writes besides the tokens: ``slots`` (N,) int64 question-region
    slots its keys/values go to, ``last`` (B,) int64 rows whose logits it returns, the buffer,
    the attention metadata, the cascade attention, the tokens' RoPE cos/sin and their logical
    positions (N,) int64 (local layers' window)."""

    slots: torch.Tensor
    last: torch.Tensor
    buffer: StaticKVBuffer
    meta: StepMeta
    attention: CascadeAttention
    rope: StepRope
    positions: torch.Tensor
    spans: dict[int, torch.Tensor] = field(default_factory=dict)  # window size -> its span
    #: set for a partial forward that repairs context slots in place (``blend``): the keys and
    #: values go to those context rows, and attention is the target's (:mod:`.repair`)
    target: RepairTarget | None = None

    def kv_out(self, li: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``li``'s (rows, kv_heads, head_dim) keys and values tensors whose rows
        ``slots`` this step writes: the question regions, or the target's context rows."""
        if self.target is not None:
            return self.target.kv_out(li)
        return self.buffer.q_keys[li], self.buffer.q_values[li]


@dataclass(eq=False)
class DecoderStep(ABC):
    """A ``*ForCausalLM`` of a supported family (:func:`~ragcompress.models.arch.supported_families`)
    seen as a step function; its adapter (``self.arch``) names every module the step calls.
    Raises :class:`~ragcompress.models.arch.UnsupportedModelError` (a ``ValueError``) naming the
    family for a model the step cannot run."""

    model: Any

    def __post_init__(self) -> None:
        import torch

        arch = arch_for(self.model)  # raises naming the supported families
        arch.require_fast_engine()
        arch.local_window  # noqa: B018  (raises for local layers of several windows)
        if any(r.rot_dim != arch.head_dim for r in arch.rope):
            raise UnsupportedModelError(f"{arch.family}: the fast path rotates whole heads (partial RoPE)")
        self.arch: ModelArch = arch
        self.head_dim, self.heads, self.kv_heads = arch.head_dim, arch.num_heads, arch.num_kv_heads
        self.scale = float(arch.attention_scale)
        specs = list(dict.fromkeys(arch.rope))  # distinct tables, in layer order
        device = next(self.model.parameters()).device
        # on the model's device once: a step captured in a CUDA graph copies nothing from the host
        self._inv_freq = [s.inv_freq().to(device=device, dtype=torch.float32) for s in specs]
        self._table_of = tuple(specs.index(s) for s in arch.rope)

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    def parts(self) -> list[LayerParts]:
        """Each decoder layer's modules, as the family adapter names them (resolved per step)."""
        return [self.arch.parts(layer) for layer in self.arch.layers(self.model)]

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
        # the embedding module applies the family's scale (Gemma: sqrt(hidden)) as the model does
        x = self.arch.module(self.model, "embed")(ids.reshape(1, n))[0]  # (N, hidden)
        pos = positions.reshape(n)
        rope = self.rope(pos, x.dtype)
        return self.layers(x, StepIO(slots, last, buffer, meta, attention, rope, pos))

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> StepRope:
        """cos/sin of ``positions`` (N,) int64 per distinct table, cast to ``dtype``: the model's
        rotary module computes the same fp32 angles (one product each) and casts them the same
        way, so these are its values bit for bit (tests/kv/test_fast_steps.py checks it)."""
        tables = []
        for inv in self._inv_freq:
            cos, sin = cos_sin(positions, inv)
            tables.append((cos.to(dtype), sin.to(dtype)))
        return StepRope(tuple(tables), self._table_of)

    @abstractmethod
    def layers(self, x: torch.Tensor, io: StepIO) -> torch.Tensor:
        """Every decoder layer, the final norm and the head over embedded tokens x (N, hidden)
        with their RoPE cos/sin ``io.rope``; returns the fp32 logits (B, vocab) of the rows
        ``io.last``."""

    def attend(self, q: torch.Tensor, li: int, io: StepIO) -> torch.Tensor:
        """Layer ``li``'s rotated queries (N, heads, head_dim) over the buffer (this step's
        keys/values already written): (N, heads, head_dim)."""
        from ragcompress.kv.fast.step_meta import LocalWindow, window_span

        if io.target is not None:
            return io.target.attend(q, li)
        buf = io.buffer
        k, v = buf.ctx_keys[:, li], buf.ctx_values[:, li]
        size = self.arch.sliding_window[li]
        window = None
        if size is not None:  # the span once per step, for every local layer
            if size not in io.spans:
                io.spans[size] = window_span(io.positions, buf.ctx_pos, io.meta.ctx_len, size)
            window = LocalWindow(size, io.positions, buf.ctx_pos, io.spans[size])
        return io.attention(
            q, k, v, buf.q_keys[li], buf.q_values[li], io.meta, self.scale,
            window=window, softcap=self.arch.attn_softcap,
        )  # fmt: skip

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits (B, vocab) of the final-normed rows ``h`` (B, hidden): the output layer,
        then the family's soft-cap where it has one (in the model dtype, as the model does)."""
        import torch

        logits = self.arch.module(self.model, "lm_head")(h)
        cap = self.arch.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()  # type: ignore[no-any-return]
