"""RagCompressKVChain with real LangChain objects (Documents, an InMemoryVectorStore over the
packaged MiniLM, LCEL) and a tiny seeded Llama behind a real KVAnswerer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.runnables.utils import AddableDict
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import RagCompressKVChain

from ragcompress.generate import Generator
from ragcompress.kv.answer import KVAnswerer
from ragcompress.types import Passage

QUESTION = "How tall is the Eiffel Tower and when was it built?"


@pytest.fixture(scope="module")
def generator() -> Generator:
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tok = load_tokenizer()
    # A wider init than the default makes the random model's greedy answers depend on the
    # context, so that order and content changes show up in the text.
    model = make_tiny_llama(len(tok), seed=0, initializer_range=0.2)
    return Generator.from_model(model, tok, max_new_tokens=6)


@pytest.fixture()
def chain(generator: Generator) -> RagCompressKVChain:
    return RagCompressKVChain.from_generator(generator)


def _direct(generator: Generator, question: str, docs: list[Document]) -> str:
    """The reference: a separate KVAnswerer over the same generator, called directly."""
    passages = [Passage(text=d.page_content) for d in docs]
    return KVAnswerer.from_generator(generator).answer(question, passages).text


def test_second_call_encodes_nothing_and_answers_the_same(
    chain: RagCompressKVChain, generator: Generator, documents: list[Document]
) -> None:
    docs = documents[:3]
    first = chain.invoke({"question": QUESTION, "documents": docs})
    assert first["stats"]["chunks_encoded"] == 3 and first["stats"]["chunks_hit"] == 0
    second = chain.invoke({"question": QUESTION, "documents": docs})
    assert second["stats"]["chunks_hit"] == 3 and second["stats"]["chunks_encoded"] == 0
    assert second["answer"] == first["answer"]
    assert first["answer"], "the seeded model says something"
    assert first["answer"] == _direct(generator, QUESTION, docs)
    # The documents are the input objects themselves, in order.
    assert all(a is b for a, b in zip(second["documents"], docs, strict=True))
    assert {"ttft_ms", "total_ms", "chunks", "chunk_tokens", "new_tokens"} <= set(second["stats"])
    assert second["stats"]["chunks"] == 3


def test_retrieval_order_is_the_chunk_order(
    chain: RagCompressKVChain, generator: Generator, documents: list[Document]
) -> None:
    docs = documents[:3]
    reverse = docs[::-1]
    expected, expected_reverse = _direct(generator, QUESTION, docs), _direct(generator, QUESTION, reverse)
    assert expected != expected_reverse, "precondition: this model's answer depends on the order"
    assert chain.invoke({"question": QUESTION, "documents": docs})["answer"] == expected
    out = chain.invoke({"question": QUESTION, "documents": reverse})
    assert out["stats"]["chunks_hit"] == 3, "same chunks, reused in another order"
    assert out["answer"] == expected_reverse
    assert [d.id for d in out["documents"]] == [d.id for d in reverse]


def test_no_documents_answers_from_the_prefix_alone(chain: RagCompressKVChain, generator: Generator) -> None:
    out = chain.invoke({"question": QUESTION, "documents": []})
    assert out["documents"] == []
    assert out["stats"]["chunks"] == 0 and out["stats"]["chunks_encoded"] == 0
    assert out["answer"] == KVAnswerer.from_generator(generator).answer(QUESTION, []).text


def test_stream_joins_to_the_invoked_answer(chain: RagCompressKVChain, documents: list[Document]) -> None:
    inputs = {"question": QUESTION, "documents": documents[:2]}
    invoked = chain.invoke(inputs)
    pieces = list(chain.pick("answer").stream(inputs))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == invoked["answer"]
    total = AddableDict()
    for chunk in chain.stream(inputs):  # LangChain's way of joining streamed dicts
        total = total + AddableDict(chunk)
    assert total["answer"] == invoked["answer"]
    assert all(a is b for a, b in zip(total["documents"], documents[:2], strict=True))
    assert total["stats"]["chunks_hit"] == 2 and total["stats"]["chunks_encoded"] == 0
    assert total["stats"]["ttft_ms"] <= total["stats"]["total_ms"]


def test_async(chain: RagCompressKVChain, documents: list[Document]) -> None:
    inputs = {"question": QUESTION, "documents": documents[1:4]}
    invoked = chain.invoke(inputs)

    async def run() -> tuple[dict[str, Any], list[str]]:
        out = await chain.ainvoke(inputs)
        pieces = [p async for p in chain.pick("answer").astream(inputs)]
        return out, pieces

    out, pieces = asyncio.run(run())
    assert out["answer"] == invoked["answer"] and out["stats"]["chunks_encoded"] == 0
    assert "".join(pieces) == invoked["answer"]


def test_lcel_with_a_real_retriever(
    chain: RagCompressKVChain, generator: Generator, vector_store: InMemoryVectorStore
) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 3})
    rag = {"question": RunnablePassthrough(), "documents": retriever} | chain
    retrieved = retriever.invoke(QUESTION)
    assert retrieved[0].id == "eiffel"
    first = rag.invoke(QUESTION)
    assert [d.id for d in first["documents"]] == [d.id for d in retrieved]
    assert first["answer"] == _direct(generator, QUESTION, retrieved)
    second = rag.invoke(QUESTION)
    assert second["stats"]["chunks_encoded"] == 0 and second["answer"] == first["answer"]

    # Further LCEL: only the text, streamed through the whole chain.
    text_only = rag | RunnableLambda(lambda out: out["answer"])
    assert text_only.invoke(QUESTION) == first["answer"]
    assert "".join(rag.pick("answer").stream(QUESTION)) == first["answer"]
    other = "Which river flows through London?"
    batched = rag.batch([QUESTION, other])
    assert batched[0]["answer"] == first["answer"]
    assert batched[1]["documents"][0].id == "thames"


def test_disk_cache_survives_a_new_chain(
    generator: Generator, documents: list[Document], tmp_path: Path
) -> None:
    inputs = {"question": QUESTION, "documents": documents[:2]}
    first = RagCompressKVChain.from_generator(generator, cache_dir=tmp_path).invoke(inputs)
    # A new chain (fresh memory tier) over the same directory, as a new process would build.
    again = RagCompressKVChain.from_generator(generator, cache_dir=tmp_path).invoke(inputs)
    assert again["stats"]["chunks_hit"] == 2 and again["stats"]["chunks_encoded"] == 0
    assert again["answer"] == first["answer"]


def test_bad_input_is_rejected_clearly(chain: RagCompressKVChain) -> None:
    with pytest.raises(TypeError, match="'question' and 'documents'"):
        chain.invoke({"query": QUESTION, "documents": []})
    with pytest.raises(TypeError, match="document #1"):
        chain.invoke({"question": QUESTION, "documents": [Document(page_content="ok"), "not a document"]})
    with pytest.raises(TypeError, match="list of Documents"):
        chain.invoke({"question": QUESTION, "documents": Document(page_content="one")})
    with pytest.raises(TypeError, match="'question' must be a str"):
        chain.invoke({"question": {"question": QUESTION}, "documents": []})
    with pytest.raises(TypeError, match="KVAnswerer"):
        RagCompressKVChain(answerer=object())
