"""Query-aware extractive compression: keep the sentences most similar to the question.

Sentences of all passages compete for one budget (a passage with nothing relevant may lose
every sentence and be dropped). Similarity is the cosine between sentence-transformers
embeddings; sentence embeddings are cached per passage, so only the query is new work on
a repeated passage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ragcompress.registry import register
from ragcompress.text.embedding import EmbeddingCompressor
from ragcompress.types import Budget, Passage

__all__ = ["SentenceSelector"]


@register("sentences")
@dataclass
class SentenceSelector(EmbeddingCompressor):
    """Keep the sentences closest to the query within the budget, in their original order."""

    query_aware: ClassVar[bool] = True

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        if not query.strip():
            raise ValueError(
                "'sentences' ranks sentences by similarity to the query and needs a non-empty query; "
                "for query-agnostic compression use 'redundancy' or 'tokens'"
            )
        segments, embeddings = self._segments_and_embeddings(passages)
        q = self.sentence_embedder.encode([query])[0]  # (dim,)
        scores = [(e @ q).tolist() for e in embeddings]  # cosine: both sides are unit-norm
        return self._keep_best(passages, segments, scores, budget, tokens)
