"""The partial forward's attention as one Triton flash kernel per layer, on a GPU.

:class:`~ragcompress.kv.assembly.blend_attention.Packed` runs the recomputed tokens as up to 8
SDPA calls with additive masks built per request: the masks alone are ``k * group * slots``
elements (about 0.6 GB at 32K context and 15% recompute), and the masked kernel is slower than
flash. :class:`FlashPacked` hands each layer to
:func:`~ragcompress.kv.assembly._position_flash.position_flash` instead: every row is masked by
its own logical position inside the kernel, and the tiles every row of a program sees skip the
mask (bounds cut once per request, on the device, here). Local sliding-window layers (Gemma 3)
keep the packed SDPA blocks, built only for models that have them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.assembly.blend_attention import AttentionJob, Packed, packed_blocks
from ragcompress.kv.assembly.flash_blocks import BLOCK_M, BLOCK_N

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["BLOCK_M", "BLOCK_N", "FlashPacked", "flash_bounds", "flash_kernel", "packed_job"]


#: ``position_flash``'s signature: (query (heads, n, D), key, value (kv_heads, slots, D),
#: q_pos (n,), k_pos (slots,), bounds (blocks, 2), scale) → (n, heads, D)
Kernel = Callable[..., "torch.Tensor"]


def flash_kernel(device: torch.device) -> Kernel | None:
    """The compiled kernel where ``device`` is a GPU and Triton imports, else None."""
    if device.type != "cuda":
        return None
    try:
        from ragcompress.kv.assembly._position_flash import position_flash
    except ImportError:  # no Triton: the SDPA blocks serve
        return None
    return position_flash


def flash_bounds(
    positions: torch.Tensor, chosen: torch.Tensor, group: int, block_m: int, block_n: int
) -> torch.Tensor:
    """(ceil(k * group / block_m), 2) int32 ``[lo, hi)`` per block of ``block_m`` folded rows
    (token-major) of the ``k`` recomputed slots ``chosen`` (k,) sorted, under ``positions``
    (slots,) int64: slots below ``lo`` (a multiple of ``block_n``) are visible to every row of the
    block, slots from ``hi`` on to none. Where positions do not grow with the slot, ``[0, slots)``.
    Computed on the device, with no host transfer."""
    import torch

    slots, k = int(positions.numel()), int(chosen.numel())
    blocks = -(-k * group // block_m)
    at = torch.arange(blocks, device=positions.device)
    first = (at * block_m) // group
    last = (((at + 1) * block_m - 1) // group).clamp(max=k - 1)
    pos = positions[chosen]
    monotone = (positions[1:] >= positions[:-1]).all()
    lo = torch.searchsorted(positions, pos[first], right=True) // block_n * block_n
    hi = torch.searchsorted(positions, pos[last], right=True)
    lo = torch.where(monotone, lo, 0)
    hi = torch.where(monotone, hi, slots)
    return torch.stack([lo, hi], dim=1).to(torch.int32).contiguous()


@dataclass(eq=False)
class FlashPacked(AttentionJob):
    """The recomputed tokens at ``q_pos`` (k,) int64 over a cache whose slots sit at ``positions``
    (slots,) int64, through ``kernel`` (:func:`flash_kernel`'s, or the interpreted one in tests)
    with ``bounds`` from :func:`flash_bounds`; ``local``: the packed SDPA job for local
    sliding-window layers (None without them)."""

    config: Any
    positions: torch.Tensor
    q_pos: torch.Tensor
    bounds: torch.Tensor
    kernel: Kernel
    windows: tuple[int | None, ...] = ()
    local_job: Packed | None = None

    @property
    def mask(self) -> torch.Tensor:
        # the kernel masks by position itself; any 4D tensor stops transformers building a mask
        import torch

        return torch.zeros(1, 1, 1, 1, dtype=self.bounds.dtype, device=self.bounds.device)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, layer: int
    ) -> torch.Tensor:
        if self.local(layer):
            assert self.local_job is not None
            return self.local_job.attend(query, key, value, scaling, layer)
        if query.shape[0] != 1:
            raise ValueError(f"the partial forward runs one sequence, got a batch of {query.shape[0]}")
        return self.kernel(query[0], key[0], value[0], self.q_pos, self.positions, self.bounds, scaling)[None]


def packed_job(
    model: PreTrainedModel,
    positions: torch.Tensor,
    chosen: torch.Tensor,
    dtype: torch.dtype,
    kernel: Callable[..., torch.Tensor] | None = None,
) -> Packed | FlashPacked:
    """The job recomputing slots ``chosen`` (k,) sorted of a cache whose slots sit at logical
    ``positions`` (slots,) in ``model``: its family's group size and local windows. On a GPU with
    Triton (or given ``kernel``, :func:`~ragcompress.kv.assembly.flash_packed.flash_kernel`'s
    signature) a :class:`FlashPacked`, whose local layers, if any, keep the packed blocks;
    elsewhere :class:`~ragcompress.kv.assembly.blend_attention.Packed`."""
    from ragcompress.models.arch import arch_for

    arch = arch_for(model)
    window = arch.local_window
    windows = arch.sliding_window if window else ()
    kernel = kernel or flash_kernel(positions.device)
    if kernel is None:
        return Packed(model.config, packed_blocks(positions, chosen, arch.group_size, dtype, window), windows)
    local = None
    if window:  # only the local layers read these blocks
        blocks = packed_blocks(positions, chosen, arch.group_size, dtype, window)
        local = Packed(model.config, blocks, windows)
    bounds = flash_bounds(positions, chosen, arch.group_size, BLOCK_M, BLOCK_N)
    return FlashPacked(model.config, positions, positions[chosen], bounds, kernel, windows, local)
