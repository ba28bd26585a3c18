"""Abstractive compression: a query-focused summary of each passage by the reader LM (RECOMP idea).

The LM is told to reply ``NONE`` when the passage does not help with the question; such
passages (and empty summaries) are dropped with the reason in the stats. Each passage gets a
share of the budget proportional to its length; a summary longer than its share is cut at
the last sentence boundary that fits (at a word boundary when not even one sentence fits),
and ``truncated`` says so in the passage's stats. Passages longer than ``max_input_tokens``
are summarized piece by piece (pieces made of whole sentences) and the pieces' summaries
concatenated, so the prompt always fits the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ragcompress.registry import register
from ragcompress.text.base import TextCompressor, TokenCounter
from ragcompress.text.split import join_segments, segment_texts, split_sentences
from ragcompress.types import Budget, Passage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ragcompress.generate import Generator

__all__ = ["Summarizer"]

_NONE = re.compile(r"\W*(none|n/a)\W*", re.IGNORECASE)
_SYSTEM = "You extract the facts from a document that help answer a question. Be brief."
_PROMPT = (
    "Document:\n{text}\n\nQuestion: {query}\n\n"
    "Write, in at most {words} words, only the facts from the document that help answer the "
    "question. If the document does not help, reply with the single word NONE."
)
_GENERIC = "Document:\n{text}\n\nSummarize the document in at most {words} words."


@register("summary")
@dataclass
class Summarizer(TextCompressor):
    """Replace each passage by the LM's query-focused summary (``max_new_tokens`` per piece)."""

    query_aware: ClassVar[bool] = True

    model: str | None = None
    device: str | None = None
    max_new_tokens: int = 96
    max_input_tokens: int = 1024
    _gen: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1 or self.max_input_tokens < 16:
            raise ValueError("max_new_tokens must be >= 1 and max_input_tokens >= 16")
        if self.tokenizer is None and self.model is not None:
            self._counter = TokenCounter(self.model)

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> Any:
        from ragcompress.generate import Generator

        obj = cls(**kwargs)
        obj._gen = Generator.from_model(model, tokenizer, system=_SYSTEM)
        if obj.tokenizer is None:
            obj._counter = TokenCounter.of(tokenizer)
        return obj

    @property
    def generator(self) -> Generator:
        if self._gen is None:
            from ragcompress.generate import Generator

            self._gen = Generator(model=self.model, device=self.device, system=_SYSTEM)
        return self._gen

    def _prompt_ids(self, text: str, query: str, share: int) -> list[int]:
        tok = self.generator.tokenizer
        words = max(1, int(share * 0.7))  # ~1.4 tokens per English word
        body = (_PROMPT if query.strip() else _GENERIC).format(text=text, query=query.strip(), words=words)
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": body}]
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(rendered, add_special_tokens=False)["input_ids"])
        return list(tok(f"{_SYSTEM}\n\n{body}\nAnswer:", add_special_tokens=True)["input_ids"])

    def _pieces(self, text: str) -> list[str]:
        """The passage cut into runs of whole sentences of at most ``max_input_tokens`` tokens."""
        segments = segment_texts(text, split_sentences(text))
        counts = self._counter.many(segments)
        pieces: list[str] = []
        current: list[str] = []
        size = 0
        for seg, n in zip(segments, counts, strict=False):
            if current and size + n > self.max_input_tokens:
                pieces.append(join_segments(current))
                current, size = [], 0
            # A single sentence longer than the limit is cut by characters (~4 per token).
            while n > self.max_input_tokens:
                cut = self.max_input_tokens * 3
                pieces.append(seg[:cut].strip())
                seg = seg[cut:]
                n = self._counter(seg)
            current.append(seg)
            size += n
        if current:
            pieces.append(join_segments(current))
        return [p for p in pieces if p]

    def _summarize(self, text: str, query: str, share: int) -> tuple[str, int]:
        """Summary of one passage and the number of tokens generated for it."""
        parts: list[str] = []
        generated = 0
        pieces = self._pieces(text)
        for piece in pieces:
            per_piece = max(1, share // len(pieces))
            limit = min(self.max_new_tokens, per_piece + 16)  # room to finish a sentence
            answer = self.generator.decode(self._prompt_ids(piece, query, per_piece), None, limit)
            generated += answer.stats.new_tokens
            if answer.text.strip() and not _NONE.fullmatch(answer.text.strip()):
                parts.append(answer.text.strip())
        return " ".join(parts), generated

    def _fit(self, text: str, share: int) -> tuple[str, bool]:
        """``text`` cut to at most ``share`` tokens at a sentence (else word) boundary."""
        if self._counter(text) <= share:
            return text, False
        segments = segment_texts(text, split_sentences(text))
        counts = self._counter.many(segments)
        kept: list[str] = []
        total = 0
        for seg, n in zip(segments, counts, strict=False):
            if total + n > share:
                break
            kept.append(seg)
            total += n
        if kept:
            fitted = join_segments(kept)
        else:
            words = text.split()
            lo, hi = 0, len(words)  # longest word prefix within the share (binary search)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._counter(" ".join(words[:mid])) <= share:
                    lo = mid
                else:
                    hi = mid - 1
            fitted = " ".join(words[:lo])
        while fitted and self._counter(fitted) > share:  # seams may add a token
            fitted = fitted.rsplit(None, 1)[0] if " " in fitted else ""
        return fitted, True

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        total = sum(tokens)
        target = budget.target(total)
        shares = _shares(tokens, target)
        out: list[Passage] = []
        for p, n, share in zip(passages, tokens, shares, strict=False):
            if share == 0:
                self._drop(p, "its share of the budget is 0 tokens")
                continue
            summary, generated = self._summarize(p.text, query, share)
            if not summary:
                self._drop(p, "the summarizer answered NONE or nothing: passage judged irrelevant")
                continue
            fitted, truncated = self._fit(summary, share)
            if not fitted:
                self._drop(p, f"summary did not fit its share of {share} tokens")
                continue
            out.append(
                p.with_text(
                    fitted,
                    tokens_before=n,
                    tokens_after=self._counter(fitted),
                    generated_tokens=generated,
                    truncated=truncated,
                )
            )
        return out


def _shares(tokens: list[int], target: int) -> list[int]:
    """Split ``target`` tokens proportionally to ``tokens`` (largest remainder, sums to target)."""
    total = sum(tokens)
    exact = [target * n / total for n in tokens]
    shares = [int(x) for x in exact]
    rest = target - sum(shares)
    for i in sorted(range(len(tokens)), key=lambda i: (shares[i] - exact[i], i))[:rest]:
        shares[i] += 1
    return shares
