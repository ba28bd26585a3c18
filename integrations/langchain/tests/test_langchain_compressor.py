"""RagCompressDocumentCompressor with real LangChain objects: Documents, an InMemoryVectorStore
over the packaged MiniLM, ContextualCompressionRetriever and LCEL chains."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ragcompress import STATS_KEY, RagCompressDocumentCompressor

import ragcompress
from ragcompress import Budget, Passage
from ragcompress.text.base import TextCompressor, TokenCounter

SPEC = {"name": "sentences", "ratio": 0.5}
QUERY = "How tall is the Eiffel Tower and when was it built?"


def _by_id(docs: list[Document]) -> dict[str | None, Document]:
    return {d.id: d for d in docs}


def _check_identity(inputs: list[Document], outputs: list[Document]) -> None:
    """One-to-one, in input order, same id and metadata (plus the stats key), shorter text."""
    index = {d.id: i for i, d in enumerate(inputs)}
    ids = [d.id for d in outputs]
    assert len(ids) == len(set(ids)), "one output per input at most"
    assert all(i in index for i in ids)
    assert [index[i] for i in ids] == sorted(index[i] for i in ids), "input order kept"
    originals = _by_id(inputs)
    for out in outputs:
        src = originals[out.id]
        assert {k: v for k, v in out.metadata.items() if k != STATS_KEY} == src.metadata
        assert set(out.metadata[STATS_KEY]) >= {"compressor", "tokens_before", "tokens_after", "batch"}
        assert out.metadata[STATS_KEY]["tokens_after"] <= out.metadata[STATS_KEY]["tokens_before"]
        assert len(out.page_content) <= len(src.page_content)
        assert out.page_content.strip()


def test_identity_scores_and_stats_survive(documents: list[Document]) -> None:
    comp = RagCompressDocumentCompressor(compressor=ragcompress.build(SPEC))
    out = list(comp.compress_documents(documents, QUERY))
    assert out, "a ratio of 0.5 keeps something"
    _check_identity(documents, out)
    for doc in out:
        assert doc.metadata["relevance_score"] == _by_id(documents)[doc.id].metadata["relevance_score"]
        assert doc.metadata[STATS_KEY]["compressor"] == "sentences"
    # The inputs are left alone.
    assert all(STATS_KEY not in d.metadata for d in documents)
    assert sum(len(d.page_content) for d in out) < sum(len(d.page_content) for d in documents)


def test_budget_held(documents: list[Document]) -> None:
    budget = Budget(ratio=0.3)
    comp = RagCompressDocumentCompressor(compressor=SPEC, budget=budget)
    out, stats = comp.compress_documents_with_stats(documents, QUERY)
    count = TokenCounter()
    total_before = sum(count(d.page_content) for d in documents)
    assert stats.tokens_before == total_before
    assert sum(count(d.page_content) for d in out) <= budget.target(total_before)
    assert sum(d.metadata[STATS_KEY]["tokens_after"] for d in out) == stats.tokens_after


def test_ratio_one_keeps_every_document_whole(documents: list[Document]) -> None:
    comp = RagCompressDocumentCompressor(compressor={**SPEC, "ratio": 1.0})
    out = comp.compress_documents(documents, QUERY)
    assert [d.id for d in out] == [d.id for d in documents]
    assert [d.page_content for d in out] == [d.page_content for d in documents]


def test_empty_list_gives_empty_list() -> None:
    comp = RagCompressDocumentCompressor(compressor=SPEC)
    assert list(comp.compress_documents([], QUERY)) == []


@pytest.mark.parametrize("form", ["dict", "json", "object"])
def test_compressor_given_as_spec_or_object(documents: list[Document], form: str) -> None:
    given = {"dict": SPEC, "json": json.dumps(SPEC), "object": ragcompress.build(SPEC)}[form]
    comp = RagCompressDocumentCompressor(compressor=given)
    assert comp.compressor.spec() == ragcompress.build(SPEC).spec()
    reference = RagCompressDocumentCompressor(compressor=ragcompress.build(SPEC))
    assert [(d.id, d.page_content) for d in comp.compress_documents(documents, QUERY)] == [
        (d.id, d.page_content) for d in reference.compress_documents(documents, QUERY)
    ]


def test_bad_compressor_and_budget_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="no_such_method"):
        RagCompressDocumentCompressor(compressor={"name": "no_such_method"})
    with pytest.raises(TypeError, match="compress_with_stats"):
        RagCompressDocumentCompressor(compressor=object())
    with pytest.raises(ValueError, match="ratio"):
        RagCompressDocumentCompressor(compressor=SPEC, budget=0.0)
    comp = RagCompressDocumentCompressor(compressor=SPEC)
    with pytest.raises(TypeError, match="document #1"):
        comp.compress_documents([Document(page_content="ok"), "not a document"], QUERY)  # type: ignore[list-item]


def test_documents_without_ids_and_duplicates_stay_one_to_one() -> None:
    text = "Rivers carry water to the sea. The Seine flows through Paris. Bridges cross it."
    docs = [Document(page_content=text, metadata={"rank": rank}) for rank in (0, 1)]
    comp = RagCompressDocumentCompressor(compressor={**SPEC, "ratio": 1.0})
    out = comp.compress_documents(docs, "Which river flows through Paris?")
    assert [d.metadata["rank"] for d in out] == [0, 1]
    assert all(d.id is None for d in out)


@dataclass
class _ForeignIds(TextCompressor):
    """Breaks the contract on purpose: returns a passage that was not an input."""

    def _compress(
        self, passages: list[Passage], query: str, budget: Budget, tokens: list[int]
    ) -> list[Passage]:
        return [Passage(text="invented", id="not-an-input")]


_ForeignIds.registered_name = "foreign-ids"


def test_compressor_returning_unknown_ids_is_an_error(documents: list[Document]) -> None:
    comp = RagCompressDocumentCompressor(compressor=_ForeignIds())
    with pytest.raises(ValueError, match="not-an-input"):
        comp.compress_documents(documents, QUERY)


def test_async_matches_sync(documents: list[Document]) -> None:
    comp = RagCompressDocumentCompressor(compressor=SPEC)
    sync = comp.compress_documents(documents, QUERY)
    asynchronous = asyncio.run(comp.acompress_documents(documents, QUERY))
    assert [(d.id, d.page_content, d.metadata["relevance_score"]) for d in asynchronous] == [
        (d.id, d.page_content, d.metadata["relevance_score"]) for d in sync
    ]


def test_contextual_compression_retriever(vector_store: InMemoryVectorStore) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 4})
    retriever = ContextualCompressionRetriever(
        base_compressor=RagCompressDocumentCompressor(compressor=SPEC), base_retriever=base
    )
    retrieved = base.invoke(QUERY)
    assert retrieved[0].id == "eiffel"
    out = retriever.invoke(QUERY)
    _check_identity(retrieved, out)
    assert out[0].id == "eiffel"
    assert "330" in out[0].page_content, "the sentence that answers the query is kept"
    assert len(out[0].page_content) < len(retrieved[0].page_content)
    async_out = asyncio.run(retriever.ainvoke(QUERY))
    assert [(d.id, d.page_content) for d in async_out] == [(d.id, d.page_content) for d in out]


def test_lcel_chains(vector_store: InMemoryVectorStore) -> None:
    comp = RagCompressDocumentCompressor(compressor=SPEC)
    base = vector_store.as_retriever(search_kwargs={"k": 3})
    retriever = ContextualCompressionRetriever(base_compressor=comp, base_retriever=base)

    def format_docs(docs: list[Document]) -> str:
        return "\n\n".join(f"[{d.id}] {d.page_content}" for d in docs)

    context = (retriever | format_docs).invoke(QUERY)
    assert context.startswith("[eiffel] ")
    assert context.count("[") == len(retriever.invoke(QUERY))

    # The compressor as an explicit step after the retriever, sync, async and batched.
    step = {"documents": base, "query": RunnablePassthrough()} | comp.as_runnable()
    out = step.invoke(QUERY)
    _check_identity(base.invoke(QUERY), out)
    assert [d.page_content for d in asyncio.run(step.ainvoke(QUERY))] == [d.page_content for d in out]
    batched = step.batch([QUERY, "Which river flows through London?"])
    assert [d.id for d in batched[0]] == [d.id for d in out]
    assert batched[1][0].id == "thames"

    def kept_tokens(docs: list[Document]) -> int:
        return sum(d.metadata[STATS_KEY]["tokens_after"] for d in docs)

    answer_chain = step | RunnableLambda(kept_tokens)
    assert answer_chain.invoke(QUERY) == kept_tokens(out)
    with pytest.raises(TypeError, match="'documents' and 'query'"):
        comp.as_runnable().invoke({"docs": []})
