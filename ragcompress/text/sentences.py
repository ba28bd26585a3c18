"""Query-aware extractive compression: keep the sentences most similar to the question.

Sentences of all passages compete for one budget (a passage with nothing relevant may lose
every sentence and be dropped). Similarity is the cosine between sentence-transformers
embeddings; sentence embeddings are cached per passage, so only the query is new work on
a repeated passage.

A kept sentence that opens by leaning on an earlier one ("It flows 1,230 km…") brings its
antecedent along (:mod:`ragcompress.text.referents`) within the budget, and ranks by the
better of its own similarity to the query and that of the pair (antecedent + sentence);
``referent_window`` bounds how far back the antecedent is looked for (0: sentences stand
alone). When the pair no longer fits the budget, the leaning sentence is skipped rather than
kept alone; lower-scoring sentences may then fill the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ragcompress.registry import register
from ragcompress.text.embedding import EmbeddingCompressor
from ragcompress.text.referents import antecedent_groups
from ragcompress.types import Budget, Passage

if TYPE_CHECKING:
    import numpy as np

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
        self._score_pairs(segments, groups, scores, q)
        return self._keep_best(passages, segments, scores, budget, tokens, groups=groups)

    def _score_pairs(
        self,
        segments: list[list[str]],
        groups: list[list[tuple[int, ...]]],
        scores: list[list[float]],
        q: np.ndarray,
    ) -> None:
        """Rank each leaning sentence by the better of its own similarity and its pair's.

        "It flows 1,230 km" alone names nothing the query asks about; read with the sentence
        naming its subject ("The Rhine rises…") it matches "How long is the Rhine?". A sentence
        that matches on its own words keeps that score (the pair's embedding dilutes it). Either
        way it is kept with its antecedent. Pair embeddings are cached per passage like
        sentences are. ``q``: the query embedding, shape (dim,).
        """
        pairs = [[(j, f"{segs[g[0]].strip()} {segs[j].strip()}") for j, g in enumerate(grp) if len(g) > 1]
                 for segs, grp in zip(segments, groups, strict=True)]  # fmt: skip
        wanted = [i for i, p in enumerate(pairs) if p]
        if not wanted:
            return
        embedded = self.sentence_embedder.embed_groups([[t for _, t in pairs[i]] for i in wanted])
        for i, emb in zip(wanted, embedded, strict=True):
            for (j, _), s in zip(pairs[i], (emb @ q).tolist(), strict=True):
                scores[i][j] = max(scores[i][j], s)
