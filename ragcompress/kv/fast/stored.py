"""A stored :class:`~ragcompress.kv.chunk.KVChunk` as the buffer takes it, without packing.

The chunk cache hands the fast answerer :class:`KVChunk` objects (one tensor set per layer, in
whatever layer class the presses left: dense, quantized, low-rank). Packing them per request
would copy every byte once more; instead each layer adds its own entry to the gather, so all
layers of all chunks still go in one launch per form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragcompress.kv.fast.packed import BufferChunk

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.fast.buffer import StaticKVBuffer
    from ragcompress.kv.fast.rows import GatherRows

__all__ = ["StoredChunk"]


@dataclass(frozen=True, eq=False)
class StoredChunk(BufferChunk):
    """``chunk``'s layers written one entry each: quantized layers as quantized heads
    (dequantized by the kernel), any other layer through its ``dense()`` keys/values."""

    chunk: KVChunk
    length: int
    base_offset: int

    @classmethod
    def of(cls, chunk: KVChunk) -> StoredChunk:
        return cls(chunk, chunk.length, chunk.base_offset)

    @property
    def num_tokens(self) -> int:
        return int(self.chunk.num_tokens)

    def slot_positions(self) -> torch.Tensor:
        from ragcompress.kv.fast.packed import held_positions

        return held_positions(self.chunk.layers)

    def check(self, buffer: StaticKVBuffer, what: str) -> None:
        c = self.chunk
        got = (len(c.layers), c.kv_heads, c.head_dim)
        want = (buffer.layers, buffer.kv_heads, buffer.head_dim)
        if got != want:
            raise ValueError(f"{what} has (layers, kv_heads, head_dim) = {got}; the buffer {want}")

    def gather_into(self, rows: GatherRows, slot: int, delta: int) -> None:
        self.gather_layers(rows, slot, delta, range(len(self.chunk.layers)))

    def gather_layers(self, rows: GatherRows, slot: int, delta: int, layers: Sequence[int]) -> bool:
        from ragcompress.kv.fast.layer_plan import DenseBlock, dense_plan

        buf = rows.buffer
        stacked = buf.layers * buf.kv_heads
        wanted = sorted(set(layers))
        plan = dense_plan(self.chunk, buf)
        if plan is not None:  # dense layers on the buffer's device: made ready once per chunk
            rows.blocks.append(DenseBlock(plan, tuple(wanted), slot, delta))
            return len(wanted) == len(self.chunk.layers)
        for li in wanted:
            layer = self.chunk.layers[li]
            head0 = li * buf.kv_heads
            quantized = getattr(layer, "quantized_kv", None)
            if quantized is not None:
                rows.add_quantized(quantized(), head0, slot, delta)
            else:
                # (kv_heads, n, d): kv_heads runs of n tokens, one token every `stacked` rows
                k, v, _ = layer.dense()
                rows.add_dense(k, v, slot * stacked + head0, int(k.shape[1]), stacked, delta)
        return len(wanted) == len(self.chunk.layers)
