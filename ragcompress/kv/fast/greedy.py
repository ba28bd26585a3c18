"""The step's greedy token: :func:`greedy` runs the two-launch Triton argmax on CUDA
(:mod:`~ragcompress.kv.fast._argmax`; ``torch.argmax`` reduces a row in one thread block, 28
µs a step for a 128K vocabulary on an H200) and ``torch.argmax`` elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragcompress.kv.fast.write import triton_available

if TYPE_CHECKING:
    import torch

__all__ = ["greedy"]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """(B,) int64 argmax of ``logits`` (B, vocab): the lowest index of each row's maximum."""
    if logits.is_cuda and logits.dim() == 2 and logits.stride(1) == 1 and triton_available():
        from ragcompress.kv.fast._argmax import argmax_rows

        return argmax_rows(logits)
    return logits.argmax(-1)
