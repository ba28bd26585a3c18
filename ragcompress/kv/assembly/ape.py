"""``ape``: Adaptive Parallel Encoding (Yang, Chen & Chen, ICLR 2025), without fine-tuning.

Every chunk sits after the shared prefix at the *same* positions — where it was encoded, so its keys
are used as stored (no re-rotation, the chunk key is unchanged) — and the question starts after the
longest chunk. The question and answer tokens attend to the chunks with logits divided by
``temperature`` and the chunks' softmax mass multiplied by ``scale``; the prefix and the question's
own tokens are unscaled. Per key, the unnormalised weight of a chunk token is
``scale * exp(q·k / (T √d))``: dividing the chunk keys by ``T`` gives the ``1/T`` (the context
keys are attended to only by question/answer tokens here, nothing recomputes them) and an additive
bias ``log(scale)`` on the chunk slots, passed as a 4D attention mask with every forward, gives the
``scale``. Both are per request: nothing in the model is switched.

Defaults ``temperature = scale = 1`` are APE's own demo defaults (plain parallel encoding with a
shared prefix); the paper tunes both in (0, 1] per task. With one chunk and the defaults this is an
exact fresh prefill of prefix + passage + question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.base import Assembly, Context, number, register_assembly

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ragcompress.kv.assemble import PrefixKV
    from ragcompress.kv.chunk import KVChunk

__all__ = ["APE"]

_MASKABLE = ("eager", "sdpa")


@register_assembly("ape")
@dataclass
class APE(Assembly):
    """``temperature`` T in (0, 10]: chunk logits are divided by it (T < 1 sharpens);
    ``scale`` S in (0, 10]: multiplies the chunks' share of attention."""

    temperature: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        self.temperature = number("ape", "temperature", self.temperature, 0.0, 10.0, low_open=True)
        self.scale = number("ape", "scale", self.scale, 0.0, 10.0, low_open=True)

    def check(self, model: PreTrainedModel) -> None:
        super().check(model)
        impl = getattr(model.config, "_attn_implementation", None)
        if impl not in _MASKABLE:
            raise ValueError(
                f"ape needs an attention implementation that takes an additive 4D mask ({_MASKABLE}); "
                f"this model uses {impl!r}"
            )

    def check_fast(self, model: PreTrainedModel | None = None) -> None:
        super().check_fast(model)
        # The fast engine attends to prefix + chunks in one pass (one log-sum-exp), so it cannot
        # weigh the chunks apart from the prefix; 1/T lives in the written keys and works.
        if self.scale != 1.0:
            raise ValueError(
                f"ape.scale={self.scale}: the fast engine runs ape with scale 1 only (any temperature); "
                "use the eager KVAnswerer for scale != 1"
            )

    def prepare(
        self, model: PreTrainedModel, prefix: PrefixKV, chunks: Sequence[KVChunk], question: Sequence[int]
    ) -> Context:
        import torch

        from ragcompress.kv.assemble import assemble
        from ragcompress.kv.assembly.window import local_window
        from ragcompress.models.arch import arch_for

        arch = arch_for(model)
        starts = [prefix.length] * len(chunks)
        cache, position = assemble(prefix, chunks, arch, model.config, starts=starts)
        slots = cache.get_seq_length()
        p = prefix.length
        if self.temperature != 1.0:
            for layer in cache.layers:
                keys: Any = getattr(layer, "keys", None)  # the assembled tensors are this request's own
                keys[..., p:, :] /= self.temperature
        bias = None
        if self.scale != 1.0:
            dtype, device = prefix.keys[0].dtype, prefix.keys[0].device
            bias = torch.zeros(slots, dtype=dtype, device=device)
            bias[p:] = math.log(self.scale)
        # local layers: every chunk's tokens within the window of the question, by position
        local = local_window(arch, p, chunks, starts, prefix.keys[0].device)
        return Context(cache, position, slots=slots, bias=bias, **local)
