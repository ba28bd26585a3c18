"""The text-compressor contract and the shared machinery behind it.

Every text compressor is a registered dataclass deriving from :class:`TextCompressor`.
Subclasses implement ``_compress(passages, query, budget)`` on clean input; the base
class validates input, drops empty passages with a reason, counts tokens and records
statistics, so every method behaves the same at the edges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ragcompress.registry import spec_of
from ragcompress.types import Budget, CompressionStats, Passage, validate_passages

__all__ = ["TextCompressor", "CompressionResult", "BudgetError", "TokenCounter"]


class BudgetError(ValueError):
    """The requested budget cannot be met (e.g. it is smaller than any unit that can be kept)."""


@dataclass(frozen=True, slots=True)
class CompressionResult:
    passages: list[Passage]
    stats: CompressionStats


@dataclass
class TokenCounter:
    """Counts tokens with a reader's tokenizer (alias, path or HF id; loaded lazily, shared)."""

    tokenizer: str | None = None

    def __call__(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        from ragcompress.models import load_tokenizer

        tok = load_tokenizer(self.tokenizer)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def many(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many texts in one batched tokenizer call."""
        if not texts:
            return []
        from ragcompress.models import load_tokenizer

        tok = load_tokenizer(self.tokenizer)
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass
class TextCompressor:
    """Base of all text compressors: maps passages to passages, keeping id, score and metadata.

    ``ratio`` is the default share of tokens to keep; a ``budget`` passed to ``compress``
    overrides it. ``tokenizer`` names the tokenizer that counts tokens (the reader's, by default).
    """

    query_aware: ClassVar[bool] = True
    registered_name: ClassVar[str]

    ratio: float = 0.5
    tokenizer: str | None = None
    _counter: TokenCounter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        Budget(ratio=self.ratio)  # validates the range with the one shared error message
        self._counter = TokenCounter(self.tokenizer)

    # -- public API --------------------------------------------------------------------
    def compress(
        self,
        passages: Sequence[Passage] | Sequence[str],
        query: str = "",
        budget: Budget | float | int | None = None,
    ) -> list[Passage]:
        """Compressed passages: a subset of the inputs, in input order, with the same ids."""
        return self.compress_with_stats(passages, query, budget).passages

    def compress_with_stats(
        self,
        passages: Sequence[Passage] | Sequence[str],
        query: str = "",
        budget: Budget | float | int | None = None,
    ) -> CompressionResult:
        start = time.perf_counter()
        clean = validate_passages(passages)
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        budget = Budget.coerce(budget, default_ratio=self.ratio)
        dropped: dict[str, str] = {}
        kept_in: list[Passage] = []
        for p in clean:
            if p.text.strip():
                kept_in.append(p)
            else:
                dropped[p.id] = "empty passage"
        before = self._counter.many([p.text for p in kept_in])
        tokens_before = sum(before)
        out: list[Passage] = []
        if kept_in:
            out = self._compress(kept_in, query, budget, before)
        after = self._counter.many([p.text for p in out])
        out_ids = {p.id for p in out}
        for p in kept_in:
            if p.id not in out_ids:
                dropped.setdefault(p.id, "nothing kept within the budget")
        stats = CompressionStats(
            compressor=self.registered_name,
            tokens_before=tokens_before,
            tokens_after=sum(after),
            passages_before=len(clean),
            passages_after=len(out),
            latency_ms=(time.perf_counter() - start) * 1e3,
            dropped=dropped,
        )
        return CompressionResult(out, stats)

    def spec(self) -> dict[str, Any]:
        """JSON-able configuration; ``ragcompress.build(c.spec())`` rebuilds an equal compressor."""
        return spec_of(self)

    # -- for subclasses ----------------------------------------------------------------
    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        """Compress non-empty passages; ``tokens[i]`` is the token count of ``passages[i]``."""
        raise NotImplementedError
