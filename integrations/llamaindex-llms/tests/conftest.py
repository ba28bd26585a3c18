"""Fixtures for the LlamaIndex LLM tests: a tiny seeded Llama behind a real Generator, and a
real ``BaseEmbedding`` over the packaged MiniLM."""

from __future__ import annotations

import os

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding

from ragcompress.generate import Generator

# No model hub here: the packaged models load from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def embed_model() -> MiniLMEmbedding:
    return MiniLMEmbedding()


@pytest.fixture(scope="module")
def generator() -> Generator:
    """The packaged reader's tokenizer (and chat template) over a tiny random Llama: answers
    depend on the whole prompt, so a lost turn or chunk shows up in the text."""
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    return Generator.from_model(
        make_tiny_llama(len(tok), seed=0, initializer_range=0.2), tok, max_new_tokens=8
    )
