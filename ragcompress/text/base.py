"""The text-compressor contract and the shared machinery behind it.

Every text compressor is a registered dataclass deriving from :class:`TextCompressor`.
Subclasses implement ``_compress(passages, query, budget)`` on clean input; the base
class validates input, drops empty passages with a reason, counts tokens and records
statistics, so every method behaves the same at the edges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import Field

from ragcompress.registry import spec_of
from ragcompress.text.budget import BudgetError, TokenCounter
from ragcompress.text.select import keep_best
from ragcompress.types import Budget, CompressionStats, Passage, validate_passages

__all__ = ["BudgetError", "CompressionResult", "TextCompressor", "TokenCounter"]


@dataclass(frozen=True, slots=True)
class CompressionResult:
    passages: list[Passage]
    stats: CompressionStats
    steps: list[CompressionStats] = field(default_factory=list)  # per step, for a chain


@dataclass
class _CallState:
    """What a ``_compress`` call reports besides its passages (one per call, so thread-safe)."""

    dropped: dict[str, str] = field(default_factory=dict)
    steps: list[CompressionStats] = field(default_factory=list)


# A context variable rather than an attribute: the same compressor may run in several
# threads (or nested inside a chain) at once.
_STATE: ContextVar[_CallState | None] = ContextVar("ragcompress_text_call", default=None)


@dataclass
class TextCompressor:
    """Base of all text compressors: maps passages to passages, keeping id, score and metadata.

    ``ratio`` is the default share of tokens to keep; a ``budget`` passed to ``compress``
    overrides it. ``tokenizer`` names the tokenizer that counts tokens (the reader's, by default).
    """

    query_aware: ClassVar[bool] = True
    registered_name: ClassVar[str]

    # The constraint is what a spec is checked against (the registry names the field); the
    # Budget in __post_init__ checks objects built directly.
    ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
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
        state = _CallState(dropped)
        token = _STATE.set(state)
        try:
            if kept_in:
                out = self._compress(kept_in, query, budget, before)
        finally:
            _STATE.reset(token)
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
        return CompressionResult(out, stats, state.steps)

    def spec(self) -> dict[str, Any]:
        """JSON-able configuration; ``ragcompress.build(c.spec())`` rebuilds an equal compressor."""
        return spec_of(self)

    # -- for subclasses ----------------------------------------------------------------
    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        """Compress non-empty passages; ``tokens[i]`` is the token count of ``passages[i]``."""
        raise NotImplementedError

    def _keep_best(
        self,
        passages: list[Passage],
        segments: Sequence[Sequence[str]],
        scores: Sequence[Sequence[float]],
        budget: Budget,
        tokens: list[int],
        *,
        unit: str = "sentence",
        excluded: Sequence[Sequence[bool]] | None = None,
        excluded_reason: str = "excluded",
        groups: Sequence[Sequence[tuple[int, ...]]] | None = None,
    ) -> list[Passage]:
        """:func:`~ragcompress.text.select.keep_best` within ``budget`` (of the ``tokens`` the
        passages have together), counted with this compressor's tokenizer, every passage left
        empty recorded with its reason: what every extractive ``_compress`` ends with."""
        return keep_best(
            passages,
            segments,
            scores,
            budget.target(sum(tokens)),
            self._counter,
            tokens,
            unit=unit,
            excluded=excluded,
            drop=self._drop,
            excluded_reason=excluded_reason,
            groups=groups,
        )

    def _drop(self, passage: Passage | str, reason: str) -> None:
        """Record why ``passage`` (or the passage with this id) is left out (``CompressionStats.dropped``)."""
        state = _STATE.get()
        if state is not None:
            state.dropped.setdefault(passage if isinstance(passage, str) else passage.id, reason)

    def _record_step(self, stats: CompressionStats) -> None:
        """Record the stats of a nested compressor run (a chain's steps)."""
        state = _STATE.get()
        if state is not None:
            state.steps.append(stats)
