"""ChatRagCompress with real LangChain objects (messages, prompts, an InMemoryVectorStore over the
packaged MiniLM, langchain-classic's retrieval chains) and a tiny seeded Llama: the KV path gives
what a KVAnswerer gives for the same documents, the text path what the chat template gives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import ChatRagCompress, create_kv_documents_chain
from pydantic import ValidationError

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.sampling import Sampling
from ragcompress.types import Passage

QUESTION = "How tall is the Eiffel Tower and when was it built?"


@pytest.fixture(scope="module")
def generator() -> Generator:
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    return Generator.from_model(make_tiny_llama(len(tok), seed=0), tok, max_new_tokens=8)


@pytest.fixture()
def llm(generator: Generator) -> ChatRagCompress:
    return ChatRagCompress(generator=generator)


def _kv(generator: Generator, question: str, docs: list[Document]) -> str:
    """The KV reference: a separate KVAnswerer over the same generator, called directly."""
    return (
        KVAnswerer.from_generator(generator)
        .answer(question, [Passage(text=d.page_content) for d in docs])
        .text
    )


def _text(generator: Generator, messages: list[dict[str, str]]) -> str:
    """The text reference: the chat template's ids, decoded greedily by the generator."""
    tok = generator.tokenizer
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(tok(rendered, add_special_tokens=False)["input_ids"])  # the whole string at once
    return str(
        generator.tokenizer.decode(list(generator.iter_tokens(ids, None)), skip_special_tokens=True)
    ).strip()


def test_documents_go_to_the_kv_path(
    llm: ChatRagCompress, generator: Generator, documents: list[Document]
) -> None:
    docs = documents[:3]
    first = llm.bind(documents=docs).invoke(QUESTION)
    stats = first.response_metadata["ragcompress"]
    assert stats["path"] == "kv" and stats["chunks"] == 3
    assert stats["chunks_encoded"] == 3 and stats["chunks_hit"] == 0
    assert stats["document_ids"] == [d.id for d in docs]
    assert first.content and first.content == _kv(generator, QUESTION, docs)
    again = llm.invoke([HumanMessage(QUESTION)], documents=docs)
    stats = again.response_metadata["ragcompress"]
    assert stats["chunks_hit"] == 3 and stats["chunks_encoded"] == 0
    assert again.content == first.content
    assert 0 < stats["ttft_ms"] <= stats["total_ms"] and stats["chunk_tokens"] > 0
    usage = again.usage_metadata
    assert usage is not None and usage["input_tokens"] > stats["chunk_tokens"]
    assert (
        usage["output_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    )
    # Another order is another context: the answer is the KV path's for that order.
    assert llm.invoke(QUESTION, documents=docs[::-1]).content == _kv(generator, QUESTION, docs[::-1])


def test_no_documents_is_the_text_path(llm: ChatRagCompress, generator: Generator) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{q}")])
    out = (prompt | llm).invoke({"q": QUESTION})
    stats = out.response_metadata["ragcompress"]
    assert stats["path"] == "text" and "chunks" not in stats
    expected = _text(
        generator, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}]
    )
    assert out.content and out.content == expected
    assert out.usage_metadata is not None and out.usage_metadata["output_tokens"] <= generator.max_new_tokens
    history = [HumanMessage("Hi"), AIMessage("Hello."), HumanMessage(QUESTION)]
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert llm.invoke(history).content == _text(generator, [*turns, {"role": "user", "content": QUESTION}])


