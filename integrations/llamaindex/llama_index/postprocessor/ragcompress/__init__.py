"""LlamaIndex integration of ragcompress: a node postprocessor that keeps node identity."""

from __future__ import annotations

from llama_index.postprocessor.ragcompress.base import STATS_KEY, RagCompressNodePostprocessor

__all__ = ["STATS_KEY", "RagCompressNodePostprocessor"]
