"""A streamed answer: its text pieces as they are decoded, then the whole :class:`Answer`.

Every ``stream`` entry point (the text path's :meth:`~ragcompress.generate.Generator.stream`, the
KV answerers') returns an :class:`AnswerStream`. It is an iterator of ``str`` as before; once
exhausted, :attr:`AnswerStream.answer` holds the :class:`~ragcompress.generate.Answer` that the
non-streamed call returns for the same tokens (stripped text ending before any stop string,
token ids, stats with token counts and timings), so a caller that streams still gets usage
numbers. Lazy: nothing is looked up, prefilled or decoded until the first piece is asked for.
:class:`AnswerMethods` writes both entry points (whole answer, stream) once for every reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragcompress.generate import Answer, Generator
    from ragcompress.sampling import Sampling
    from ragcompress.types import Passage

__all__ = ["AnswerMethods", "AnswerStream", "Begin", "Request", "stripped"]

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


@dataclass(frozen=True, slots=True)
class Request:
    """One question's arguments as the caller passed them to an :class:`AnswerMethods` entry
    point (not yet checked)."""

    query: str
    passages: Sequence[Passage] | Sequence[str]
    max_new_tokens: int | None
    sampling: Sampling | None
    history: Sequence[tuple[str, str]] | None


class AnswerMethods:
    """The two ways to ask a question from passages, written once for every reader (the text
    path's :class:`Generator`, the KV answerers): the whole :class:`Answer`, or an
    :class:`~ragcompress.streaming.AnswerStream` of its text. A reader supplies
    :meth:`_request` (check the arguments, return how to start) and :meth:`_decoder`."""

    def _request(self, ask: Request) -> tuple[Begin, Sampling]:
        """Check ``ask`` (raising before any work) and return ``(begin, checked sampling)``:
        ``begin()`` runs the request up to its token iterator."""
        raise NotImplementedError

    def _decoder(self) -> Generator:
        """The generator whose tokenizer turns tokens into text and ends at stop strings."""
        raise NotImplementedError

    def _whole(
        self,
        query: str,
        passages: Sequence[Passage] | Sequence[str],
        max_new_tokens: int | None = None,
        *,
        sampling: Sampling | None = None,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> Answer:
        """The whole :class:`Answer`: decode (greedy by default) until a stop token or string."""
        begin, checked = self._request(Request(query, passages, max_new_tokens, sampling, history))
        tokens, finish = begin()
        return finish(list(self._decoder().until_stop(tokens, checked.stop)))

    def stream(
        self,
        query: str,
        passages: Sequence[Passage] | Sequence[str],
        max_new_tokens: int | None = None,
        *,
        sampling: Sampling | None = None,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> AnswerStream:
        """The answer's text piece by piece as tokens are produced, then its :class:`Answer`
        (``.answer``, see :class:`~ragcompress.streaming.AnswerStream`); arguments are checked
        at the call, the work (chunk lookup, prefill, decoding) runs as pieces are asked for."""
        begin, checked = self._request(Request(query, passages, max_new_tokens, sampling, history))
        return AnswerStream(self._decoder(), begin, checked.stop)
