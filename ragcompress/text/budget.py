"""Token budgets of the text compressors: counting tokens with the reader's tokenizer, and the
error raised when a budget cannot be met.

Below :mod:`~ragcompress.text.select` and :mod:`~ragcompress.text.base` (which re-exports both
names), so the selection machinery and the compressor contract can both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BudgetError", "TokenCounter"]


class BudgetError(ValueError):
    """The requested budget cannot be met (e.g. it is smaller than any unit that can be kept)."""


@dataclass
class TokenCounter:
    """Counts tokens with a reader's tokenizer (alias, path or HF id; loaded lazily, shared)."""

    tokenizer: str | None = None
    _pinned: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, tokenizer: Any) -> TokenCounter:
        """A counter that uses an already loaded tokenizer object (e.g. one injected in tests)."""
        counter = cls(getattr(tokenizer, "name_or_path", None) or None)
        counter._pinned = tokenizer
        return counter

    @property
    def tok(self) -> Any:
        if self._pinned is not None:
            return self._pinned
        from ragcompress.models.load import load_tokenizer

        return load_tokenizer(self.tokenizer)

    def __call__(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def many(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many texts in one batched tokenizer call."""
        if not texts:
            return []
        return [len(ids) for ids in self.tok(list(texts), add_special_tokens=False)["input_ids"]]
