"""The GPU fast path: answer from cached chunks through a static KV buffer and CUDA graphs.

:class:`PackedChunk` is a chunk in the buffer's layout (packed once, when it enters the GPU
tier); :class:`FastGenerator` loads a prefix + chunks into its :class:`StaticKVBuffer` and runs
the question prefill and decode steps as captured graphs with cascade attention.
"""

from __future__ import annotations

from ragcompress.kv.fast.attention import CascadeAttention, FlashCascade, ReferenceCascade, StepMeta
from ragcompress.kv.fast.buffer import BufferOverflowError, StaticKVBuffer
from ragcompress.kv.fast.engine import FastGenerator
from ragcompress.kv.fast.forward import DecoderStep
from ragcompress.kv.fast.packed import PackedChunk, QuantizedPackedChunk
from ragcompress.kv.fast.write import write_chunk, write_chunk_reference, write_layers, write_quantized_chunk

__all__ = [
    "BufferOverflowError",
    "CascadeAttention",
    "DecoderStep",
    "FastGenerator",
    "FlashCascade",
    "PackedChunk",
    "QuantizedPackedChunk",
    "ReferenceCascade",
    "StaticKVBuffer",
    "StepMeta",
    "write_chunk",
    "write_chunk_reference",
    "write_layers",
    "write_quantized_chunk",
]
