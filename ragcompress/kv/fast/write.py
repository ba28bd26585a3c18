"""Write a request's prefix + chunks into the static buffer's context, keys re-rotated.

Every key of a chunk moves by the same position delta (its new start minus its encoding
offset). :func:`write_batch` checks every chunk and reserves its slots first (so a request
that does not fit fails before any byte is written), then each chunk adds its tensors to one
:class:`~ragcompress.kv.fast.rows.GatherRows` and one launch per form writes them all: the
Triton gather (:mod:`ragcompress.kv.fast._gather`) on CUDA, its torch reference
(:mod:`ragcompress.kv.fast.gather_reference`) elsewhere. Chunk kinds are
:class:`~ragcompress.kv.fast.packed.BufferChunk` subclasses; a stored
:class:`~ragcompress.kv.chunk.KVChunk` is taken as a :class:`~ragcompress.kv.fast.stored.StoredChunk`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.packed import BufferChunk
from ragcompress.kv.fast.rows import GatherRows
from ragcompress.kv.fast.stored import StoredChunk

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.tables import Rotaries

__all__ = ["gather", "triton_available", "write_batch", "write_chunk", "write_context", "write_positions"]


def write_batch(
    buffer: StaticKVBuffer,
    prefix: BufferChunk,
    chunks: Sequence[BufferChunk | KVChunk],
    rotary: Rotaries,
    resident: int = 0,
) -> int:
    """Reset the buffer and write prefix + chunks in order; returns the next position.

    ``resident``: how many leading items (the prefix counts as the first) the caller knows to
    be in the buffer already, at the slots and positions this request gives them: their slots
    are reserved, their bytes not rewritten.
    """
    items = [("prefix", prefix)] + [(f"chunk #{i}", _as_buffer_chunk(c)) for i, c in enumerate(chunks)]
    begin_write(buffer, items, resident)
    rows = GatherRows(buffer)
    writes = []
    for what, c in items[resident:]:
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        c.gather_into(rows, slot, pos - c.base_offset)
        writes.append((slot, pos - c.base_offset, c))
    gather(rows, rotary)
    write_positions(buffer, writes)
    buffer.commit()
    return buffer.next_position


def begin_write(
    buffer: StaticKVBuffer, items: Sequence[tuple[str, BufferChunk]], resident: int
) -> list[tuple[int, int]]:
    """Check that prefix + chunks (``items``: (name, chunk), the prefix first) fit and suit the
    buffer, reset it and reserve the ``resident`` leading items' slots (their bytes are there);
    returns their (first slot, first position)."""
    need = sum(c.num_tokens for _, c in items)
    if need > buffer.capacity:
        raise BufferOverflowError(
            f"prefix + {len(items) - 1} chunks need {need} context slots; the buffer has {buffer.capacity}"
        )
    for what, c in items[resident:]:
        c.check(buffer, what)
    buffer.reset()
    return [buffer.reserve(c.num_tokens, c.length, what) for what, c in items[:resident]]


def write_chunk(
    buffer: StaticKVBuffer, chunk: BufferChunk | KVChunk, rotary: Rotaries, what: str = "chunk"
) -> int:
    """Append one chunk to the buffer's context (after what is there); returns its first slot."""
    c = _as_buffer_chunk(chunk)
    c.check(buffer, what)
    slot, pos = buffer.reserve(c.num_tokens, c.length, what)
    rows = GatherRows(buffer)
    c.gather_into(rows, slot, pos - c.base_offset)
    gather(rows, rotary)
    write_positions(buffer, [(slot, pos - c.base_offset, c)])
    return slot


def write_context(
    buffer: StaticKVBuffer,
    layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
    position: int,
    positions: torch.Tensor | None = None,
) -> int:
    """Reset the buffer and write a context assembled elsewhere as is: per layer keys/values
    (kv_heads, n, head_dim), keys already at their positions; ``positions`` (n,) int64 each
    slot's logical position (kept where the buffer keeps them). Returns ``position``, where the
    question starts."""
    import torch

    n = int(layers[0][0].shape[1])
    buffer.reset()
    buffer.reserve(n, n, "assembled context")
    keys = torch.stack([k.transpose(0, 1) for k, _ in layers], dim=1)  # (n, layers, kv_heads, d)
    values = torch.stack([v.transpose(0, 1) for _, v in layers], dim=1)
    buffer.ctx_keys[:n].copy_(keys)
    buffer.ctx_values[:n].copy_(values)
    if positions is not None and buffer.positions:
        buffer.ctx_pos[:n].copy_(positions)
    buffer.next_position = position
    buffer.commit()
    return position


def write_positions(buffer: StaticKVBuffer, writes: Sequence[tuple[int, int, BufferChunk]]) -> None:
    """Each written slot's logical position into ``buffer.ctx_pos`` (when the buffer keeps them):
    ``writes`` (first slot, position delta, chunk) for consecutive chunks. Slots of chunks with
    consecutive positions are filled by one device op from a small host table (a host-to-device
    copy per chunk would wait for the writes queued before it); chunks that know their kept
    positions (evicting presses) copy theirs."""
    import torch

    if not buffer.positions or not writes:
        return
    dev = buffer.ctx_pos.device
    first = writes[0][0]
    counts = [c.num_tokens for _, _, c in writes]
    total = sum(counts)
    # slot s of chunk c (first slot f) holds position base + delta + (s - f)
    shift = [c.base_offset + d - (s - first) for s, d, c in writes]
    host = torch.tensor([shift, counts], dtype=torch.long)
    table = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host.to(dev)
    offsets = torch.repeat_interleave(table[0], table[1], output_size=total)
    buffer.ctx_pos[first : first + total] = torch.arange(total, device=dev) + offsets
    for s, d, c in writes:
        kept = c.slot_positions()
        if kept is not None:
            buffer.ctx_pos[s : s + c.num_tokens] = kept.to(dev, torch.long) + d


def gather(rows: GatherRows, rotary: Rotaries, kernels: ModuleType | None = None) -> None:
    """Write ``rows`` through the Triton gather where it runs, else the torch reference.

    ``kernels``: the :mod:`~ragcompress.kv.fast._gather` module to use (tests pass a copy
    running in Triton's interpreter); given, it is used whatever the device.
    """
    if kernels is None and _kernel_runs(rows.buffer, rotary):
        from ragcompress.kv.fast import _gather as kernels
    if kernels is not None:
        kernels.gather(rows, rotary)
    else:
        from ragcompress.kv.fast.gather_reference import gather_reference

        gather_reference(rows, rotary)


def _kernel_runs(buffer: StaticKVBuffer, rotary: Rotaries) -> bool:
    """The kernels rotate full-width keys in power-of-two halves, on CUDA, with Triton."""
    d = buffer.head_dim
    tables = list(rotary) if isinstance(rotary, Sequence) else [rotary]
    return (
        buffer.ctx_keys.device.type == "cuda"
        and all(r.rot_dim == d for r in tables)
        and d & (d - 1) == 0
        and triton_available()
    )


def _as_buffer_chunk(chunk: Any) -> BufferChunk:
    """The one place a chunk's class is looked at: a stored chunk is written layer by layer."""
    return chunk if isinstance(chunk, BufferChunk) else StoredChunk.of(chunk)


@functools.cache
def triton_available() -> bool:
    """Whether triton imports here (the fused CUDA kernels need it; CPU paths never do)."""
    return importlib.util.find_spec("triton") is not None
