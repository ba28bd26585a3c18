"""Assembly kernels: write a chunk layer (dense or quantized) into a KV cache slice, keys
re-rotated on the way.

:func:`write_dense` and :func:`write_quantized` run the fused Triton kernel when the tensors
are on CUDA and ``triton`` imports, and the torch reference otherwise (CPU, or no Triton). Both
compute the same thing; see :mod:`~ragcompress.kv.kernels.reference` for the math and
:mod:`~ragcompress.kv.kernels.quant_format` for the quantized layout.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ragcompress.kv.kernels.reference import (
    QuantizedKV,
    rerotate,
    write_dense_reference,
    write_quantized_reference,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "QuantizedKV",
    "rerotate",
    "triton_available",
    "write_dense",
    "write_dense_reference",
    "write_quantized",
    "write_quantized_reference",
]


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` imports and a CUDA device is visible."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and triton_available()


def write_dense(
    keys: torch.Tensor,
    values: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Write dense keys/values (kv_heads, n, head_dim) at ``offset`` of ``dst`` (1, kv_heads,
    max_len, head_dim), keys rotated by ``delta`` (int64, broadcastable to (kv_heads, n))."""
    if _use_triton(dst_k):
        from ragcompress.kv.kernels.dequant_rope import write_dense_triton

        write_dense_triton(keys, values, dst_k, dst_v, offset, delta, inv_freq)
    else:
        write_dense_reference(keys, values, dst_k, dst_v, offset, delta, inv_freq)


def write_quantized(
    src: QuantizedKV,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    offset: int,
    delta: torch.Tensor,
    inv_freq: torch.Tensor,
) -> None:
    """Dequantize ``src`` and write it like :func:`write_dense`."""
    if _use_triton(dst_k):
        from ragcompress.kv.kernels.dequant_rope import write_quantized_triton

        write_quantized_triton(src, dst_k, dst_v, offset, delta, inv_freq)
    else:
        write_quantized_reference(src, dst_k, dst_v, offset, delta, inv_freq)
