"""Several text compressors applied in sequence, itself a text compressor.

Every step but the last runs at its own configured ``ratio`` (so a ``redundancy`` step keeps
its ceiling-only default); the last step gets whatever budget the chain was asked for,
expressed in tokens of the chain's *input*, so the final budget applies to the total.
``ragcompress.build([spec1, spec2])`` builds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ragcompress.registry import SpecError, build, register
from ragcompress.text.base import TextCompressor
from ragcompress.types import Budget, Passage

__all__ = ["Chain"]


@register("chain")
@dataclass(init=False)
class Chain(TextCompressor):
    """``steps``: compressors or their specs (dicts, names, JSON), applied in order."""

    query_aware: ClassVar[bool] = True  # set per instance: true when any step is query-aware

    steps: list[Any] = field(default_factory=list)

    # A hand-written __init__ so that ``Chain([a, b])`` works: the registry builds list specs
    # that way, and the base class's fields would otherwise come first.
    def __init__(self, steps: Sequence[Any] = (), ratio: float = 0.5, tokenizer: str | None = None) -> None:
        self.steps = list(steps)
        self.ratio = ratio
        self.tokenizer = tokenizer
        self.__post_init__()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.steps:
            raise ValueError("a chain needs at least one step")
        built = []
        for i, step in enumerate(self.steps):
            try:
                obj = build(step, kind="text")
            except SpecError as err:
                raise err.at(f"steps[{i}]") from None
            if not isinstance(obj, TextCompressor):
                raise TypeError(f"chain step #{i} ({type(obj).__name__}) is not a text compressor")
            built.append(obj)
        self.steps = built
        # Instance attribute shadowing the class default: a chain of query-agnostic steps may
        # run before the KV cache, one with a query-aware step may not.
        object.__setattr__(self, "query_aware", any(s.query_aware for s in built))

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        target = budget.target(sum(tokens))
        before = {p.id: n for p, n in zip(passages, tokens, strict=False)}
        history: dict[str, list[dict[str, Any]]] = {p.id: [] for p in passages}
        current = passages
        for i, step in enumerate(self.steps):
            last = i == len(self.steps) - 1
            result = step.compress_with_stats(current, query, Budget(tokens=target) if last else None)
            self._record_step(result.stats)
            for pid, reason in result.stats.dropped.items():
                self._drop(pid, f"step {i} ({step.registered_name}): {reason}")
            for p in result.passages:
                meta = p.metadata.get("ragcompress", {})
                history[p.id].append({"step": step.registered_name, "tokens_after": meta.get("tokens_after")})
            current = result.passages
            if not current:
                break
        after = self._counter.many([p.text for p in current])
        return [
            p.with_text(p.text, tokens_before=before[p.id], tokens_after=n, steps=history[p.id])
            for p, n in zip(current, after, strict=False)
        ]
