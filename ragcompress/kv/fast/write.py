"""Write chunks into the static buffer's context, re-rotating keys on the way.

Every key of a chunk moves by the same position delta (its new start minus its encoding
offset), so re-rotation is one (cos, sin) vector per chunk. In the buffer's token-major layout
a chunk of all layers is one contiguous block, so each write is ONE launch over the chunk's
bytes:

* :func:`write_chunk` — a bf16/fp16/fp32 :class:`PackedChunk` (our Triton kernel on CUDA, the
  torch reference elsewhere or for partial rotary);
* :func:`write_quantized_chunk` — a :class:`QuantizedPackedChunk`, through the fused
  dequantize + re-rotate kernel of :mod:`ragcompress.kv.kernels` (layers seen as heads);
* :func:`write_layers` — any stored :class:`~ragcompress.kv.chunk.KVChunk`, one launch per layer.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING

from ragcompress.kv.fast.buffer import StaticKVBuffer
from ragcompress.kv.fast.packed import PackedChunk, QuantizedPackedChunk

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.models.rope import Rotary

__all__ = ["write_chunk", "write_chunk_reference", "write_layers", "write_quantized_chunk"]


def write_chunk(buffer: StaticKVBuffer, chunk: PackedChunk, rotary: Rotary, what: str = "chunk") -> int:
    """Append ``chunk`` to the buffer's context; returns the slot it starts at."""
    _check(buffer, chunk, what)
    slot, pos = buffer.reserve(chunk.num_tokens, chunk.length, what)
    if chunk.num_tokens == 0:
        return slot
    cos, sin = rotary.cos_sin_of(pos - chunk.base_offset, chunk.keys.device)
    if chunk.keys.device.type == "cuda" and rotary.rot_dim == chunk.keys.shape[-1] and triton_available():
        from ragcompress.kv.fast._triton import rerotate_copy

        n, layers, h, d = chunk.keys.shape
        rerotate_copy(
            chunk.keys,
            chunk.values,
            buffer.ctx_keys,
            buffer.ctx_values,
            cos,
            sin,
            rows=n * layers * h,
            dst_offset=slot * layers * h * d,
            head_dim=d,
        )
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


def write_quantized_chunk(
    buffer: StaticKVBuffer, chunk: QuantizedPackedChunk, rotary: Rotary, what: str = "chunk"
) -> int:
    """Dequantize + re-rotate a quantized chunk into the context in one launch."""

    from ragcompress.kv import kernels

    h = buffer.kv_heads
    if (
        chunk.layers != buffer.layers
        or chunk.kv.kv_heads != chunk.layers * h
        or chunk.kv.head_dim != buffer.head_dim
    ):
        raise ValueError(
            f"{what} has {chunk.layers} layers / {chunk.kv.kv_heads} stacked heads of {chunk.kv.head_dim}; "
            f"the buffer {buffer.layers} layers of {h} heads of {buffer.head_dim}"
        )
    if rotary.rot_dim != buffer.head_dim:
        raise ValueError("partial rotary needs the dense path (PackedChunk)")
    slot, pos = buffer.reserve(chunk.num_tokens, chunk.length, what)
    dk, dv = _as_heads(buffer)
    dev = buffer.ctx_keys.device
    kernels.write_quantized(
        chunk.kv, dk, dv, slot, _delta(pos - chunk.base_offset, dev), _inv_freq(rotary, dev)
    )
    return slot


def write_layers(buffer: StaticKVBuffer, chunk: KVChunk, rotary: Rotary, what: str = "chunk") -> int:
    """Append a stored :class:`~ragcompress.kv.chunk.KVChunk` (dense or quantized layers) layer
    by layer through :mod:`ragcompress.kv.kernels`: the generic path, one launch per layer."""

    from ragcompress.kv import kernels

    if len(chunk.layers) != buffer.layers or (chunk.kv_heads, chunk.head_dim) != (
        buffer.kv_heads,
        buffer.head_dim,
    ):
        raise ValueError(
            f"{what} has {len(chunk.layers)} layers of ({chunk.kv_heads}, {chunk.head_dim}) heads; "
            "the buffer "
            f"{buffer.layers} of ({buffer.kv_heads}, {buffer.head_dim})"
        )
    if rotary.rot_dim != buffer.head_dim:
        raise ValueError("partial rotary needs the dense path (PackedChunk)")
    slot, pos = buffer.reserve(chunk.num_tokens, chunk.length, what)
    dev = buffer.ctx_keys.device
    delta = _delta(pos - chunk.base_offset, dev)
    inv_freq = _inv_freq(rotary, dev)
    for li, layer in enumerate(chunk.layers):
        # (capacity, kv_heads, d) seen as the kernels' (1, kv_heads, capacity, d): strides, no copy
        dk = buffer.ctx_keys[:, li].permute(1, 0, 2)[None]
        dv = buffer.ctx_values[:, li].permute(1, 0, 2)[None]
        quant = getattr(layer, "quantized_kv", None)
        if quant is not None:
            kernels.write_quantized(quant(), dk, dv, slot, delta, inv_freq)
        else:
            k, v, _ = layer.dense()
            kernels.write_dense(k.to(dev), v.to(dev), dk, dv, slot, delta, inv_freq)
    return slot


def _as_heads(buffer: StaticKVBuffer) -> tuple[torch.Tensor, torch.Tensor]:
    """The context as (1, layers * kv_heads, capacity, head_dim) strided views (no copy)."""
    c, layers, h, d = buffer.ctx_keys.shape
    dk = buffer.ctx_keys.view(c, layers * h, d).permute(1, 0, 2)[None]
    dv = buffer.ctx_values.view(c, layers * h, d).permute(1, 0, 2)[None]
    return dk, dv


_DELTAS: dict[tuple[int, str], torch.Tensor] = {}


def _delta(value: int, dev: torch.device) -> torch.Tensor:
    """A device scalar per delta, made once: creating it per write would be a blocking copy."""
    import torch

    key = (value, str(dev))
    hit = _DELTAS.get(key)
    if hit is None:
        if len(_DELTAS) > 65536:
            _DELTAS.clear()
        hit = _DELTAS[key] = torch.tensor(value, dtype=torch.long, device=dev)
    return hit


def _inv_freq(rotary: Rotary, dev: torch.device) -> torch.Tensor:
    import torch

    return rotary.module.inv_freq.to(device=dev, dtype=torch.float32)  # type: ignore[no-any-return]


def _check(buffer: StaticKVBuffer, chunk: PackedChunk, what: str) -> None:
    want = (buffer.layers, buffer.kv_heads, buffer.head_dim)
    got = tuple(chunk.keys.shape[1:])
    if got != want:
        raise ValueError(f"{what} has (layers, kv_heads, head_dim) = {got}, the buffer {want}")
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
    buffer.ctx_keys[slot : slot + n].copy_(torch.cat(parts, dim=-1))
    buffer.ctx_values[slot : slot + n].copy_(chunk.values)


@functools.cache
def triton_available() -> bool:
    """Whether triton imports here (the fused CUDA kernels need it; CPU paths never do)."""
    return importlib.util.find_spec("triton") is not None
