"""Cascade attention that first waits until its layer's streamed context is written.

The decoder steps read the context only inside attention (``DecoderStep.attend``), one call per
layer with that layer's ``ctx_keys[:, l]`` view, so wrapping the cascade is enough to make layer
``l`` wait on layer ``l``'s copy and nothing else: the steps stay as they are, and the wait (a
flag-polling kernel, :func:`~ragcompress.kv.fast._spin.wait_flag`) is captured into the step's
CUDA graph like any other launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.attention import CascadeAttention

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.fast.attention import LocalWindow, StepMeta
    from ragcompress.kv.fast.stream import HostStream

__all__ = ["GatedAttention"]


@dataclass(eq=False)
class GatedAttention(CascadeAttention):
    """``inner`` after :meth:`HostStream.wait` for the layer whose context it reads."""

    inner: CascadeAttention
    host: HostStream

    def __call__(
        self,
        q: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        own_k: torch.Tensor,
        own_v: torch.Tensor,
        meta: StepMeta,
        scale: float,
        *,
        window: LocalWindow | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """(B*T, heads, head_dim), as ``inner`` computes it."""
        self.host.wait(self.host.buffer.layer_of(ctx_k))
        return self.inner(q, ctx_k, ctx_v, own_k, own_v, meta, scale, window=window, softcap=softcap)
