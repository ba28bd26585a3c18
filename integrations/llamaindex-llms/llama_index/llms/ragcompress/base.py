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
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
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
from llama_index.llms.ragcompress.chat import chat_ids, message_turns

from ragcompress.generate import Answer, Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.models.load import DEFAULT_READER
from ragcompress.sampling import Sampling
from ragcompress.streaming import AnswerStream, stripped
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
    Decoding is greedy unless ``temperature`` > 0 (``top_p``, ``top_k``, ``seed``, ``stop``:
    ``ragcompress.sampling.Sampling``); every call may override them by keyword.
    """

    model: str | None = Field(
        default=None, description="Packaged alias or local path; None: the packaged reader."
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    device: str | None = Field(default=None, description="Torch device; None: CUDA when available.")
    dtype: str | None = Field(default=None, description="Torch dtype name; None: the device's default.")
    cache_dir: str | None = Field(default=None, description="Disk tier of the KV path's chunk store.")
    # Decoding settings (ragcompress.sampling.Sampling), greedy by default; each call may
    # override any of them by keyword (complete(prompt, temperature=0.7, seed=1)).
    temperature: float = Field(default=0.0, description="0: greedy; > 0 samples from softmax(logits / T).")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass in (0, 1]; 1: off.")
    top_k: int = Field(default=0, description="Sample among the k most likely tokens; 0: off.")
    seed: int | None = Field(default=None, description="Seeds each request (same seed, same answer).")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer (cut off).")

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
            if model is not None and generator.model is not None and model != generator.model:
                raise ValueError(f"model={model!r} differs from the generator's model {generator.model!r}")
            model = model or generator.model
        super().__init__(model=model, **kwargs)
        self._generator = generator or Generator(
            model=self.model, device=self.device, dtype=self.dtype, max_new_tokens=self.max_new_tokens
        )
        self._answerer = answerer
        self._sampling({})  # bad settings fail here, naming the field, not at the first request

    @classmethod
    def class_name(cls) -> str:
        return "RagCompressLLM"

    @property
    def generator(self) -> Generator:
        """The text path's generator (loads the reader on first use)."""
        return self._generator

    @property
    def sampling(self) -> Sampling:
        """This LLM's decoding settings as a ``ragcompress.sampling.Sampling``."""
        return self._sampling({})

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
        stream = self._stream(messages, kwargs)
        return (_chat_response(r) for r in _responses(stream))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _chat_response(await asyncio.to_thread(self._answer, messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        stream = self._stream(messages, kwargs)
        return (_chat_response(r) async for r in _in_threads(_responses(stream)))

    # -- completion: the prompt is one user turn (or, with passages=, the question) --------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(self._user(prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return _responses(self._stream(self._user(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._answer, self._user(prompt, formatted), kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return _in_threads(_responses(self._stream(self._user(prompt, formatted), kwargs)))

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

    def _sampling(self, kwargs: dict[str, Any]) -> Sampling:
        """This LLM's settings with the call's overrides (popped from ``kwargs``)."""
        settings = {name: kwargs.pop(name, getattr(self, name)) for name in _SAMPLING}
        if isinstance(settings["stop"], list):  # a lone str stays a str: Sampling refuses it
            settings["stop"] = tuple(settings["stop"])
        return Sampling(**settings)

    def _answer(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CompletionResponse:
        sampling, passages = self._sampling(kwargs), kwargs.pop("passages", None)
        _check_kwargs(kwargs)
        if passages is not None:
            query, history = _kv_turns(messages)
            answer = self.kv_answerer.answer(
                query, _passages(passages), self.max_new_tokens, sampling=sampling, history=history
            )
        else:
            ids = self._prompt_ids(messages)
            answer = self._generator.decode(ids, None, self.max_new_tokens, sampling=sampling)
        return _completion(answer)

    def _stream(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> AnswerStream:
        """The answer's stream; arguments are checked here, the model runs as pieces are asked for."""
        sampling, passages = self._sampling(kwargs), kwargs.pop("passages", None)
        _check_kwargs(kwargs)
        if passages is not None:
            query, history = _kv_turns(messages)
            return self.kv_answerer.stream(
                query, _passages(passages), self.max_new_tokens, sampling=sampling, history=history
            )
        return _text_stream(self._generator, self._prompt_ids(messages), self.max_new_tokens, sampling)


_SAMPLING = ("temperature", "top_p", "top_k", "seed", "stop")


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    # Whatever is left after the known keywords would be silently ignored: refused by name.
    if kwargs:
        raise TypeError(f"RagCompressLLM got unsupported keyword argument(s): {', '.join(sorted(kwargs))}")


def _kv_turns(messages: Sequence[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last message, a user's) and the turns before it as history: the KV path
    renders them after the passages' chunks, before the question (chunks stay reusable)."""
    turns = message_turns(messages)
    if turns[-1][0] != "user":
        raise ValueError("with passages= the last message must be the user's question")
    return turns[-1][1], turns[:-1]


def _text_stream(gen: Generator, ids: list[int], max_new_tokens: int, sampling: Sampling) -> AnswerStream:
    """The text path's stream over ready prompt ids (``Generator.stream`` over a chat prompt)."""

    def begin() -> tuple[Iterator[int], Callable[[list[int]], Answer]]:
        start, timing = time.perf_counter(), dict[str, float]()
        tokens = gen.iter_tokens(ids, None, max_new_tokens, timing=timing, start=start, sampling=sampling)

        def finish(done: list[int]) -> Answer:
            return gen.answer_of(done, len(ids), len(ids), start, timing.get("ttft_ms"), stop=sampling.stop)

        return tokens, finish

    return AnswerStream(gen, begin, sampling.stop)


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
    # raw["usage"] is where LlamaIndex's TokenCountingHandler reads an LLM's own token counts.
    raw = {STATS_KEY: s.as_dict(), "usage": usage}
    return CompletionResponse(text=answer.text, raw=raw, additional_kwargs=usage)


def _chat_response(r: CompletionResponse) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=r.text)
    return ChatResponse(message=message, delta=r.delta, raw=r.raw, additional_kwargs=r.additional_kwargs)


def _responses(stream: AnswerStream) -> collections.abc.Generator[CompletionResponse, None, None]:
    """Cumulative responses with each piece as ``delta``; the last one also carries the usage and
    statistics (known once the stream is exhausted, hence one piece held back)."""
    text, held = "", None
    for piece in stripped(stream):
        if held is not None:
            yield CompletionResponse(text=text, delta=held)
        text, held = text + piece, piece
    if held is not None:
        done = _completion(stream.answer) if stream.answer is not None else None
        raw, usage = (done.raw, done.additional_kwargs) if done is not None else ({}, {})
        yield CompletionResponse(text=text, delta=held, raw=raw, additional_kwargs=usage)


async def _in_threads(items: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """The blocking iterator, each step in a worker thread, so the event loop keeps running."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, items, done)
        if item is done:
            return
        yield item
