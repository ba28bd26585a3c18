"""KV presses: query-agnostic compressors of one layer of one chunk, registered by name.

Importing this package registers every press (``knorm``, ``window``, ``observed``,
``kvzip``, ``quantize``, ``lowrank``, ``compose``) and the compressed layer classes (``quantized``,
``lowrank``) that stores rebuild chunks with.
"""

from __future__ import annotations

from ragcompress.kv.layers.lowrank import LowRankLayer
from ragcompress.kv.layers.lowrank_basis import LowRankBasis
from ragcompress.kv.layers.quantized import QuantizedLayer
from ragcompress.kv.presses.base import EvictionPress, kept_count
from ragcompress.kv.presses.compose import ComposedPress
from ragcompress.kv.presses.knorm import KnormPress
from ragcompress.kv.presses.kvzip import KVzipPress
from ragcompress.kv.presses.lowrank import LowRankPress
from ragcompress.kv.presses.observed import ObservedAttentionPress
from ragcompress.kv.presses.quantize import QuantizePress
from ragcompress.kv.presses.window import WindowPress

__all__ = [
    "ComposedPress",
    "EvictionPress",
    "KVzipPress",
    "KnormPress",
    "LowRankBasis",
    "LowRankLayer",
    "LowRankPress",
    "ObservedAttentionPress",
    "QuantizePress",
    "QuantizedLayer",
    "WindowPress",
    "kept_count",
]
