"""LangChain integration of ragcompress: a document compressor that keeps document identity."""

from __future__ import annotations

from langchain_ragcompress.compressor import STATS_KEY, RagCompressDocumentCompressor

__all__ = ["STATS_KEY", "RagCompressDocumentCompressor"]
