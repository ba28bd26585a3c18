"""RagCompressLLM where LlamaIndex users put an LLM: ``Settings.llm``, query engines over a
VectorStoreIndex (packaged MiniLM), chat engines, and the KV synthesizer sharing its chunks.
No OpenAI anywhere: ``llama-index-llms-openai`` is never imported."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.chat_engine.types import ChatMode
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent
from llama_index.core.schema import TextNode
from llama_index.llms.ragcompress import RagCompressLLM

from ragcompress.generate import Generator
from ragcompress.types import STATS_KEY

QUERY = "How many moons does Jupiter have?"
CORPUS = [
    ("jupiter", "Jupiter is the largest planet in the Solar System. Jupiter has at least 95 known moons."),
    ("mars", "Mars is the fourth planet from the Sun. Mars has two small moons, Phobos and Deimos."),
    ("printing", "Johannes Gutenberg introduced movable-type printing to Europe around 1440."),
    ("mitochondria", "Mitochondria are organelles that produce most of the cell's supply of ATP."),
]


@pytest.fixture(autouse=True)
def settings_llm() -> Iterator[None]:
    """Each test sets ``Settings.llm`` itself; the global is put back afterwards."""
    previous = Settings._llm
    Settings._llm = None
    yield
    Settings._llm = previous
    assert "llama_index.llms.openai" not in sys.modules


@pytest.fixture(scope="module")
def index(embed_model: BaseEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex([TextNode(id_=i, text=t) for i, t in CORPUS], embed_model=embed_model)


class Calls(BaseEventHandler):
    """The messages of every LLM chat call, from LlamaIndex's instrumentation events (callback
    managers are replaced by ``Settings.llm`` and the engines, the dispatcher is not)."""

    messages: list[list[ChatMessage]] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)  # of completion calls

    @classmethod
    def class_name(cls) -> str:
        return "Calls"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, LLMChatStartEvent):
            self.messages.append(list(event.messages))
        elif isinstance(event, LLMCompletionStartEvent):
            self.prompts.append(event.prompt)


@pytest.fixture()
def calls() -> Iterator[Calls]:
    handler = Calls()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)


def test_settings_llm_answers_a_query_engine(
    generator: Generator, index: VectorStoreIndex, calls: Calls
) -> None:
    llm = RagCompressLLM(generator=generator)
    Settings.llm = llm
    response = index.as_query_engine(similarity_top_k=2).query(QUERY)
    assert isinstance(response, Response) and response.source_nodes[0].node.node_id == "jupiter"
    [messages] = calls.messages  # compact: both nodes fit one call
    prompt = messages[-1].content or ""
    assert all(n.node.get_content() in prompt for n in response.source_nodes) and QUERY in prompt
    assert response.response and response.response == llm.chat(messages).message.content


def test_streaming_query_engine(generator: Generator, index: VectorStoreIndex) -> None:
    Settings.llm = RagCompressLLM(generator=generator)
    plain = index.as_query_engine(similarity_top_k=2).query(QUERY)
    streaming = index.as_query_engine(similarity_top_k=2, streaming=True).query(QUERY)
    assert isinstance(plain, Response) and isinstance(streaming, StreamingResponse)
    assert "".join(streaming.response_gen) == plain.response


def test_kv_synthesizer_from_the_llm_needs_no_llm_argument(
    generator: Generator, index: VectorStoreIndex
) -> None:
    kv = pytest.importorskip("llama_index.postprocessor.ragcompress")
    llm = RagCompressLLM(generator=generator)
    Settings.llm = llm
    synth = kv.RagCompressKVSynthesizer.from_llm(llm)
    assert synth.sampling == llm.sampling and synth.max_new_tokens == llm.max_new_tokens
    sampled = RagCompressLLM(generator=generator, temperature=1.5, seed=4)
    assert kv.RagCompressKVSynthesizer.from_llm(sampled).sampling == sampled.sampling
    engine = index.as_query_engine(response_synthesizer=synth, similarity_top_k=2)  # no llm=
    response = engine.query(QUERY)
    assert isinstance(response, Response) and response.metadata is not None
    assert response.metadata[STATS_KEY]["chunks_encoded"] == 2
    # The LLM's own KV path reads the same chunks: nothing encoded again, the same answer.
    direct = llm.complete(QUERY, passages=response.source_nodes)
    assert direct.raw[STATS_KEY]["chunks_hit"] == 2 and direct.text == response.response
    with pytest.raises(TypeError, match="RagCompressLLM"):
        kv.RagCompressKVSynthesizer.from_llm(object())


def test_kv_synthesizer_without_settings_llm(generator: Generator, index: VectorStoreIndex) -> None:
    """Without ``Settings.llm``, ``as_query_engine`` would resolve LlamaIndex's default (OpenAI);
    a ``RetrieverQueryEngine`` built directly never asks for it."""
    kv = pytest.importorskip("llama_index.postprocessor.ragcompress")
    from llama_index.core.query_engine import RetrieverQueryEngine

    synth = kv.RagCompressKVSynthesizer.from_llm(RagCompressLLM(generator=generator))
    response = RetrieverQueryEngine(index.as_retriever(similarity_top_k=2), response_synthesizer=synth).query(
        QUERY
    )
    assert isinstance(response, Response) and response.response
    assert Settings._llm is None


def test_simple_chat_engine_keeps_the_history(generator: Generator) -> None:
    llm = RagCompressLLM(generator=generator)
    engine = SimpleChatEngine.from_defaults(llm=llm)
    first = engine.chat("Name a planet.").response
    second = engine.chat(QUERY).response
    history = [
        ChatMessage(role=MessageRole.USER, content="Name a planet."),
        ChatMessage(role=MessageRole.ASSISTANT, content=first),
        ChatMessage(role=MessageRole.USER, content=QUERY),
    ]
    assert second == llm.chat(history).message.content
    assert second != llm.chat(history[-1:]).message.content, "the first turn changes the answer"


def test_context_chat_engine(generator: Generator, index: VectorStoreIndex, calls: Calls) -> None:
    llm = RagCompressLLM(generator=generator)
    engine = index.as_chat_engine(chat_mode=ChatMode.CONTEXT, llm=llm, similarity_top_k=2)
    first = engine.chat(QUERY)
    assert first.source_nodes[0].node.node_id == "jupiter"
    second = engine.chat("And Mars?")
    assert [m.role for m in calls.messages[1]][-3:] == [
        MessageRole.USER,
        MessageRole.ASSISTANT,
        MessageRole.USER,
    ]
    assert calls.messages[1][-2].content == first.response  # the first answer is in the second call's history
    assert second.response == llm.chat(calls.messages[1]).message.content
    streamed: Any = index.as_chat_engine(chat_mode=ChatMode.CONTEXT, llm=llm, similarity_top_k=2).stream_chat(
        QUERY
    )
    assert "".join(streamed.response_gen) == first.response


def test_condense_plus_context_chat_engine(
    generator: Generator, index: VectorStoreIndex, calls: Calls
) -> None:
    llm = RagCompressLLM(generator=generator)
    engine = index.as_chat_engine(chat_mode=ChatMode.CONDENSE_PLUS_CONTEXT, llm=llm, similarity_top_k=2)
    first = engine.chat(QUERY)
    second = engine.chat("And Mars?")  # condensed into a standalone question by the LLM, then answered
    assert first.response and second.response and len(calls.messages) == 2
    [condense] = calls.prompts
    assert QUERY in condense and first.response in condense and "And Mars?" in condense
    assert second.response == llm.chat(calls.messages[1]).message.content


@pytest.mark.slow
def test_the_packaged_reader_as_settings_llm(index: VectorStoreIndex) -> None:
    Settings.llm = RagCompressLLM(max_new_tokens=16)  # the packaged SmolLM2-135M-Instruct
    assert Settings.llm.metadata.context_window >= 2048
    response = index.as_query_engine(similarity_top_k=2).query(QUERY)
    assert isinstance(response, Response) and response.response and response.response.strip()
    assert response.source_nodes[0].node.node_id == "jupiter"
    chat = index.as_chat_engine(chat_mode=ChatMode.CONTEXT, similarity_top_k=2).chat(QUERY)
    assert str(chat.response).strip()