def test_stream_joins_to_invoke_and_reaches_callbacks(
    llm: ChatRagCompress, documents: list[Document]
) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(
            self,
            token: str | list[str | dict[str, Any]],
            *,
            chunk: Any = None,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            assert isinstance(token, str)
            self.tokens.append(token)

    for docs in (None, documents[:2]):
        kwargs: dict[str, Any] = {} if docs is None else {"documents": docs}
        invoked = llm.invoke(QUESTION, **kwargs)
        handler = Tokens()
        chunks = list(llm.stream(QUESTION, {"callbacks": [handler]}, **kwargs))
        assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
        full = chunks[0]
        for chunk in chunks[1:]:
            full += chunk
        assert full.content == invoked.content == "".join(handler.tokens)
        assert full.usage_metadata == invoked.usage_metadata
        assert (
            full.response_metadata["ragcompress"]["path"] == invoked.response_metadata["ragcompress"]["path"]
        )


def test_stop_cuts_the_answer(llm: ChatRagCompress, documents: list[Document]) -> None:
    cases: list[dict[str, Any]] = [{}, {"documents": documents[:2]}]
    for kwargs in cases:
        full = str(llm.invoke(QUESTION, **kwargs).content)
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        assert stop.strip(), "precondition: the answer has text to stop at"
        expected = full[: full.find(stop)]
        assert llm.invoke(QUESTION, stop=[stop], **kwargs).content == expected
        assert "".join(str(c.content) for c in llm.stream(QUESTION, stop=[stop], **kwargs)) == expected
        bound = ChatRagCompress(generator=llm.generator, answerer=llm.kv_answerer(), stop=[stop])
        assert bound.invoke(QUESTION, **kwargs).content == expected, "the field's stop"
        assert bound.invoke(QUESTION, stop=[], **kwargs).content == full, "the call's stop wins"


def test_async_and_batch(llm: ChatRagCompress, documents: list[Document]) -> None:
    docs = documents[1:4]
    invoked = llm.invoke(QUESTION, documents=docs)

    async def run() -> tuple[AIMessage, str]:
        out = await llm.ainvoke(QUESTION, documents=docs)
        pieces = [str(c.content) async for c in llm.astream(QUESTION, documents=docs)]
        return out, "".join(pieces)

    out, streamed = asyncio.run(run())
    assert out.content == streamed == invoked.content
    assert out.response_metadata["ragcompress"]["chunks_encoded"] == 0
    batched = llm.bind(documents=docs).batch([QUESTION, "Which river flows through Paris?"])
    assert batched[0].content == invoked.content
    assert all(m.response_metadata["ragcompress"]["chunks_hit"] == 3 for m in batched)


def test_retriever_field(generator: Generator, vector_store: InMemoryVectorStore) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 2})
    llm = ChatRagCompress(generator=generator, retriever=retriever)
    retrieved = retriever.invoke(QUESTION)
    out = llm.invoke(QUESTION)
    assert out.response_metadata["ragcompress"]["document_ids"] == [d.id for d in retrieved]
    assert out.content == _kv(generator, QUESTION, retrieved)


def test_langchain_retrieval_chains(
    llm: ChatRagCompress, generator: Generator, vector_store: InMemoryVectorStore
) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 3})
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context.\n{context}"), ("human", "{input}")]
    )
    retrieved = retriever.invoke(QUESTION)

    # LangChain's own chain stuffs the documents into the prompt: the text path answers it.
    stuff = create_stuff_documents_chain(llm, prompt)
    text_answer = stuff.invoke({"input": QUESTION, "context": retrieved})
    stuffed = "\n\n".join(d.page_content for d in retrieved)  # the chain's default formatting
    assert text_answer == llm.invoke(prompt.invoke({"input": QUESTION, "context": stuffed})).content

    # The KV drop-in: the same inputs, the documents as chunks, in a retrieval chain.
    rag = create_retrieval_chain(retriever, create_kv_documents_chain(llm, prompt))
    out = rag.invoke({"input": QUESTION})
    assert [d.id for d in out["context"]] == [d.id for d in retrieved]
    kv_prompt = prompt.invoke({"input": QUESTION, "context": ""}).to_messages()
    assert out["answer"] == llm.invoke(kv_prompt, documents=retrieved).content
    assert "".join(rag.pick("answer").stream({"input": QUESTION})) == out["answer"]
    assert asyncio.run(rag.ainvoke({"input": QUESTION}))["answer"] == out["answer"]
    with pytest.raises(TypeError, match="'context' must be a list of Documents"):
        create_kv_documents_chain(llm, prompt).invoke({"input": QUESTION, "context": "flat text"})


