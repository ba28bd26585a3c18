"""Triton kernels of the fast path (imported only on CUDA)."""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["rerotate_copy"]


@triton.jit
def _rerotate_copy_kernel(
    src_k, src_v, dst_k, dst_v, cos_ptr, sin_ptr,
    rows, dst_layer_stride, dst_offset,
    HALF: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_R (token, head) rows of one layer; each row is head_dim = 2 * HALF.
    layer = tl.program_id(1)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    i = tl.arange(0, HALF)
    mask = (r < rows)[:, None]
    src = layer.to(tl.int64) * rows * (2 * HALF) + r[:, None].to(tl.int64) * (2 * HALF) + i[None, :]
    dst = layer.to(tl.int64) * dst_layer_stride + dst_offset + r[:, None].to(tl.int64) * (2 * HALF) + i[None, :]
    c = tl.load(cos_ptr + i)[None, :]
    s = tl.load(sin_ptr + i)[None, :]
    x1 = tl.load(src_k + src, mask=mask).to(tl.float32)
    x2 = tl.load(src_k + src + HALF, mask=mask).to(tl.float32)
    v1 = tl.load(src_v + src, mask=mask)
    v2 = tl.load(src_v + src + HALF, mask=mask)
    tl.store(dst_k + dst, (x1 * c - x2 * s).to(dst_k.dtype.element_ty), mask=mask)
    tl.store(dst_k + dst + HALF, (x2 * c + x1 * s).to(dst_k.dtype.element_ty), mask=mask)
    tl.store(dst_v + dst, v1, mask=mask)
    tl.store(dst_v + dst + HALF, v2, mask=mask)


def rerotate_copy(
    src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, *, layers: int, rows: int, dst_layer_stride: int,
    dst_offset: int, head_dim: int,
) -> None:  # fmt: skip
    """dst[l, off + r] = rotate(src_k[l, r]) and src_v[l, r] for every layer l and row r < rows."""
    block_r = 32
    grid: Any = (triton.cdiv(rows, block_r), layers)
    _rerotate_copy_kernel[grid](
        src_k, src_v, dst_k, dst_v, cos.contiguous(), sin.contiguous(), rows, dst_layer_stride, dst_offset,
        HALF=head_dim // 2, BLOCK_R=block_r, num_warps=4,
    )  # fmt: skip
