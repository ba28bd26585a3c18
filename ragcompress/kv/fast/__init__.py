"""The GPU fast path: answer from cached chunks through a static KV buffer and CUDA graphs.

:class:`PackedChunk` is a chunk in the buffer's layout (packed once, when it enters the GPU
tier); :class:`FastGenerator` loads a prefix + chunks into its :class:`StaticKVBuffer` and runs
the question prefill and decode steps (a :class:`FusedStep` or an :class:`EagerStep`) as
captured graphs with cascade attention. With :class:`PagedPlacement` chunks live in a
:class:`ChunkPool` (or, in int4, an :class:`Int4ChunkPool`) instead and
:class:`PagedFastGenerator` reads them in place (zero-copy).
"""

from __future__ import annotations

from ragcompress.kv.fast.attention import CascadeAttention, FlashCascade, ReferenceCascade, StepMeta
from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.eager import EagerStep
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.fast.fused import FusedStep, default_step
from ragcompress.kv.fast.host import HostChunk
from ragcompress.kv.fast.packed import BufferChunk, PackedChunk, QuantizedPackedChunk
from ragcompress.kv.fast.paged_engine import PagedFastGenerator
from ragcompress.kv.fast.placement import CopyPlacement, PagedPlacement, Placement
from ragcompress.kv.fast.pool import ChunkPool, PoolFullError
from ragcompress.kv.fast.pool_int4 import Int4ChunkPool, Int8ChunkPool
from ragcompress.kv.fast.step import DecoderStep
from ragcompress.kv.fast.stored import StoredChunk
from ragcompress.kv.fast.write import write_batch, write_chunk

__all__ = [
    "BufferChunk",
    "BufferOverflowError",
    "CascadeAttention",
    "ChunkPool",
    "CopyPlacement",
    "DecoderStep",
    "EagerStep",
    "FastGenerator",
    "FlashCascade",
    "FusedStep",
    "HostChunk",
    "Int4ChunkPool",
    "Int8ChunkPool",
    "PackedChunk",
    "PagedFastGenerator",
    "PagedPlacement",
    "Placement",
    "PoolFullError",
    "QuantizedPackedChunk",
    "ReferenceCascade",
    "StaticKVBuffer",
    "StepMeta",
    "StoredChunk",
    "default_step",
    "write_batch",
    "write_chunk",
]
