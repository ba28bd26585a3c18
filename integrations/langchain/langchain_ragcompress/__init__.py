"""LangChain integration of ragcompress: a document compressor that keeps document identity,
a Runnable and a chat model that answer from the documents' cached KV chunks."""

from __future__ import annotations

from langchain_ragcompress.chains import create_kv_documents_chain
from langchain_ragcompress.chat import ChatRagCompress
from langchain_ragcompress.compressor import STATS_KEY, RagCompressDocumentCompressor
from langchain_ragcompress.kv import RagCompressKVChain

__all__ = [
    "STATS_KEY",
    "ChatRagCompress",
    "RagCompressDocumentCompressor",
    "RagCompressKVChain",
    "create_kv_documents_chain",
]
