"""A real LlamaIndex ``BaseEmbedding`` over the packaged MiniLM, shared by the tests of both
LlamaIndex partner packages (the postprocessor and the LLM)."""

from __future__ import annotations

from llama_index.core.base.embeddings.base import BaseEmbedding

__all__ = ["MiniLMEmbedding"]


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding over the packaged all-MiniLM-L6-v2 (normalized vectors)."""

    model_name: str = "all-minilm-l6-v2"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        from ragcompress.models.load import load_embedder

        vectors = load_embedder(self.model_name, device="cpu").encode(texts, normalize_embeddings=True)
        return [[float(x) for x in v] for v in vectors]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encode([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode(texts)
