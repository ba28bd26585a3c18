"""``ChatRagCompress``: a LangChain chat model over ragcompress's reader, on two paths.

- **KV path** when the request carries documents: they arrive as a list through a structured
  channel (the ``documents=`` call argument, usually bound with ``.bind(documents=...)``; the
  ``retriever`` field; or :func:`~langchain_ragcompress.chains.create_kv_documents_chain`),
  never parsed out of a prompt string. Each document is one KV chunk
  (``ragcompress.kv.answer.KVAnswerer``): prefilled once, stored by content, reused by every
  later request that carries it; only the question is prefilled per request.
- **Text path** otherwise (plain ``prompt | llm``): the conversation is rendered with the
  model's chat template and decoded by ``ragcompress.generate.Generator``'s decode loop.

Both paths stream; ``invoke`` is the join of the stream, so the two always agree. Every answer
carries ``usage_metadata`` (input/output/total tokens) and ``response_metadata["ragcompress"]``
(the path, and on the KV path ``chunks_hit``, ``chunks_encoded``, ``chunk_tokens`` kept,
``chunk_bytes``, ``document_ids``; ``ttft_ms`` and ``total_ms`` on both).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from langchain_ragcompress._chat_io import Turn, chat_ids, kv_request, passages_of, turns_of
from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.models.load import DEFAULT_READER
from ragcompress.sampling import Sampling
from ragcompress.streaming import stripped
from ragcompress.types import Passage

__all__ = ["ChatRagCompress"]

# Arguments every LangChain chat model is given by provider-neutral code (init_chat_model, the
# standard tests): a local model has no key, no network call to time out and nothing to retry.
_IGNORED_INIT = ("api_key", "timeout", "max_retries")
# Call arguments LangChain itself adds; they do not change what this model does.
_IGNORED_CALL = ("stream", "ls_structured_output_format")
# Fields (and call arguments) that make the request's ragcompress.sampling.Sampling.
_SAMPLING = ("temperature", "top_p", "top_k", "seed")


class ChatRagCompress(BaseChatModel):
    """A chat model that answers from documents' cached KV chunks, or from the plain prompt.

    Reader: ``generator`` (a ``ragcompress.generate.Generator``), or one built from ``model``
    (a packaged alias, local path; ``None``: the packaged SmolLM2), ``device`` and ``dtype``.
    KV path: ``answerer`` (a ``KVAnswerer`` over that generator), or one built on first use
    from ``cache_dir`` (a safetensors disk tier behind the memory tier), ``presses`` (KV press
    specs), ``memory_bytes`` and ``assembly`` (e.g. ``{"name": "blend", "recompute": 0.15}``).
    ``retriever``: documents for requests that bring none (retrieved for the last human
    message). ``max_tokens`` (None: the generator's ``max_new_tokens``) and ``stop`` are
    defaults that call arguments override, as are the sampling settings (``temperature``
    0 or None: greedy, the default; ``top_p``, ``top_k``, ``seed``: see
    ``ragcompress.sampling.Sampling``; None leaves Sampling's default).
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", populate_by_name=True, protected_namespaces=()
    )

    model_name: str | None = Field(default=None, alias="model")
    device: str | None = None
    dtype: str | None = None
    generator: Any = None
    answerer: Any = None
    cache_dir: str | os.PathLike[str] | None = None
    presses: list[Any] = Field(default_factory=list)
    memory_bytes: int = Field(default=2 << 30, gt=0)
    assembly: Any = None
    retriever: BaseRetriever | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    streaming: bool = False  # invoke() goes through the stream (tokens reach callbacks)

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _label: str = PrivateAttr(default=DEFAULT_READER)

    @model_validator(mode="before")
    @classmethod
    def _drop_provider_arguments(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if k not in _IGNORED_INIT}
        return values

    @model_validator(mode="after")
    def _build_reader(self) -> ChatRagCompress:
        self._sampling({}, list(self.stop or []))  # bad sampling settings fail here, named
        if self.answerer is not None:
            if not isinstance(self.answerer, KVAnswerer):
                raise TypeError(
                    f"answerer must be a ragcompress KVAnswerer, got {type(self.answerer).__name__}"
                )
            if self.generator is not None and self.generator is not self.answerer.generator:
                raise ValueError(
                    "answerer= and generator= disagree: give one (the answerer has its generator)"
                )
            self.generator = self.answerer.generator
        if self.generator is None:
            self.generator = Generator(model=self.model_name, device=self.device, dtype=self.dtype)
        elif not isinstance(self.generator, Generator):
            raise TypeError(f"generator must be a ragcompress Generator, got {type(self.generator).__name__}")
        elif self.model_name is not None and self.model_name != self.generator.model:
            raise ValueError(f"model={self.model_name!r} and generator= disagree: give one of them")
        self._label = _label_of(self.generator)
        return self

    # -- BaseChatModel ------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "ragcompress"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.label,
            "max_tokens": self.max_tokens,
            "presses": self.presses,
            "assembly": self.assembly,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="ragcompress", ls_model_type="chat")
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self.label
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The join of the stream: invoke and stream give the same text and metadata.
        return generate_from_stream(self._stream(messages, stop, None, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        info: dict[str, Any] = {}
        pieces: list[str] = []
        for piece in self._pieces(messages, stop, info, kwargs):
            pieces.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        usage, metadata = self._metadata(info, "".join(pieces))
        last = AIMessageChunk(
            content="", usage_metadata=usage, response_metadata=metadata, chunk_position="last"
        )
        yield ChatGenerationChunk(message=last)

    # _agenerate and _astream: BaseChatModel's defaults run the sync ones in the executor, one
    # chunk at a time; decoding releases the GIL inside torch ops, so the event loop stays free.

    # -- the two paths ------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The model's name in traces and ``response_metadata["model_name"]``: ``model``, the
        generator's model, or the name the wrapped model's config gives (fixed when built)."""
        return self._label

    def kv_answerer(self) -> KVAnswerer:
        """The KV path's answerer, built on first use (loads the model) and kept."""
        with self._lock:
            if self.answerer is None:
                self.answerer = KVAnswerer.from_generator(
                    self.generator,
                    cache_dir=self.cache_dir,
                    presses=self.presses,
                    memory_bytes=self.memory_bytes,
                    assembly=self.assembly,
                )
        answerer: KVAnswerer = self.answerer
        return answerer

    def _pieces(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        info: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> Iterator[str]:
        """The answer's text pieces; ``info`` gets the statistics as they become known. Arguments
        are checked here, before anything runs."""
        call = dict(kwargs)
        documents = call.pop("documents", None)
        max_tokens = call.pop("max_tokens", self.max_tokens)
        model = call.pop("model", None)
        if model is not None and model != self.label:
            raise ValueError(f"model={model!r}: this chat model serves {self.label!r} only")
        for key in _IGNORED_CALL:
            call.pop(key, None)
        sampling = self._sampling(call, list(self.stop or []) if stop is None else stop)
        if call:
            raise TypeError(f"ChatRagCompress got unexpected call arguments: {sorted(call)}")
        turns = turns_of(messages)
        passages = None if documents is None else passages_of(documents)
        if passages is None and self.retriever is not None and turns[-1][0] == "user":
            passages = passages_of(self.retriever.invoke(turns[-1][1]), "the retriever's documents")
        if passages is None:
            return self._text_pieces(turns, max_tokens, sampling, info)
        return self._kv_pieces(turns, passages, max_tokens, sampling, info)

    def _sampling(self, call: dict[str, Any], stop: Sequence[str]) -> Sampling:
        """The request's ``Sampling``: call arguments (popped from ``call``) over the fields."""
        given = {k: call.pop(k) if k in call else getattr(self, k) for k in _SAMPLING}
        if isinstance(stop, str):
            raise TypeError("stop must be a list of strings, not a str: write stop=['\\n']")
        return Sampling(**{k: v for k, v in given.items() if v is not None}, stop=tuple(stop))

    def _text_pieces(
        self, turns: list[Turn], max_tokens: int | None, sampling: Sampling, info: dict[str, Any]
    ) -> Iterator[str]:
        gen: Generator = self.generator
        ids = chat_ids(gen.tokenizer, turns)
        gen.check_length(len(ids), max_tokens)
        info.update(path="text", input_tokens=len(ids), output_tokens=0)
        start = time.perf_counter()

        def counted() -> Iterator[int]:
            for token in gen.iter_tokens(ids, None, max_tokens, sampling=sampling):
                info["output_tokens"] += 1
                yield token

        def run() -> Iterator[str]:
            try:
                # text_pieces ends before a stop string and asks for no token after it
                for piece in stripped(gen.text_pieces(counted(), sampling.stop)):
                    info.setdefault("ttft_ms", (time.perf_counter() - start) * 1e3)
                    yield piece
            finally:
                info["total_ms"] = (time.perf_counter() - start) * 1e3
                info.setdefault("ttft_ms", info["total_ms"])

        return run()

    def _kv_pieces(
        self,
        turns: list[Turn],
        passages: list[Passage],
        max_tokens: int | None,
        sampling: Sampling,
        info: dict[str, Any],
    ) -> Iterator[str]:
        answerer = self.kv_answerer()
        question, history = kv_request(turns)
        layout = answerer.generator.layout
        info.update(path="kv", document_ids=[p.id for p in passages])
        stats: dict[str, Any] = {}
        start = time.perf_counter()

        def run() -> Iterator[str]:
            try:
                yield from answerer.stream_with_stats(
                    question, passages, stats, max_tokens, sampling=sampling, history=history
                )
            finally:
                stats.setdefault("total_ms", (time.perf_counter() - start) * 1e3)
                stats.setdefault("ttft_ms", stats["total_ms"])
                # Input: what the answer attended to, the cached prefix, the chunks' kept tokens,
                # and history + question (prefilled for this request).
                asked = stats.pop("prompt_tokens", None)
                if asked is None:  # the consumer stopped early: count them from the layout
                    asked = len(layout.question_ids(question, history))
                kept = int(stats.get("chunk_tokens", 0))
                info["input_tokens"] = len(layout.prefix_ids()) + kept + int(asked)
                if "new_tokens" in stats:
                    info["output_tokens"] = int(stats.pop("new_tokens"))
                stats.pop("context_tokens", None)
                info.update(stats)

        return run()

    def _metadata(self, info: dict[str, Any], text: str) -> tuple[UsageMetadata, dict[str, Any]]:
        if "output_tokens" not in info:  # a KV stream closed early: count the text's tokens
            tok = self.generator.tokenizer
            info["output_tokens"] = len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
        n_in, n_out = int(info.pop("input_tokens", 0)), int(info.pop("output_tokens"))
        usage = UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)
        return usage, {"model_name": self.label, "ragcompress": info}


def _label_of(gen: Generator) -> str:
    if gen.model:
        return str(gen.model)
    lm = getattr(gen, "_lm", None)  # set when the generator wraps a loaded model (from_model)
    if lm is None:
        return DEFAULT_READER  # what Generator(model=None) loads
    return str(getattr(lm.config, "name_or_path", "")) or "ragcompress-reader"
