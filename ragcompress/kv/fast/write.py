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
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.models.rope import Rotary

__all__ = ["gather", "triton_available", "write_batch", "write_chunk"]


def write_batch(
    buffer: StaticKVBuffer,
    prefix: BufferChunk,
    chunks: Sequence[BufferChunk | KVChunk],
    rotary: Rotary,
    resident: int = 0,
) -> int:
    """Reset the buffer and write prefix + chunks in order; returns the next position.

    ``resident``: how many leading items (the prefix counts as the first) the caller knows to
    be in the buffer already, at the slots and positions this request gives them: their slots
    are reserved, their bytes not rewritten.
    """
    items = [("prefix", prefix)] + [(f"chunk #{i}", _as_buffer_chunk(c)) for i, c in enumerate(chunks)]
    need = sum(c.num_tokens for _, c in items)
    if need > buffer.capacity:
        raise BufferOverflowError(
            f"prefix + {len(chunks)} chunks need {need} context slots; the buffer has {buffer.capacity}"
        )
    for what, c in items[resident:]:
        c.check(buffer, what)
    buffer.reset()
    for what, c in items[:resident]:
        buffer.reserve(c.num_tokens, c.length, what)
    rows = GatherRows(buffer)
    for what, c in items[resident:]:
        slot, pos = buffer.reserve(c.num_tokens, c.length, what)
        c.gather_into(rows, slot, pos - c.base_offset)
    gather(rows, rotary)
    buffer.commit()
    return buffer.next_position


def write_chunk(
    buffer: StaticKVBuffer, chunk: BufferChunk | KVChunk, rotary: Rotary, what: str = "chunk"
) -> int:
    """Append one chunk to the buffer's context (after what is there); returns its first slot."""
    c = _as_buffer_chunk(chunk)
    c.check(buffer, what)
    slot, pos = buffer.reserve(c.num_tokens, c.length, what)
    rows = GatherRows(buffer)
    c.gather_into(rows, slot, pos - c.base_offset)
    gather(rows, rotary)
    return slot


def gather(rows: GatherRows, rotary: Rotary, kernels: ModuleType | None = None) -> None:
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


def _kernel_runs(buffer: StaticKVBuffer, rotary: Rotary) -> bool:
    """The kernels rotate full-width keys in power-of-two halves, on CUDA, with Triton."""
    d = buffer.head_dim
    return (
        buffer.ctx_keys.device.type == "cuda"
        and rotary.rot_dim == d
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
