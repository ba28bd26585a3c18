"""LangChain Runnable that answers from the retrieved documents' cached KV chunks.

``RagCompressKVChain`` takes ``{"question": str, "documents": [Document, ...]}``: the
documents travel as a list, each one becomes one ``ragcompress.Passage`` and so one KV chunk
(prefilled once, then served from the chunk store on every later request that retrieves it),
laid out in retrieval order. Passage text is never recovered from a flat prompt string.

Output is a dict ``{"answer": str, "documents": [...], "stats": {...}}``: ``documents`` are the
input objects themselves, ``stats`` holds ``chunks_hit``, ``chunks_encoded``, ``ttft_ms`` and the
rest of the generation statistics. Streaming yields the same keys as addable chunks (LangChain's
convention for dict outputs): ``{"documents": ...}`` first, then ``{"answer": piece}`` per text
piece, then ``{"stats": ...}``; ``chain.pick("answer").stream(...)`` yields just the text.

No documents is not an error: the answer then comes from the shared prefix (system prompt)
and the question alone, exactly as ``KVAnswerer.answer(question, [])`` gives it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from langchain_core.runnables.utils import AddableDict
from pydantic import ConfigDict, Field, field_validator

from langchain_ragcompress.compressor import _to_passages
from ragcompress.kv.answer import KVAnswerer
from ragcompress.types import Passage

__all__ = ["RagCompressKVChain"]


class RagCompressKVChain(RunnableSerializable[dict[str, Any], dict[str, Any]]):
    """Answer ``{"question", "documents"}`` from the documents' cached KV chunks.

    ``answerer`` is a ``ragcompress.kv.answer.KVAnswerer`` (generator + chunk cache); build one
    with :meth:`from_generator`. ``max_new_tokens`` overrides the generator's own limit.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    answerer: Any
    max_new_tokens: int | None = Field(default=None, gt=0)

    @field_validator("answerer", mode="before")
    @classmethod
    def _check_answerer(cls, value: Any) -> Any:
        if not isinstance(value, KVAnswerer):
            raise TypeError(
                "answerer must be a ragcompress.kv.answer.KVAnswerer "
                f"(see RagCompressKVChain.from_generator), got {type(value).__name__}"
            )
        return value

    @classmethod
    def from_generator(
        cls,
        generator: Any,
        cache_dir: str | os.PathLike[str] | None = None,
        presses: Sequence[Any] = (),
        max_new_tokens: int | None = None,
        assembly: Any = None,
        **answerer_kwargs: Any,
    ) -> RagCompressKVChain:
        """A chain over ``KVAnswerer.from_generator(generator, cache_dir, presses, ...)``;
        ``assembly``: an assembly-mode spec such as ``{"name": "blend", "recompute": 0.15}``."""
        answerer = KVAnswerer.from_generator(
            generator, cache_dir=cache_dir, presses=presses, assembly=assembly, **answerer_kwargs
        )
        return cls(answerer=answerer, max_new_tokens=max_new_tokens)

    # -- invoke --------------------------------------------------------------------------
    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self._call_with_config(self._answer, input, config)

    def _answer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        question, documents, passages = _unpack(inputs)
        answer = self.answerer.answer(question, passages, self.max_new_tokens)
        return {"answer": answer.text, "documents": documents, "stats": answer.stats.as_dict()}

    # ainvoke: the default runs invoke in the config's executor; decoding holds the GIL
    # rarely (torch ops release it), so the event loop stays responsive.

    # -- streaming -----------------------------------------------------------------------
    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self.transform(iter([input]), config, **kwargs)

    def transform(
        self, input: Iterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    def _transform(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        inputs = AddableDict()
        for chunk in chunks:  # an upstream step may stream its dict in pieces
            inputs = inputs + AddableDict(chunk) if isinstance(chunk, dict) else chunk
        yield from self._stream_answer(inputs)

    def _stream_answer(self, inputs: Any) -> Iterator[dict[str, Any]]:
        question, documents, passages = _unpack(inputs)
        yield AddableDict(documents=documents)
        stats: dict[str, Any] = {}
        for piece in self.answerer.stream_with_stats(question, passages, stats, self.max_new_tokens):
            yield AddableDict(answer=piece)
        yield AddableDict(stats=stats)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async def one() -> AsyncIterator[dict[str, Any]]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    async def atransform(
        self, input: AsyncIterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    async def _atransform(
        self,
        chunks: AsyncIterator[dict[str, Any]],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[dict[str, Any]]:
        inputs = AddableDict()
        async for chunk in chunks:
            inputs = inputs + AddableDict(chunk) if isinstance(chunk, dict) else chunk
        # Every step of the (blocking) generator runs in the executor, one token at a time.
        pieces = self._stream_answer(inputs)
        while True:
            item = await run_in_executor(config, next, pieces, None)
            if item is None:
                return
            yield item
            await asyncio.sleep(0)


def _unpack(inputs: Any) -> tuple[str, list[Document], list[Passage]]:
    if not isinstance(inputs, dict) or "question" not in inputs or "documents" not in inputs:
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise TypeError(f"RagCompressKVChain takes a dict with 'question' and 'documents', got {got}")
    question, documents = inputs["question"], inputs["documents"]
    if not isinstance(question, str):
        raise TypeError(f"'question' must be a str, got {type(question).__name__}")
    if isinstance(documents, Document) or not isinstance(documents, Sequence):
        raise TypeError(f"'documents' must be a list of Documents, got {type(documents).__name__}")
    documents = list(documents)
    passages = _to_passages(documents)  # raises naming the bad item; keeps order
    return question, documents, passages
