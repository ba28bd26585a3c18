"""LlamaIndex integration of ragcompress: a node postprocessor that keeps node identity,
and a response synthesizer that answers from the nodes' cached KV chunks."""

from __future__ import annotations

from llama_index.postprocessor.ragcompress.base import STATS_KEY, RagCompressNodePostprocessor
from llama_index.postprocessor.ragcompress.kv import RagCompressKVSynthesizer

__all__ = ["STATS_KEY", "RagCompressKVSynthesizer", "RagCompressNodePostprocessor"]
