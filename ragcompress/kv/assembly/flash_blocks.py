"""The tile of the partial forward's flash kernel (:mod:`._position_flash`), apart from it: the
per-request bounds (:func:`~ragcompress.kv.assembly.flash_packed.flash_bounds`) are cut with the
same sizes, where Triton may not import.

128 rows (tokens × folded query heads) per program and 64 keys per tile, with 8 warps: the shape
flash kernels use for head_dim 128 on Hopper (the launch settings are measured in
``benchmarks/results/ttft_flash_recompute_h200/``)."""

from __future__ import annotations

__all__ = ["BLOCK_M", "BLOCK_N"]

BLOCK_M = 128
BLOCK_N = 64
