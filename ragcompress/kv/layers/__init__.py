"""Chunk layers beyond the dense one: each registers its class name, under which stores rebuild it.

Importing this package registers ``quantized`` and ``lowrank``.
"""

from __future__ import annotations

from ragcompress.kv.layers.lowrank import LowRankLayer
from ragcompress.kv.layers.quantized import QuantizedLayer

__all__ = ["LowRankLayer", "QuantizedLayer"]
