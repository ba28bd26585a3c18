"""``RagCompressLLM``: ragcompress's reader as a LlamaIndex LLM (``Settings.llm``, query and chat
engines), answering on the text path from prompts and messages, and on the KV path from
passages handed over as separate chunks (``passages=``).

Text path: messages (or a completion prompt as one user turn) go through the reader's own chat
template (:mod:`llama_index.llms.ragcompress.chat`) and are decoded by
``ragcompress.generate.Generator``. KV path: ``complete(question, passages=[...])`` answers with
``ragcompress.kv.answer.KVAnswerer``: each passage is one KV chunk, prefilled once and reused by
every later request that passes the same text; only the question is prefilled per request.
``RagCompressKVSynthesizer.from_llm(llm)`` (``llama-index-postprocessor-ragcompress``) gives query
engines the same path over retrieved nodes, sharing this LLM's chunk store.
"""

from __future__ import annotations

import asyncio
import collections.abc
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore
from llama_index.llms.ragcompress.chat import chat_ids, message_text

from ragcompress.generate import Answer, Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.models.load import DEFAULT_READER
from ragcompress.types import STATS_KEY, Passage

__all__ = ["RagCompressLLM"]


class RagCompressLLM(CustomLLM):
    """ragcompress's reader (a local HF causal LM, by default the packaged SmolLM2-135M-Instruct)
    as a LlamaIndex chat LLM.

    ``RagCompressLLM(model=None, max_new_tokens=256)`` loads the reader lazily (``model``: a
    packaged alias or a local path); ``RagCompressLLM(generator=Generator(...))`` wraps a
    generator, ``RagCompressLLM(answerer=KVAnswerer(...))`` an answerer (and its generator).
    Responses carry the request's statistics in ``raw["ragcompress"]`` and token usage in
    ``additional_kwargs`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``).
    Decoding is greedy.
    """

    model: str | None = Field(
        default=None, description="Packaged alias or local path; None: the packaged reader."
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    device: str | None = Field(default=None, description="Torch device; None: CUDA when available.")
    dtype: str | None = Field(default=None, description="Torch dtype name; None: the device's default.")
    cache_dir: str | None = Field(default=None, description="Disk tier of the KV path's chunk store.")

    _generator: Generator = PrivateAttr()
    _answerer: KVAnswerer | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        model: str | None = None,
        *,
        generator: Generator | None = None,
        answerer: KVAnswerer | None = None,
        **kwargs: Any,
    ) -> None:
        if answerer is not None and not isinstance(answerer, KVAnswerer):
            raise TypeError(
                f"answerer must be a ragcompress.kv.answer.KVAnswerer, got {type(answerer).__name__}"
            )
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(
                f"generator must be a ragcompress.generate.Generator, got {type(generator).__name__}"
            )
        if answerer is not None and generator is not None and answerer.generator is not generator:
            raise ValueError(
                "answerer= must answer with the generator= given (answerer.generator is generator)"
            )
        generator = generator or (answerer.generator if answerer is not None else None)
        if generator is not None:  # the generator's settings are this LLM's unless given
            kwargs.setdefault("max_new_tokens", generator.max_new_tokens or 256)
            kwargs.setdefault("device", generator.device)
            kwargs.setdefault("dtype", generator.dtype)
            model = model or generator.model
        super().__init__(model=model, **kwargs)
        self._generator = generator or Generator(
            model=self.model, device=self.device, dtype=self.dtype, max_new_tokens=self.max_new_tokens
        )
        self._answerer = answerer

    @classmethod
    def class_name(cls) -> str:
        return "RagCompressLLM"

    @property
    def generator(self) -> Generator:
        """The text path's generator (loads the reader on first use)."""
        return self._generator

    @property
    def kv_answerer(self) -> KVAnswerer:
        """The KV path's answerer over this LLM's generator, built on first use (an in-memory
        chunk store, with a disk tier in ``cache_dir`` when set)."""
        with self._lock:
            if self._answerer is None:
                self._answerer = KVAnswerer.from_generator(self._generator, cache_dir=self.cache_dir)
            return self._answerer

    @property
    def metadata(self) -> LLMMetadata:
        config = self._generator.lm.config
        window = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        return LLMMetadata(
            # A config without it (rare) gets LlamaIndex's own default rather than a guess of ours.
            context_window=int(window or DEFAULT_CONTEXT_WINDOW),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model or getattr(config, "name_or_path", "") or DEFAULT_READER,
        )

    # -- chat (the text path; the KV path when passages= is given) -------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat_response(self._answer(messages, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        pieces = self._pieces(messages, kwargs)  # arguments checked here, the model runs lazily
        return (_chat_response(r) for r in _cumulative(pieces))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat_response(await asyncio.to_thread(self._answer, messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        pieces = self._pieces(messages, kwargs)
        return (_chat_response(r) async for r in _in_threads(_cumulative(pieces)))

    # -- completion: the prompt is one user turn (or, with passages=, the question) --------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(self._user(prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return _cumulative(self._pieces(self._user(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._answer, self._user(prompt, formatted), kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return _in_threads(_cumulative(self._pieces(self._user(prompt, formatted), kwargs)))

    # -- helpers ---------------------------------------------------------------------------
    def _user(self, prompt: str, formatted: bool) -> list[ChatMessage]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    def _prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        messages = list(messages)
        if self.system_prompt and not any(m.role == MessageRole.SYSTEM for m in messages):
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        ids = chat_ids(self._generator.tokenizer, messages)
        self._generator.check_length(len(ids), self.max_new_tokens)
        return ids

    def _kv_request(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[str, list[Passage]]:
        """The question and passages of a KV-path request (``passages=`` given)."""
        passages = _passages(kwargs.pop("passages"))
        if len(messages) != 1 or messages[0].role != MessageRole.USER:
            raise ValueError(
                "with passages= the messages must be one user message, the question (the KV path's "
                "system turn and layout are the generator's: Generator(system=...))"
            )
        return message_text(0, messages[0]), passages

    def _answer(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CompletionResponse:
        _check_kwargs(kwargs)
        if kwargs.get("passages") is not None:
            answer = self.kv_answerer.answer(*self._kv_request(messages, kwargs), self.max_new_tokens)
        else:
            gen = self._generator
            answer = gen.decode(self._prompt_ids(messages), cache=None, max_new_tokens=self.max_new_tokens)
        return _completion(answer)

    def _pieces(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Iterator[str]:
        _check_kwargs(kwargs)
        if kwargs.get("passages") is not None:
            query, passages = self._kv_request(messages, kwargs)
            return self.kv_answerer.stream_with_stats(query, passages, {}, self.max_new_tokens)
        gen = self._generator
        ids = self._prompt_ids(messages)
        return _stripped(
            gen.text_pieces(gen.iter_tokens(ids, cache=None, max_new_tokens=self.max_new_tokens))
        )


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    # LlamaIndex passes a few keywords of its own through predict(); anything else would be
    # silently ignored, so it is refused by name.
    unknown = set(kwargs) - {"passages"}
    if unknown:
        raise TypeError(f"RagCompressLLM got unsupported keyword argument(s): {', '.join(sorted(unknown))}")


def _passages(items: Any) -> list[Passage]:
    """``passages=``: strings, ragcompress Passages, LlamaIndex nodes or NodeWithScore, in order."""
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"passages must be a list of texts, Passages or nodes, got {type(items).__name__}")
    out: list[Passage] = []
    for i, item in enumerate(items):
        node = item.node if isinstance(item, NodeWithScore) else item
        if isinstance(node, BaseNode):
            out.append(Passage(text=node.get_content(metadata_mode=MetadataMode.NONE), id=node.node_id))
        elif isinstance(node, Passage | str):
            out.append(node if isinstance(node, Passage) else Passage(text=node))
        else:
            raise TypeError(
                f"passages[{i}] must be a str, Passage or llama_index node, got {type(item).__name__}"
            )
    return out


def _completion(answer: Answer) -> CompletionResponse:
    s = answer.stats
    usage = {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.new_tokens,
        "total_tokens": s.prompt_tokens + s.new_tokens,
    }
    return CompletionResponse(text=answer.text, raw={STATS_KEY: s.as_dict()}, additional_kwargs=usage)


def _chat_response(r: CompletionResponse) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=r.text)
    return ChatResponse(message=message, delta=r.delta, raw=r.raw, additional_kwargs=r.additional_kwargs)


def _cumulative(pieces: Iterator[str]) -> collections.abc.Generator[CompletionResponse, None, None]:
    text = ""
    for piece in pieces:
        text += piece
        yield CompletionResponse(text=text, delta=piece)


def _stripped(pieces: Iterator[str]) -> Iterator[str]:
    # The non-streamed answer is stripped (Generator.answer_of); hold back leading and trailing
    # whitespace so that the streamed deltas join to exactly the same text.
    started, held = False, ""
    for piece in pieces:
        text = held + (piece if started else piece.lstrip())
        started = started or bool(text)
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            yield body


async def _in_threads(items: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """The blocking iterator, each step in a worker thread, so the event loop keeps running."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, items, done)
        if item is done:
            return
        yield item
