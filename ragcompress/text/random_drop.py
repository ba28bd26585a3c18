"""The baseline: drop random sentences until the budget holds.

Benchmarks compare every method against it: a method that does not beat random sentence
selection at the same budget adds nothing. Seeded, and the draw depends only on the seed and
the number of sentences, so a call is deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from ragcompress.registry import register
from ragcompress.text.base import TextCompressor
from ragcompress.text.split import DEFAULT_LANGUAGE, check_language, segment_texts, split_sentences
from ragcompress.types import Budget, Passage

__all__ = ["RandomDrop"]


@register("random")
@dataclass
class RandomDrop(TextCompressor):
    """Keep a random subset of sentences within the budget (``seed`` fixes the draw)."""

    query_aware: ClassVar[bool] = False

    seed: int = 0
    language: str = DEFAULT_LANGUAGE  # of the texts, for the sentence splitter

    def __post_init__(self) -> None:
        super().__post_init__()
        check_language(self.language)

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        segments = [segment_texts(p.text, split_sentences(p.text, language=self.language)) for p in passages]
        rng = random.Random(self.seed)
        scores = [[rng.random() for _ in segs] for segs in segments]
        return self._keep_best(passages, segments, scores, budget, tokens)
