"""``blend``'s partial forward on the fast engine's own step, over its buffer.

The recomputed context tokens run through the engine's :class:`~ragcompress.kv.fast.step.DecoderStep`
(on a GPU the :class:`~ragcompress.kv.fast.fused.FusedStep`: residual adds fused into the norms,
RoPE into the KV write, q/k/v and gate/up as one GEMM each) instead of a transformers forward:
each layer writes their fresh keys and values over their own context rows, then they attend over
the whole context, each masked by its logical position, through the job
:func:`~ragcompress.kv.assembly.flash_packed.packed_job` builds (the position-masked flash
kernel on a GPU, the packed SDPA blocks elsewhere). The result is what
:func:`~ragcompress.kv.assembly.recompute.recompute_slots` writes through the buffer's views,
up to the fused kernels' bf16 roundings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.assembly.blend_attention import Packed
    from ragcompress.kv.assembly.flash_packed import FlashPacked
    from ragcompress.kv.assembly.recompute import SlotMap
    from ragcompress.kv.fast.buffer import StaticKVBuffer

__all__ = ["RepairTarget", "repair_in_buffer"]


@dataclass(frozen=True, eq=False)
class RepairTarget:
    """Where a repair step writes (the buffer's context rows) and how it attends (``job`` over
    the first ``ctx_len`` rows, at the family's ``scale``)."""

    buffer: StaticKVBuffer
    job: Packed | FlashPacked
    ctx_len: int
    scale: float

    def kv_out(self, li: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``li``'s context keys and values (capacity, kv_heads, head_dim), views."""
        return self.buffer.ctx_keys[:, li], self.buffer.ctx_values[:, li]

    def attend(self, q: torch.Tensor, li: int) -> torch.Tensor:
        """Rotated queries (k, heads, head_dim) over the repaired context → (k, heads, head_dim)."""
        n = self.ctx_len
        keys = self.buffer.ctx_keys[:n, li].transpose(0, 1)[None]  # (1, kv_heads, n, head_dim)
        values = self.buffer.ctx_values[:n, li].transpose(0, 1)[None]
        return self.job.attend(q.transpose(0, 1)[None], keys, values, self.scale, li)[0]


def repair_in_buffer(engine: Any, slots: SlotMap, chosen: torch.Tensor) -> bool:
    """Recompute the context slots ``chosen`` (k,) sorted of the ``concat`` context ``engine`` (a
    :class:`~ragcompress.kv.fast.engine.FastGenerator`) holds, whose slots are ``slots``, in its
    buffer. False (nothing done) where its buffer's layers are not plain views of the context
    (local sliding-window layers): the caller repairs through the transformers forward."""
    import torch

    from ragcompress.kv.assembly.flash_packed import packed_job
    from ragcompress.kv.fast.step import StepIO

    buffer, step = engine.buffer, engine._step
    if buffer.positions or step.arch.local_window is not None:
        return False
    engine._written()  # host chunks streamed in first: the repair reads and writes every layer
    k = int(chosen.numel())
    job = packed_job(engine.model, slots.positions, chosen, buffer.ctx_keys.dtype)
    target = RepairTarget(buffer, job, buffer.ctx_len, step.scale)
    positions = slots.positions[chosen]
    with torch.inference_mode():
        x = step.arch.module(step.model, "embed")(slots.tokens[chosen][None])[0]  # (k, hidden)
        last = torch.full((1,), k - 1, dtype=torch.long, device=x.device)  # one row of logits, unused
        rope = step.rope(positions, x.dtype)
        # no step metadata or cascade: the target attends
        io = StepIO(chosen, last, buffer, None, None, rope, positions, target=target)  # type: ignore[arg-type]
        step.layers(x, io)
    return True
