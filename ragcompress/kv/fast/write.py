"""Write a packed chunk into the static buffer, re-rotating its keys on the way.

Every key of a chunk moves by the same position delta (its new start minus its encoding
offset), so re-rotation is one (cos, sin) vector per chunk. On CUDA a Triton kernel reads the
chunk's keys and values once and writes them rotated into the buffer slice: one launch per
chunk, one pass over its bytes. Elsewhere (and for partial rotary) the torch reference runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragcompress.kv.fast.buffer import StaticKVBuffer
from ragcompress.kv.fast.packed import PackedChunk

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.rotary import Rotary

__all__ = ["write_chunk", "write_chunk_reference"]


def write_chunk(buffer: StaticKVBuffer, chunk: PackedChunk, rotary: Rotary, what: str = "chunk") -> int:
    """Append ``chunk`` to the buffer's context; returns the slot it starts at."""
    _check(buffer, chunk, what)
    slot, pos = buffer.reserve(chunk.num_tokens, chunk.length, what)
    if chunk.num_tokens == 0:
        return slot
    delta = pos - chunk.base_offset
    cos, sin = rotary.cos_sin_of(delta, chunk.keys.device)
    if chunk.keys.device.type == "cuda" and rotary.rot_dim == chunk.keys.shape[-1] and _triton_ok():
        _write_triton(buffer, chunk, slot, cos, sin)
    else:
        _write_torch(buffer, chunk, slot, cos, sin, rotary.rot_dim)
    return slot


def write_chunk_reference(
    buffer: StaticKVBuffer, chunk: PackedChunk, rotary: Rotary, what: str = "chunk"
) -> int:
    """:func:`write_chunk` through torch ops only (the reference the kernel is tested against)."""
    _check(buffer, chunk, what)
    slot, pos = buffer.reserve(chunk.num_tokens, chunk.length, what)
    if chunk.num_tokens:
        cos, sin = rotary.cos_sin_of(pos - chunk.base_offset, chunk.keys.device)
        _write_torch(buffer, chunk, slot, cos, sin, rotary.rot_dim)
    return slot


def _check(buffer: StaticKVBuffer, chunk: PackedChunk, what: str) -> None:
    want = (buffer.layers, buffer.kv_heads, buffer.head_dim)
    got = (chunk.keys.shape[0], chunk.keys.shape[2], chunk.keys.shape[3])
    if tuple(got) != want:
        raise ValueError(f"{what} has (layers, kv_heads, head_dim) = {tuple(got)}, the buffer {want}")
    if chunk.keys.device != buffer.ctx_keys.device:
        raise ValueError(f"{what} is on {chunk.keys.device}, the buffer on {buffer.ctx_keys.device}")


def _write_torch(
    buffer: StaticKVBuffer, chunk: PackedChunk, slot: int, cos: torch.Tensor, sin: torch.Tensor, rot: int
) -> None:
    import torch

    n = chunk.num_tokens
    k = chunk.keys.float()
    half = rot // 2
    x1, x2 = k[..., :half], k[..., half:rot]
    c, s = cos[:half], sin[:half]
    parts = [x1 * c - x2 * s, x2 * c + x1 * s]
    if rot < k.shape[-1]:
        parts.append(k[..., rot:])
    buffer.ctx_keys[:, slot : slot + n].copy_(torch.cat(parts, dim=-1))
    buffer.ctx_values[:, slot : slot + n].copy_(chunk.values)


_TRITON: bool | None = None


def _triton_ok() -> bool:
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401

            _TRITON = True
        except ImportError:
            _TRITON = False
    return _TRITON


def _write_triton(
    buffer: StaticKVBuffer, chunk: PackedChunk, slot: int, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    from ragcompress.kv.fast._triton import rerotate_copy

    layers, n, h, d = chunk.keys.shape
    rerotate_copy(
        chunk.keys, chunk.values, buffer.ctx_keys, buffer.ctx_values, cos, sin,
        layers=layers, rows=n * h, dst_layer_stride=buffer.capacity * h * d, dst_offset=slot * h * d, head_dim=d,
    )  # fmt: skip
