"""LlamaIndex LLM integration of ragcompress: the reader as ``Settings.llm``, in query and chat
engines, answering from prompts (text path) or from passages as cached KV chunks (KV path)."""

from __future__ import annotations

from llama_index.llms.ragcompress.base import RagCompressLLM

__all__ = ["RagCompressLLM"]
