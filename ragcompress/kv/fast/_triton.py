"""Triton kernels of the fast path (imported only on CUDA)."""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["rerotate_copy"]


@triton.jit
def _rerotate_copy_kernel(
    src_k, src_v, dst_k, dst_v, cos_ptr, sin_ptr, rows, dst_offset,
    HALF: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # BLOCK_R rows of head_dim = 2 * HALF; source and destination are both contiguous blocks.
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    i = tl.arange(0, HALF)
    mask = (r < rows)[:, None]
    src = r[:, None] * (2 * HALF) + i[None, :]
    dst = dst_offset + src
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
    cos: torch.Tensor, sin: torch.Tensor, *, rows: int, dst_offset: int, head_dim: int,
) -> None:  # fmt: skip
    """dst[off + r] = rotate(src_k[r]), src_v[r] for every row r < rows (rows of head_dim)."""
    block_r = 64
    grid: Any = (triton.cdiv(rows, block_r),)
    _rerotate_copy_kernel[grid](
        src_k, src_v, dst_k, dst_v, cos.contiguous(), sin.contiguous(), rows, dst_offset,
        HALF=head_dim // 2, BLOCK_R=block_r, num_warps=4,
    )  # fmt: skip
