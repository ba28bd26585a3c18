"""Query-agnostic redundancy removal: drop what nearly repeats something said earlier.

Retrieval often returns overlapping passages (mirrors, quotes, boilerplate). Each unit (a
sentence for ``redundancy``, a whole passage for ``dedup-passages``) gets a redundancy score,
its highest cosine similarity to any earlier unit in reading order, computed from the same
cached sentence embeddings that ``sentences`` uses.

How the budget applies: units whose score reaches ``threshold`` are always dropped (the first
occurrence stays). The budget is a ceiling: the default ``ratio=1.0`` removes near-duplicates
only; a tighter budget then drops the most redundant remaining units first (so on text with
no repetition it degrades to dropping the units most similar to earlier ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from ragcompress.registry import register
from ragcompress.text.embedding import EmbeddingCompressor
from ragcompress.types import Budget, Passage

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PassageDeduplicator", "RedundancyFilter", "max_similarity_to_earlier"]


def max_similarity_to_earlier(vecs: np.ndarray, block: int = 1024) -> np.ndarray:
    """For unit-norm rows ``vecs`` (n, dim): each row's max cosine to an earlier row, shape (n,).

    The first row gets -1. Computed in row blocks so memory stays O(block * n).
    """
    import numpy as np

    n = vecs.shape[0]
    out = np.full(n, -1.0, dtype=np.float32)
    for start in range(1, n, block):
        stop = min(n, start + block)
        sims = vecs[start:stop] @ vecs[:stop].T  # (stop - start, stop)
        rows = np.arange(stop - start)[:, None]
        sims[np.arange(stop)[None, :] >= rows + start] = -1.0  # only earlier rows count
        out[start:stop] = sims.max(axis=1)
    return out


def _check_threshold(threshold: float) -> None:
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold is a cosine similarity in (0, 1], got {threshold}")


@dataclass
class _NearDuplicateFilter(EmbeddingCompressor):
    """Shared configuration: ``threshold`` is the cosine similarity at which a unit counts as a
    near-duplicate of an earlier one; ``ratio`` 1.0 drops only duplicates."""

    query_aware: ClassVar[bool] = False

    ratio: Annotated[float, Field(gt=0, le=1)] = 1.0
    threshold: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_threshold(self.threshold)


@register("redundancy")
@dataclass
class RedundancyFilter(_NearDuplicateFilter):
    """Drop sentences whose cosine similarity to an earlier sentence (any passage) >= ``threshold``."""

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        import numpy as np

        segments, embeddings = self._segments_and_embeddings(passages)
        redundancy = max_similarity_to_earlier(np.concatenate(embeddings))
        scores: list[list[float]] = []
        excluded: list[list[bool]] = []
        offset = 0
        for e in embeddings:
            r = redundancy[offset : offset + len(e)]
            offset += len(e)
            scores.append((-r).tolist())
            excluded.append((r >= self.threshold - 1e-6).tolist())
        return self._keep_best(
            passages,
            segments,
            scores,
            budget,
            tokens,
            excluded=excluded,
            excluded_reason=f"nearly duplicates an earlier sentence (cosine >= {self.threshold})",
        )


@register("dedup-passages")
@dataclass
class PassageDeduplicator(_NearDuplicateFilter):
    """Drop whole passages whose mean sentence embedding nearly equals an earlier passage's."""

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        import numpy as np

        _, embeddings = self._segments_and_embeddings(passages)
        means = np.stack([e.mean(axis=0) for e in embeddings])
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        redundancy = max_similarity_to_earlier(means)
        excluded = [[bool(r >= self.threshold - 1e-6)] for r in redundancy]
        for i, (p, ex) in enumerate(zip(passages, excluded, strict=False)):
            if ex[0]:
                sims = means[:i] @ means[i]
                j = int(sims.argmax())
                self._drop(p, f"near-duplicate of passage {passages[j].id!r} (cosine {sims[j]:.3f})")
        return self._keep_best(
            passages,
            [[p.text] for p in passages],
            [[-float(r)] for r in redundancy],
            budget,
            tokens,
            unit="passage",
            excluded=excluded,
        )