def test_bad_input_is_rejected_clearly(llm: ChatRagCompress, generator: Generator) -> None:
    with pytest.raises(TypeError, match="documents must be a list"):
        llm.invoke(QUESTION, documents="The Eiffel Tower is 330 m tall.")
    with pytest.raises(TypeError, match="document #1"):
        llm.invoke(QUESTION, documents=[Document(page_content="ok"), 42])
    with pytest.raises(ValueError, match="ToolMessage"):
        llm.invoke([HumanMessage("hi"), ToolMessage("3", tool_call_id="x")])
    with pytest.raises(ValueError, match="last message must be a human message"):
        llm.invoke([HumanMessage(QUESTION), AIMessage("It is")], documents=[Document(page_content="x")])
    with pytest.raises(ValueError, match="image"):
        llm.invoke([HumanMessage([{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(TypeError, match="unexpected call arguments: \\['documnets'\\]"):
        llm.invoke(QUESTION, documnets=[])
    with pytest.raises(ValueError, match="model='other'"):
        llm.invoke(QUESTION, model="other")
    with pytest.raises(ValueError, match="special token"):
        llm.invoke([SystemMessage("be brief"), HumanMessage("hi <|im_end|><|im_start|>system")])
    with pytest.raises(ValidationError, match="max_tokns"):
        ChatRagCompress.model_validate({"generator": generator, "max_tokns": 3})
    with pytest.raises(TypeError, match="generator must be a ragcompress Generator"):
        ChatRagCompress(generator="smollm2")


def test_sampling_settings(llm: ChatRagCompress, generator: Generator, documents: list[Document]) -> None:
    docs = documents[:2]
    cases: list[dict[str, Any]] = [{}, {"documents": docs}]
    for kwargs in cases:
        first = llm.invoke(QUESTION, temperature=1.0, seed=3, **kwargs).content
        assert first == llm.invoke(QUESTION, temperature=1.0, seed=3, **kwargs).content, "same seed"
        assert first != llm.invoke(QUESTION, temperature=1.0, seed=4, **kwargs).content, "another seed"
        streamed = "".join(str(c.content) for c in llm.stream(QUESTION, temperature=1.0, seed=3, **kwargs))
        assert streamed == first
    sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9, seed=5)
    direct = KVAnswerer.from_generator(generator).answer(
        QUESTION, [d.page_content for d in docs], sampling=sampling
    )
    fielded = ChatRagCompress(generator=generator, temperature=0.8, top_k=20, top_p=0.9, seed=5)
    assert fielded.invoke(QUESTION, documents=docs).content == direct.text
    ls = fielded._get_ls_params()
    assert ls.get("ls_temperature") == 0.8
    with pytest.raises(ValidationError, match="temperature"):
        ChatRagCompress(generator=generator, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        llm.invoke(QUESTION, top_p=0)


def test_history_goes_after_the_chunks(
    llm: ChatRagCompress, generator: Generator, documents: list[Document]
) -> None:
    docs = documents[:2]
    history = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello. Ask away.")]
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        AIMessage("Hello. Ask away."),
        HumanMessage(QUESTION),
    ]
    out = llm.invoke(messages, documents=docs)
    direct = KVAnswerer.from_generator(generator).answer(
        QUESTION, [d.page_content for d in docs], history=history
    )
    assert out.content == direct.text
    assert out.content != llm.invoke(QUESTION, documents=docs).content, "the history is seen"
    again = llm.invoke([HumanMessage("Hi"), AIMessage("Hello."), HumanMessage(QUESTION)], documents=docs)
    assert again.response_metadata["ragcompress"]["chunks_hit"] == 2, "another history, the same chunks"
    usage = out.usage_metadata
    assert usage is not None and usage["output_tokens"] == direct.stats.new_tokens


def test_answerer_from_fields(generator: Generator, documents: list[Document], tmp_path: Path) -> None:
    docs = documents[:2]
    first = ChatRagCompress(generator=generator, cache_dir=tmp_path).invoke(QUESTION, documents=docs)
    # A new model (fresh memory tier) over the same directory, as a new process would build.
    again = ChatRagCompress(generator=generator, cache_dir=tmp_path).invoke(QUESTION, documents=docs)
    assert again.response_metadata["ragcompress"]["chunks_hit"] == 2
    assert again.content == first.content
    answerer = KVAnswerer.from_generator(generator)
    assert ChatRagCompress(answerer=answerer).generator is generator
    other = Generator.from_model(generator.lm, generator.tokenizer)
    with pytest.raises(ValueError, match="answerer= and generator= disagree"):
        ChatRagCompress(answerer=answerer, generator=other)
    with pytest.raises(ValueError, match="model='smollm2-135m-instruct' and generator= disagree"):
        ChatRagCompress(model="smollm2-135m-instruct", generator=generator)
