"""A streamed answer: its text pieces as they are decoded, then the whole :class:`Answer`.

Every ``stream`` entry point (the text path's :meth:`~ragcompress.generate.Generator.stream`, the
KV answerers') returns an :class:`AnswerStream`. It is an iterator of ``str`` as before; once
exhausted, :attr:`AnswerStream.answer` holds the :class:`~ragcompress.generate.Answer` that the
non-streamed call returns for the same tokens (stripped text ending before any stop string,
token ids, stats with token counts and timings), so a caller that streams still gets usage
numbers. Lazy: nothing is looked up, prefilled or decoded until the first piece is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragcompress.generate import Answer, Generator

__all__ = ["AnswerStream", "Begin", "stripped"]

#: Starts a request: ``(token ids as they are decoded, finish(all tokens) -> Answer)``.
Begin = Callable[[], tuple[Iterator[int], Callable[[list[int]], "Answer"]]]


class AnswerStream(Iterator[str]):
    """Text pieces of one answer; :attr:`answer` is set when the pieces are exhausted (None
    before, or when the consumer stops early). ``begin`` starts the request on the first
    ``next``; ``stop`` strings end the answer (no piece shows any part of one)."""

    def __init__(self, generator: Generator, begin: Begin, stop: Sequence[str] = ()) -> None:
        self._generator = generator
        self._begin: Begin | None = begin
        self._stop = tuple(stop)
        self._pieces: Iterator[str] | None = None
        self._finish: Callable[[list[int]], Answer] | None = None
        self._tokens: list[int] = []
        self.answer: Answer | None = None

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        if self._pieces is None:
            if self._begin is None:
                raise StopIteration
            begin, self._begin = self._begin, None  # a failed start is not retried
            tokens, self._finish = begin()
            self._pieces = self._generator.text_pieces(self._record(tokens), self._stop)
        try:
            return next(self._pieces)
        except StopIteration:
            if self.answer is None and self._finish is not None:
                # the tokens text_pieces consumed: up to the one completing a stop string, as
                # the non-streamed call's until_stop keeps them
                self.answer = self._finish(list(self._tokens))
            raise

    def _record(self, tokens: Iterator[int]) -> Iterator[int]:
        for tok in tokens:
            self._tokens.append(tok)
            yield tok


def stripped(pieces: Iterator[str]) -> Iterator[str]:
    """``pieces`` without the leading and trailing whitespace of their concatenation (what a
    non-streamed answer strips): leading whitespace is dropped, trailing whitespace held back
    until more text follows it."""
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        text = held + piece
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            yield body
