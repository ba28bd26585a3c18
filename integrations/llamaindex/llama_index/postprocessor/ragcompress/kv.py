"""LlamaIndex response synthesizer that answers from the retrieved nodes' cached KV chunks.

``RagCompressKVSynthesizer.synthesize(query, nodes)`` gets the ``NodeWithScore`` list itself:
each node with text becomes one ``ragcompress.Passage`` (its text without metadata, as the
text-path postprocessor reads it) and so one KV chunk, prefilled once and then served from the
chunk store on every later query that retrieves the node, laid out in retrieval order. Node text
is never recovered from a flat prompt string. Nodes without text (image-only) are skipped for
the answer and still listed in ``source_nodes``.

``response.source_nodes`` are the given ``NodeWithScore`` objects themselves;
``response.metadata`` maps node ids to node metadata (LlamaIndex's convention) and has the
request's statistics (``chunks_hit``, ``chunks_encoded``, ``ttft_ms``, …) under
``"ragcompress"``. No nodes is not an error and not LlamaIndex's "Empty Response": the answer
then comes from the shared prefix (system prompt) and the question alone, exactly as
``KVAnswerer.answer(question, [])`` gives it, the same as the LangChain chain does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index.core.llms import LLM, MockLLM
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.response_synthesizers.type import ResponseMode
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.types import RESPONSE_TEXT_TYPE
from llama_index.postprocessor.ragcompress.base import _to_passages
from llama_index.postprocessor.ragcompress.templates import answerer_for, check_mode, layout_for

from ragcompress.kv.answer import KVAnswerer
from ragcompress.sampling import Sampling, check_sampling
from ragcompress.types import STATS_KEY, Passage

__all__ = ["RagCompressKVSynthesizer"]

dispatcher = instrument.get_dispatcher(__name__)


class RagCompressKVSynthesizer(BaseSynthesizer):
    """Answer from the nodes' cached KV chunks with a ``ragcompress.kv.answer.KVAnswerer``.

    ``streaming`` is LlamaIndex's switch between ``Response`` and ``StreamingResponse``;
    ``max_new_tokens`` overrides the generator's own limit; ``sampling`` (a
    ``ragcompress.Sampling``, None: greedy) decodes every answer. ``text_qa_template`` (also through
    ``update_prompts``) becomes the KV path's prompt layout when it maps onto one
    (:mod:`~llama_index.postprocessor.ragcompress.templates`); ``response_mode`` is one of
    ``compact`` (default) and ``simple_summarize`` (one answer over all chunks), ``generation``
    (no chunks), ``no_text``, ``context_only``; the per-node modes (``refine``,
    ``tree_summarize``, ``accumulate``, ``compact_accumulate``) and templates that cannot map
    are refused with a ``ValueError``. ``llm`` is never called: the answer comes from the
    answerer's generator (``from_llm`` shares a ``RagCompressLLM``'s generator and chunk store).
    """

    def __init__(
        self,
        answerer: KVAnswerer,
        max_new_tokens: int | None = None,
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
        llm: LLM | None = None,
        text_qa_template: BasePromptTemplate | None = None,
        response_mode: ResponseMode | str = ResponseMode.COMPACT,
        sampling: Sampling | None = None,
    ) -> None:
        if not isinstance(answerer, KVAnswerer):
            raise TypeError(
                "answerer must be a ragcompress.kv.answer.KVAnswerer "
                f"(see RagCompressKVSynthesizer.from_generator), got {type(answerer).__name__}"
            )
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        super().__init__(llm=llm or MockLLM(), callback_manager=callback_manager, streaming=streaming)
        self.response_mode = check_mode(response_mode)
        self.base_answerer = answerer  # the answerer as given, before any template
        self.answerer = answerer
        self.max_new_tokens = max_new_tokens
        self.sampling = check_sampling(sampling)  # None: greedy
        self._text_qa_template: BasePromptTemplate | None = None
        if text_qa_template is not None:
            self._update_prompts({"text_qa_template": text_qa_template})

    @classmethod
    def from_generator(
        cls,
        generator: Any,
        cache_dir: str | os.PathLike[str] | None = None,
        presses: Sequence[Any] = (),
        max_new_tokens: int | None = None,
        streaming: bool = False,
        assembly: Any = None,
        text_qa_template: BasePromptTemplate | None = None,
        response_mode: ResponseMode | str = ResponseMode.COMPACT,
        sampling: Sampling | None = None,
        **answerer_kwargs: Any,
    ) -> RagCompressKVSynthesizer:
        """A synthesizer over ``KVAnswerer.from_generator(generator, cache_dir, presses, ...)``;
        ``assembly``: an assembly-mode spec such as ``{"name": "blend", "recompute": 0.15}``."""
        answerer = KVAnswerer.from_generator(
            generator, cache_dir=cache_dir, presses=presses, assembly=assembly, **answerer_kwargs
        )
        return cls(
            answerer,
            max_new_tokens=max_new_tokens,
            streaming=streaming,
            text_qa_template=text_qa_template,
            response_mode=response_mode,
            sampling=sampling,
        )

    @classmethod
    def from_llm(cls, llm: LLM, **kwargs: Any) -> RagCompressKVSynthesizer:
        """A synthesizer over a ``llama_index.llms.ragcompress.RagCompressLLM``'s KV answerer (its
        generator and chunk store: chunks encoded through either serve both); ``kwargs`` as
        ``__init__``'s. ``max_new_tokens`` and ``sampling`` default to the LLM's."""
        answerer = getattr(llm, "kv_answerer", None)
        if not isinstance(answerer, KVAnswerer):
            raise TypeError(
                "llm must be a llama_index.llms.ragcompress.RagCompressLLM (pip install "
                f"llama-index-llms-ragcompress), got {type(llm).__name__}"
            )
        kwargs.setdefault("max_new_tokens", getattr(llm, "max_new_tokens", None))
        kwargs.setdefault("sampling", getattr(llm, "sampling", None))
        return cls(answerer, llm=llm, **kwargs)

    # -- PromptMixin: text_qa_template, mapped onto the KV path's layout ---------------------
    def _get_prompts(self) -> PromptDictType:
        # Empty until a template is set: the layout is then the generator's own.
        return {} if self._text_qa_template is None else {"text_qa_template": self._text_qa_template}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        for key in ("refine_template", "summary_template"):
            if key in prompts:
                raise ValueError(
                    f"RagCompressKVSynthesizer has no {key}: it answers once over all chunks "
                    "(set text_qa_template instead)"
                )
        template = prompts.get("text_qa_template")
        if template is not None:
            gen = self.base_answerer.generator
            layout = layout_for(template, gen.tokenizer, gen.system)  # raises before anything changes
            self.answerer = answerer_for(self.base_answerer, layout)
            self._text_qa_template = template

    # -- the node path (what query engines call) --------------------------------------------
    @dispatcher.span
    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        dispatcher.event(SynthesizeStartEvent(query=query))
        passages = _to_passages(list(nodes))  # raises naming the bad item; keeps order
        sources = list(nodes) + list(additional_source_nodes or [])
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as event:
            text, stats = self._respond(query.query_str, passages)
            response = self._response(text, sources, stats)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if not self._streaming:
            return await asyncio.to_thread(self.synthesize, query, nodes, additional_source_nodes)
        response = self.synthesize(query, nodes, additional_source_nodes)  # encodes in the stream
        assert isinstance(response, StreamingResponse)
        return AsyncStreamingResponse(
            response_gen=_in_threads(response.response_gen),
            source_nodes=response.source_nodes,
            metadata=response.metadata,
        )

    # -- the text path (BaseSynthesizer's abstract methods): each chunk is one passage -------
    def get_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        return self._respond(query_str, [Passage(text=t) for t in text_chunks])[0]

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        if self._streaming:
            return _in_threads(self.get_response(query_str, text_chunks))  # type: ignore[arg-type]
        return await asyncio.to_thread(self.get_response, query_str, text_chunks)

    # -- helpers ---------------------------------------------------------------------------
    def _respond(
        self, query: str, passages: list[Passage]
    ) -> tuple[str | Generator[str, None, None], dict[str, Any]]:
        mode = self.response_mode
        if mode in (ResponseMode.NO_TEXT, ResponseMode.CONTEXT_ONLY):  # no model call: no stats
            text = "" if mode == ResponseMode.NO_TEXT else "\n\n".join(p.text for p in passages)
            return (_once(text) if self._streaming else text), {}
        if mode == ResponseMode.GENERATION:  # the question alone; the nodes stay source_nodes
            passages = []
        if self._streaming:
            stats: dict[str, Any] = {}
            pieces = self.answerer.stream_with_stats(
                query, passages, stats, self.max_new_tokens, sampling=self.sampling
            )
            return pieces, stats
        answer = self.answerer.answer(query, passages, self.max_new_tokens, sampling=self.sampling)
        return answer.text, answer.stats.as_dict()

    def _response(
        self, text: str | Generator[str, None, None], sources: list[NodeWithScore], stats: dict[str, Any]
    ) -> RESPONSE_TYPE:
        metadata: dict[str, Any] = {n.node.node_id: n.node.metadata for n in sources}
        metadata[STATS_KEY] = stats  # filled in as the stream runs when streaming
        if isinstance(text, str):
            return Response(text, source_nodes=sources, metadata=metadata)
        return StreamingResponse(text, source_nodes=sources, metadata=metadata)


def _once(text: str) -> Generator[str, None, None]:
    if text:
        yield text


async def _in_threads(pieces: Iterator[str]) -> AsyncGenerator[str, None]:
    """The blocking generator, each step in a worker thread, so the event loop keeps running."""
    while True:
        piece = await asyncio.to_thread(next, pieces, None)
        if piece is None:
            return
        yield piece
