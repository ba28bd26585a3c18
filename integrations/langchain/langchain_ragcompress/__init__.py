"""LangChain integration of ragcompress: a document compressor that keeps document identity,
and a Runnable that answers from the documents' cached KV chunks."""

from __future__ import annotations

from langchain_ragcompress.compressor import STATS_KEY, RagCompressDocumentCompressor
from langchain_ragcompress.kv import RagCompressKVChain

__all__ = ["STATS_KEY", "RagCompressDocumentCompressor", "RagCompressKVChain"]
