"""Write a request's prefix + chunks into the static buffer with one launch per chunk kind.

:func:`write_batch` reserves every chunk's slots first (so a request that does not fit fails
before any byte is written), then writes all bf16/fp16 chunks with one launch of the dense
gather kernel and all quantized chunks (per bits/group) with one launch of the quantized one
(:mod:`ragcompress.kv.fast._gather`). Off CUDA, without Triton, or for what the kernels do not
cover (partial rotary, a dtype other than the buffer's, stored :class:`KVChunk`), it takes the
per-chunk writers of :mod:`ragcompress.kv.fast.write`: same result, one launch per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.packed import PackedChunk, QuantizedPackedChunk
from ragcompress.kv.fast.write import (
    _check,
    _inv_freq,
    triton_available,
    write_chunk,
    write_layers,
    write_quantized_chunk,
)

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.models.rope import Rotary

__all__ = ["write_batch"]

Chunk = PackedChunk | QuantizedPackedChunk


def write_batch(
    buffer: StaticKVBuffer,
    prefix: PackedChunk,
    chunks: Sequence[PackedChunk | QuantizedPackedChunk | KVChunk],
    rotary: Rotary,
    resident: int = 0,
) -> int:
    """Reset the buffer and write prefix + chunks in order; returns the next position.

    ``resident``: how many leading items (the prefix counts as the first) the caller knows to
    be in the buffer already, at the slots and positions this request gives them: their slots
    are reserved, their bytes not rewritten.
    """
    need = prefix.num_tokens + sum(c.num_tokens for c in chunks)
    if need > buffer.capacity:
        raise BufferOverflowError(
            f"prefix + {len(chunks)} chunks need {need} context slots; the buffer has {buffer.capacity}"
        )
    buffer.reset()
    items: list[tuple[str, PackedChunk | QuantizedPackedChunk | KVChunk]] = [("prefix", prefix)]
    items += [(f"chunk #{i}", c) for i, c in enumerate(chunks)]
    for what, c in items[:resident]:
        buffer.reserve(c.num_tokens, c.length, what)
    items = items[resident:]
    if _batchable(buffer, items, rotary):
        _write_gathered(buffer, items, rotary)  # type: ignore[arg-type]
    else:
        for what, c in items:
            if isinstance(c, PackedChunk):
                write_chunk(buffer, c, rotary, what)
            elif isinstance(c, QuantizedPackedChunk):
                write_quantized_chunk(buffer, c, rotary, what)
            else:
                write_layers(buffer, c, rotary, what)
    buffer.commit()
    return buffer.next_position


def _batchable(buffer: StaticKVBuffer, items: Sequence[tuple[str, object]], rotary: Rotary) -> bool:
    dev = buffer.ctx_keys.device
    d = buffer.head_dim
    if dev.type != "cuda" or rotary.rot_dim != d or d & (d - 1) or not triton_available():
        return False
    for _, c in items:
        if isinstance(c, PackedChunk):
            if c.keys.dtype != buffer.ctx_keys.dtype or c.keys.device != dev:
                return False
        elif isinstance(c, QuantizedPackedChunk):
            if c.kv.key_codes.device != dev or c.kv.key_scale.dtype != c.kv.value_zero.dtype:
                return False
        else:
            return False
    return True


def _write_gathered(
    buffer: StaticKVBuffer, items: list[tuple[str, Chunk]], rotary: Rotary, kernels: Any = None
) -> None:
    """``kernels``: the :mod:`~ragcompress.kv.fast._gather` module (tests pass an interpreted copy)."""
    if kernels is None:
        from ragcompress.kv.fast import _gather as kernels

    dev = buffer.ctx_keys.device
    lh = buffer.layers * buffer.kv_heads
    d = buffer.head_dim
    dense: list[list[int]] = []
    quant: dict[tuple[int, int], list[tuple[QuantizedPackedChunk, int, int]]] = {}
    for what, c in items:
        if isinstance(c, PackedChunk):
            _check(buffer, c, what)
        else:
            _check_quantized(buffer, c, what)
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        if c.num_tokens == 0:
            continue
        delta = pos - c.base_offset
        if isinstance(c, PackedChunk):
            base = buffer.ctx_keys
            dense.append(
                [_offset(c.keys, base), _offset(c.values, base), c.num_tokens * lh, slot * lh, delta]
            )
        else:
            quant.setdefault((c.kv.bits, c.kv.group), []).append((c, slot, delta))
    freq = _inv_freq(rotary, dev).contiguous()
    if dense:
        kernels.gather_dense(
            buffer.ctx_keys, buffer.ctx_keys, buffer.ctx_values, _upload(dense, dev), freq,
            max(r[2] for r in dense), d,
        )  # fmt: skip
    for (bits, group), group_items in quant.items():
        codes, scales = group_items[0][0].kv.key_codes, group_items[0][0].kv.key_scale
        rows = []
        for c, slot, delta in group_items:
            kv = c.kv
            rows.append(
                [
                    _offset(kv.key_codes, codes),
                    _offset(kv.key_scale, scales),
                    _offset(kv.key_zero, scales),
                    _offset(kv.value_codes, codes),
                    _offset(kv.value_scale, scales),
                    _offset(kv.value_zero, scales),
                    c.num_tokens,
                    slot,
                    delta,
                ]
            )
        kernels.gather_quantized(
            codes, scales, buffer.ctx_keys, buffer.ctx_values, _upload(rows, dev), freq, lh,
            max(r[6] for r in rows), d, bits, group,
        )  # fmt: skip


def _check_quantized(buffer: StaticKVBuffer, c: QuantizedPackedChunk, what: str) -> None:
    h = buffer.kv_heads
    kv = c.kv
    if c.layers != buffer.layers or kv.kv_heads != c.layers * h or kv.head_dim != buffer.head_dim:
        raise ValueError(
            f"{what} has {c.layers} layers / {kv.kv_heads} stacked heads of {kv.head_dim}; "
            f"the buffer {buffer.layers} layers of {h} heads of {buffer.head_dim}"
        )
    parts = (kv.key_codes, kv.key_scale, kv.key_zero, kv.value_codes, kv.value_scale, kv.value_zero)
    for t in parts:
        if not t.is_contiguous():
            raise ValueError(f"{what}: quantized tensors must be contiguous")


def _offset(t: torch.Tensor, base: torch.Tensor) -> int:
    """Element offset of ``t`` from ``base`` (same dtype): how the kernel reaches ``t``."""
    diff = t.data_ptr() - base.data_ptr()
    size = t.element_size()
    if t.dtype != base.dtype or diff % size:
        raise ValueError(f"cannot address a {t.dtype} tensor from a {base.dtype} base")
    return diff // size


def _upload(rows: list[list[int]], dev: torch.device) -> torch.Tensor:
    """The table on the device without blocking the host: pinned (cached by torch's host
    allocator, which keeps a block until the copy that reads it is done), then async."""
    import torch

    table = torch.tensor(rows, dtype=torch.long)
    if dev.type != "cuda":
        return table.to(dev)
    return table.pin_memory().to(dev, non_blocking=True)
