"""Query-aware extractive compression: keep the sentences most similar to the question.

Sentences of all passages compete for one budget (a passage with nothing relevant may lose
every sentence and be dropped). Similarity is the cosine between sentence-transformers
embeddings; sentence embeddings are cached per passage, so only the query is new work on
a repeated passage.

A kept sentence that opens by leaning on an earlier one ("It flows 1,230 km…") brings its
antecedent along (:mod:`ragcompress.text.referents`) within the budget, and ranks at least as
high as that antecedent (it is about the same subject, though it does not name it);
``referent_window`` bounds how far back the antecedent is looked for (0: sentences stand
alone). When the pair no longer fits the budget, the leaning sentence is skipped rather than
kept alone; lower-scoring sentences may then fill the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ragcompress.registry import register
from ragcompress.text.embedding import EmbeddingCompressor
from ragcompress.text.referents import antecedent_groups
from ragcompress.types import Budget, Passage

__all__ = ["SentenceSelector"]


@register("sentences")
@dataclass
class SentenceSelector(EmbeddingCompressor):
    """Keep the sentences closest to the query within the budget, in their original order.

    ``referent_window``: how far back (in sentences of the same passage) the antecedent of a
    sentence that opens with a referring word (It, They, This, …; table per language in
    :mod:`ragcompress.text.referents`) is looked for; that one sentence is kept with it.
    0 keeps every sentence on its own.
    """

    query_aware: ClassVar[bool] = True

    referent_window: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.referent_window < 0:
            raise ValueError(f"referent_window must be >= 0, got {self.referent_window}")

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
        groups = [antecedent_groups(segs, self.referent_window, self.language) for segs in segments]
        for score, group in zip(scores, groups, strict=True):
            for j, members in enumerate(group):
                # "It flows 1,230 km" names nothing the query asks about; it is about its
                # antecedent's subject, so it ranks at least as high as the antecedent does.
                score[j] = max(score[j], score[members[0]])
        return self._keep_best(passages, segments, scores, budget, tokens, groups=groups)
